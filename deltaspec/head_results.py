"""Results of `deltaspec.heads`: per-layer head anatomy, per-module means, JSON/CSV/table output.

JSON schema (`HeadsResult.to_dict`, docs/METRICS.md "Heads: which MultiLoRA heads carry the update"):
    {"deltaspec_version", "source": {"path", "format"}, "settings": {"dtype", "device", "zero_tol"},
     "warnings": [...], "layers": [{"name", "module", "layer", "shape", "heads", "r", "metrics": {...},
       "per_head": [{"head", "share", "frobenius_norm", "sigma_1", "rank", "mean_abs_s", "frac_s_small",
                     "overlap_col", "overlap_row", "singular_values"}],
       "inner": n×n, "overlap_col": n×n, "overlap_row": n×n, "cos_col": n×n, "cos_row": n×n}],
     "aggregates": {module: {"n_layers", "mean": {...}}}}
NaN is written as null. Per-head overlap_col/row: the mean overlap of that head with the others.
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
from .formatting import fmt_num, hoist_constant, html_table, name_legend, short_names, tally, text_grid, wrap
from .head_anatomy import layer_metrics, shares_of

# Columns of the terminal table (every metric is in JSON; per-head values in JSON and CSV).
TABLE_COLUMNS = ("effective_heads", "top_head_share", "interference", "overlap_col", "overlap_row", "mean_abs_s",
                 "frac_s_small")
# The per-head quantities a heatmap can show (plots.heads).
HEAD_METRICS = ("share", "frobenius_norm", "sigma_1", "rank", "mean_abs_s", "frac_s_small", "overlap_col",
                "overlap_row")


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)  # JSON null → NaN


@dataclass
class HeadLayer:
    """One MultiLoRA layer's heads: n × m singular values, n × n inner products ⟨ΔW_i, ΔW_j⟩ and
    subspace overlaps, and the scalings' statistics per head; `metrics` is the layer summary."""

    name: str
    module: str
    layer: Optional[int]
    shape: tuple[int, int]
    r: int
    singular_values: np.ndarray  # (n, m), each row descending
    inner: np.ndarray  # (n, n)
    ranks: np.ndarray  # (n,)
    overlap_col: np.ndarray  # (n, n)
    overlap_row: np.ndarray
    cos_col: np.ndarray
    cos_row: np.ndarray
    mean_abs_s: np.ndarray  # (n,)
    frac_s_small: np.ndarray  # (n,)
    metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = layer_metrics(self.inner, self.overlap_col, self.overlap_row, self.cos_col, self.cos_row,
                                     self.mean_abs_s, self.frac_s_small)

    @property
    def heads(self) -> int:
        return len(self.inner)

    @property
    def shares(self) -> np.ndarray:
        """‖ΔW_i‖² / Σ_j ‖ΔW_j‖² per head."""
        return shares_of(self.inner)

    def per_head(self) -> list[dict]:
        """One dict per head (the JSON `per_head` entries and the CSV rows)."""
        n = self.heads
        others = ~np.eye(n, dtype=bool)
        out = []
        for i in range(n):
            oc, orow = self.overlap_col[i][others[i]], self.overlap_row[i][others[i]]
            out.append({
                "head": i, "share": float(self.shares[i]), "frobenius_norm": math.sqrt(max(self.inner[i, i], 0.0)),
                "sigma_1": float(self.singular_values[i][0]) if self.singular_values.shape[1] else 0.0,
                "rank": int(self.ranks[i]), "mean_abs_s": float(self.mean_abs_s[i]),
                "frac_s_small": float(self.frac_s_small[i]),
                "overlap_col": _nanmean(oc), "overlap_row": _nanmean(orow),
                "singular_values": [float(x) for x in self.singular_values[i]]})
        return out

    def __repr__(self) -> str:
        m = self.metrics
        return (f"<HeadLayer {self.name} {self.heads} heads × r {self.r}: effective_heads {fmt_num(m['effective_heads'])}, "
                f"top_head_share {fmt_num(m['top_head_share'])}, interference {fmt_num(m['interference'])}>")

    def _repr_html_(self) -> str:
        cols = list(HEAD_METRICS)
        body = [[h["head"]] + [fmt_num(h[c]) for c in cols] for h in self.per_head()]
        return html_table(["head"] + cols, body, caption=repr(self))

    def to_dict(self) -> dict:
        mat = lambda a: [[_num(v) for v in row] for row in np.asarray(a)]
        return {"name": self.name, "module": self.module, "layer": self.layer, "shape": list(self.shape),
                "heads": self.heads, "r": self.r, "metrics": {k: _num(v) for k, v in self.metrics.items()},
                "per_head": [{k: (_num(v) if not isinstance(v, list) else v) for k, v in h.items()}
                             for h in self.per_head()],
                "inner": mat(self.inner), "overlap_col": mat(self.overlap_col), "overlap_row": mat(self.overlap_row),
                "cos_col": mat(self.cos_col), "cos_row": mat(self.cos_row)}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadLayer":
        ph = d["per_head"]
        return cls(d["name"], d["module"], d.get("layer"), tuple(d["shape"]), d["r"],
                   np.asarray([h["singular_values"] for h in ph], dtype=np.float64), _arr(d["inner"]),
                   np.asarray([h["rank"] for h in ph]), _arr(d["overlap_col"]), _arr(d["overlap_row"]),
                   _arr(d["cos_col"]), _arr(d["cos_row"]), _arr([h["mean_abs_s"] for h in ph]),
                   _arr([h["frac_s_small"] for h in ph]))


def _num(v):
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


@dataclass
class HeadsResult:
    """Per-head anatomy of every MultiLoRA layer; `format_table()` is the terminal report,
    `table()` / `head_table()` the per-layer / per-head DataFrames."""

    layers: list[HeadLayer]
    source: dict
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key):
        """By position or by layer name."""
        if isinstance(key, str):
            for r in self.layers:
                if r.name == key:
                    return r
            raise KeyError(f"no layer named {key!r}; e.g. {', '.join(r.name for r in self.layers[:3])}")
        return self.layers[key]

    def __repr__(self) -> str:
        s = self.source
        heads = tally(f"{r.heads}×r{r.r}" for r in self.layers) or "empty"
        warn = f", {len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}" if self.warnings else ""
        return (f"<HeadsResult {s.get('format')} {s.get('path')!r}: {len(self.layers)} layers "
                f"({', '.join(self.modules())}), heads {heads}{warn}>")

    def _repr_html_(self) -> str:
        body = [[r["name"]] + [fmt_num(r[c]) for c in TABLE_COLUMNS] for r in self.rows()]
        warn = "".join(f"<div>warning: {w}</div>" for w in self.warnings)
        return html_table(["layer", *TABLE_COLUMNS], body, caption=repr(self)) + warn

    def modules(self) -> list[str]:
        return list(dict.fromkeys(r.module for r in self.layers))

    def select(self, modules: Optional[Sequence[str]] = None, layers: Optional[Sequence[int]] = None) -> "HeadsResult":
        from .selection import select

        keep = select(self.layers, modules, layers, where=str(self.source.get("path", "")))
        return HeadsResult(keep, dict(self.source), dict(self.settings), list(self.warnings))

    def aggregates(self) -> dict:
        """Per module type: number of layers and the mean of each layer metric (NaNs ignored)."""
        out = {}
        for m in self.modules():
            rows = [r for r in self.layers if r.module == m]
            names = [k for k, v in rows[0].metrics.items() if k != "top_head"]
            out[m] = {"n_layers": len(rows),
                      "mean": {k: _nanmean([r.metrics[k] for r in rows]) for k in names}}
        return out

    def rows(self) -> list[dict]:
        """One flat dict per layer: identity columns then every layer metric."""
        return [{"name": r.name, "module": r.module, "layer": r.layer, "shape": f"{r.shape[0]}x{r.shape[1]}",
                 "r": r.r, **r.metrics} for r in self.layers]

    def head_rows(self) -> list[dict]:
        """One flat dict per (layer, head), the layer's summary columns prefixed `layer_`."""
        out = []
        for r in self.layers:
            for h in r.per_head():
                sv = h.pop("singular_values")
                out.append({"name": r.name, "module": r.module, "layer": r.layer, **h,
                            "singular_values": " ".join(f"{x:.6g}" for x in sv),
                            "layer_effective_heads": r.metrics["effective_heads"],
                            "layer_interference": r.metrics["interference"]})
        return out

    def _frame(self, rows):
        try:
            import pandas as pd
        except ImportError:
            from .results import Table

            return Table(rows)
        return pd.DataFrame(rows)

    def table(self):
        """Per-layer summary: a pandas DataFrame (index: layer name) if pandas is installed, else a Table."""
        f = self._frame(self.rows())
        return f.set_index("name") if hasattr(f, "set_index") else f

    def head_table(self):
        """One row per (layer, head): a pandas DataFrame if pandas is installed, else a Table."""
        return self._frame(self.head_rows())

    def to_csv(self) -> str:
        """Per-head rows (as `head_table`)."""
        rows = self.head_rows()
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            for row in rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else ("" if v is None else v))
                            for k, v in row.items()})
        return buf.getvalue()

    def to_dict(self) -> dict:
        agg = {m: {"n_layers": a["n_layers"], "mean": {k: _num(v) for k, v in a["mean"].items()}}
               for m, a in self.aggregates().items()}
        return {"deltaspec_version": __version__, "source": dict(self.source), "settings": dict(self.settings),
                "warnings": list(self.warnings), "layers": [r.to_dict() for r in self.layers], "aggregates": agg}

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadsResult":
        return cls([HeadLayer.from_dict(x) for x in d["layers"]], d.get("source", {}), d.get("settings", {}),
                   d.get("warnings", []))

    def format_table(self, width: Optional[int] = None) -> str:
        """The terminal report: one line per layer (short names), then the mean per module type."""
        s = self.source
        lines = wrap(f"{s.get('path')}  [{s.get('format')}]  {len(self.layers)} MultiLoRA layers, "
                     f"{self.settings.get('dtype', '')}", width)
        short = short_names([r.name for r in self.layers])
        head = ["layer", "shape", "heads", "r"] + list(TABLE_COLUMNS)
        body = [[short[r.name], f"{r.shape[0]}x{r.shape[1]}", str(r.heads), str(r.r)]
                + [fmt_num(r.metrics[c]) for c in TABLE_COLUMNS] for r in self.layers]
        head, body, same = hoist_constant(head, body, ["shape", "heads", "r"])
        lines += wrap(f"every layer: {same}", width) if same else []
        lines += name_legend(short, width) + [""] + text_grid(head, body, width)
        agg = self.aggregates()
        counts = {a["n_layers"] for a in agg.values()}
        if counts and counts != {1}:  # (one layer per module type: the table above says it all)
            each = len(counts) == 1
            rows = [[m if each else f"{m} ({a['n_layers']})"] + [fmt_num(a["mean"][c]) for c in TABLE_COLUMNS]
                    for m, a in agg.items()]
            what = f"{min(counts)} layers each" if each else "layers"
            lines += ["", f"mean per module type ({what}):"] + text_grid(["module", *TABLE_COLUMNS], rows, width)
        lines += [""] + wrap(self._legend(), width)
        for w in self.warnings:
            lines += wrap(f"warning: {w}", width)
        return "\n".join(lines)

    def _legend(self) -> str:
        shapes = {(r.r, *r.shape) for r in self.layers}
        chance = ""
        if len(shapes) == 1:
            r, d_out, d_in = shapes.pop()
            chance = f" (random {r}-dim spaces: {r}/d = {fmt_num(r / d_out)} col, {fmt_num(r / d_in)} row)"
        tol = self.settings.get("zero_tol", 0.01)
        return ("effective_heads = exp(entropy of the heads' energy shares); interference = (‖ΔW‖² − Σ‖ΔW_i‖²)/‖ΔW‖²; "
                f"overlap = mean over head pairs of ‖U_iᵀU_j‖²/r{chance}; frac_s_small: |s| ≤ {tol:g}·max|s| of the "
                "layer; per-head values: --format json or csv")
