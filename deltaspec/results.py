"""Analysis results: per-layer spectra and metrics, per-module aggregates, JSON/CSV/table output.

Presentation (terminal tables, HTML for notebooks) lives in tables.py and formatting.py.

JSON schema (`AnalysisResult.to_dict`, documented in docs/METRICS.md, "JSON"):
    {"deltaspec_version", "source": {"path", "format", "base"},
     "settings": {"dtype", "device", "n_ref", "energy_k", "svd_top_k"}, "warnings": [...],
     "layers": [{"name", "module", "layer", "shape": [out, in], "kind", "rank",
                 "n_ref", "singular_values": [...descending...], "metrics": {...}}],
     "aggregates": {module: {"n_layers", "mean": {...}, "std": {...}}}}
NaN metrics (e.g. the entropy of an all-zero update) are written as null.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from . import __version__
# The shared table helpers (for `info`, rank suggestions, …): text_grid(head, body, width), short_names,
# hoist_constant, name_legend — see formatting.py.
from .formatting import fmt_num, hoist_constant, name_legend, shape_str, short_names, tally, text_grid  # noqa: F401
from .tables import TABLE_METRICS  # noqa: F401


@dataclass
class LayerResult:
    """One layer: its singular values (descending) and metrics; U/V only when vectors were asked for."""

    name: str
    module: str
    layer: Optional[int]
    shape: tuple[int, int]
    kind: str
    rank: int
    n_ref: int
    singular_values: np.ndarray
    metrics: dict
    U: object = field(default=None, repr=False)
    V: object = field(default=None, repr=False)
    upper: Optional[np.ndarray] = field(default=None, repr=False)  # truncated mode: bounds σ_i ≤ upper_i
    learned_singular_values: Optional[np.ndarray] = field(default=None, repr=False)  # of ΔW − ΔW_0 (initial=)

    def __repr__(self) -> str:
        top = f"σ_1 {fmt_num(float(self.singular_values[0]))}" if len(self.singular_values) else "no σ"
        shown = ", ".join(f"{m} {fmt_num(self.metrics[m])}" for m in ("effective_rank", "top1_energy") if m in self.metrics)
        return (f"<LayerResult {self.name} {shape_str(self.shape)} {self.kind} rank {self.rank}: {top}"
                + (f", {shown}" if shown else "") + ">")

    def _repr_html_(self) -> str:
        from .tables import layer_html

        return layer_html(self)

    def to_dict(self) -> dict:
        extra = {} if self.upper is None else {"singular_values_upper_bound": [float(x) for x in self.upper]}
        if self.learned_singular_values is not None:
            extra["learned_singular_values"] = [float(x) for x in self.learned_singular_values]
        return {
            "name": self.name, "module": self.module, "layer": self.layer, "shape": list(self.shape),
            "kind": self.kind, "rank": self.rank, "n_ref": self.n_ref,
            "singular_values": [float(x) for x in self.singular_values],
            "metrics": {k: _json_num(v) for k, v in self.metrics.items()}, **extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerResult":
        metrics = {k: (math.nan if v is None else v) for k, v in d["metrics"].items()}
        learned = d.get("learned_singular_values")
        return cls(d["name"], d["module"], d.get("layer"), tuple(d["shape"]), d["kind"], d["rank"],
                   d.get("n_ref", min(d["shape"])), np.asarray(d["singular_values"], dtype=np.float64), metrics,
                   learned_singular_values=None if learned is None else np.asarray(learned, dtype=np.float64))


def _json_num(v):
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


@dataclass
class AnalysisResult:
    """Everything `analyze` found for one checkpoint. `table()` is the per-layer overview."""

    layers: list[LayerResult]
    source: dict
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # expected omissions (norms, embeddings), see omissions.py

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        s, st = self.source, self.settings
        warn = f", {len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}" if self.warnings else ""
        return (f"<AnalysisResult {s.get('format')} {s.get('path')!r}: {len(self.layers)} layers "
                f"({', '.join(self.modules())}), {tally(r.kind for r in self.layers) or 'empty'}, "
                f"{st.get('dtype', '?')} on {st.get('device', '?')}{warn}>")

    def _repr_html_(self) -> str:
        from .tables import analysis_html

        return analysis_html(self)

    def __getitem__(self, key):
        """By position, by layer name, or by the short name the tables print (`res["L0.q_proj"]`)."""
        if isinstance(key, str):
            for r in self.layers:
                if r.name == key:
                    return r
            short = short_names([r.name for r in self.layers])
            for r in self.layers:
                if short[r.name] == key:
                    return r
            raise KeyError(f"no layer named {key!r}; e.g. {', '.join(short[r.name] for r in self.layers[:3])} "
                           f"(or the full names: {self.layers[0].name if self.layers else '-'}, …)")
        return self.layers[key]

    def select(self, modules: Optional[Sequence[str]] = None, layers: Optional[Sequence[int]] = None) -> "AnalysisResult":
        """The same result restricted to `modules` / `layers` (see `deltaspec.selection.select`)."""
        from .selection import select

        keep = select(self.layers, modules, layers, where=str(self.source.get("path", "")))
        return AnalysisResult(keep, dict(self.source), dict(self.settings), list(self.warnings), list(self.notes))

    @property
    def metric_names(self) -> list[str]:
        return list(self.layers[0].metrics) if self.layers else []

    def modules(self) -> list[str]:
        """Module types in first-seen order (q_proj, k_proj, …)."""
        return list(dict.fromkeys(r.module for r in self.layers))

    def aggregates(self) -> dict:
        """Per module type: number of layers, mean and std of each metric (NaNs ignored)."""
        out = {}
        for m in self.modules():
            rows = [r for r in self.layers if r.module == m]
            mean, std = {}, {}
            for name in self.metric_names:
                vals = np.array([r.metrics[name] for r in rows], dtype=np.float64)
                vals = vals[np.isfinite(vals)]
                mean[name] = float(vals.mean()) if vals.size else math.nan
                std[name] = float(vals.std()) if vals.size else math.nan
            out[m] = {"n_layers": len(rows), "mean": mean, "std": std}
        return out

    def suggest_ranks(self, policy: str = "energy", value=None, **kw):
        """Per-layer LoRA ranks by several policies, one chosen; see `deltaspec.suggest.suggest_ranks`."""
        from .suggest import suggest_ranks

        return suggest_ranks(self, policy, value, **kw)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        agg = {m: {"n_layers": a["n_layers"], "mean": {k: _json_num(v) for k, v in a["mean"].items()},
                   "std": {k: _json_num(v) for k, v in a["std"].items()}} for m, a in self.aggregates().items()}
        return {"deltaspec_version": __version__, "source": dict(self.source), "settings": dict(self.settings),
                "warnings": list(self.warnings), "notes": list(self.notes), "layers": [r.to_dict() for r in self.layers], "aggregates": agg}

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "AnalysisResult":
        from .omissions import split

        warnings, notes = split(d.get("warnings", []))  # files written before notes existed
        return cls([LayerResult.from_dict(x) for x in d["layers"]], d.get("source", {}), d.get("settings", {}),
                   warnings, list(d.get("notes", [])) + notes)

    @classmethod
    def from_json(cls, source) -> "AnalysisResult":
        """An analysis read back (to plot or compare without recomputing) from what `to_json()` returns
        (a JSON string), from `to_dict()`'s dict, or from the path of an `analyze --format json` file
        (a trajectory file of tracked training: `deltaspec.integrations.record.load_analysis`)."""
        from .errors import FormatError

        text = isinstance(source, dict) or (isinstance(source, str) and source.lstrip().startswith("{"))
        where = "JSON text" if text else source
        try:
            if isinstance(source, dict):
                d = source
            elif text:
                d = json.loads(source)
            else:
                with open(source) as f:
                    d = json.load(f)
            return cls.from_dict(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{where}: not a deltaspec analysis JSON ({type(e).__name__}: {e})") from None

    def check_metrics(self, metrics: Optional[Sequence[str]]) -> Optional[list[str]]:
        """`metrics` if every name is a metric of this result ("all": every metric), else a clear error."""
        if metrics is None:
            return None
        if list(metrics) == ["all"]:
            return self.metric_names
        from .metrics import check_metric_names

        return check_metric_names(metrics, self.metric_names)

    def rows(self, metrics: Optional[Sequence[str]] = None) -> list[dict]:
        """One flat dict per layer: identity columns then every metric (or those in `metrics`)."""
        names = self.check_metrics(metrics) or self.metric_names
        return [{"name": r.name, "module": r.module, "layer": r.layer, "shape": f"{r.shape[0]}x{r.shape[1]}",
                 "kind": r.kind, "rank": r.rank, "n_ref": r.n_ref, **{m: r.metrics[m] for m in names}}
                for r in self.layers]

    def to_csv(self, metrics: Optional[Sequence[str]] = None) -> str:
        rows = self.rows(metrics)
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            for row in rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        return buf.getvalue()

    def to_pandas(self):
        """Per-layer metrics as a pandas DataFrame indexed by layer name (needs `pip install pandas`)."""
        pd = require_pandas("AnalysisResult.to_pandas()")
        return pd.DataFrame(self.rows()).set_index("name")

    to_frame = to_pandas

    def table(self):
        """Per-layer metrics: a pandas DataFrame when pandas is installed, else a printable Table."""
        try:
            import pandas as pd
        except ImportError:
            return Table(self.rows())
        return pd.DataFrame(self.rows()).set_index("name")

    def format_table(self, metrics: Optional[Sequence[str]] = None, aggregates: bool = True,
                     width: Optional[int] = None, headline: bool = True) -> str:
        """The terminal report: a one-line verdict, one line per layer (short names), then the per-module means.

        metrics: the metric columns (default TABLE_METRICS); width: fit that many characters;
        headline: False leaves out the verdict (docs/METRICS.md, "Verdicts").
        """
        from .tables import analysis_table

        return analysis_table(self, self.check_metrics(metrics), aggregates, width, headline)


def require_pandas(what: str):
    """The pandas module, or a one-line DeltaspecError saying how to install it (pandas is an optional extra)."""
    try:
        import pandas
    except ImportError:
        from .errors import DeltaspecError

        raise DeltaspecError(f"{what} needs pandas: pip install pandas (or 'deltaspec[pandas]')") from None
    return pandas


class Table(list):
    """A list of row dicts that prints as a text table (what `table()` returns without pandas)."""

    def __str__(self) -> str:
        if not self:
            return "(empty)"
        head = list(self[0])
        return "\n".join(text_grid(head, [[fmt_num(r[h]) if isinstance(r[h], float) else str(r[h]) for h in head] for r in self]))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from .formatting import html_table

        head = list(self[0]) if self else []
        return html_table(head, [[fmt_num(r[h]) if isinstance(r[h], float) else r[h] for h in head] for r in self])
