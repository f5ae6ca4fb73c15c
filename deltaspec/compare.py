"""Compare several analyses (LoRA vs MultiLoRA vs full FT) fairly: same layers, same n_ref, same names.

    cmp = compare([lora, multilora, ft], labels=["LoRA", "MultiLoRA", "FT"])
    print(cmp.format_table())       # per module type: each method's mean ± std, then Δ to the first method
    cmp.to_latex(), cmp.to_markdown()   # paper tables (booktabs / GitHub), mean ± std over the layers

Fairness rules (stated in every output):
- only layers present in every input are compared (the others are dropped with a warning);
- a layer must have the same shape in every input (else ShapeMismatchError);
- `normalized_entropy` must use one n_ref per layer across methods: when the inputs disagree it is
  recomputed from the singular values with n_ref = min(d_out, d_in) for every method
  (or refused with `on_n_ref_mismatch="error"`);
- only metrics present in every input are compared.
Pure: works on AnalysisResults (fresh from `analyze` or read back with `AnalysisResult.from_json`).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np

from . import __version__
from . import metrics as M
from .errors import DeltaspecError, ShapeMismatchError, did_you_mean
from .tables import by_module
from .results import AnalysisResult, Table, _json_num


def default_label(path) -> str:
    """`sample_checkpoints/lora` → `lora`; `out/spectra.json` → `spectra`."""
    p = Path(str(path).rstrip("/\\"))
    if p.name == "spectra_trajectory.jsonl":  # a tracked run: named by its run folder
        return p.parent.name or p.stem
    return p.stem if p.suffix.lower() in (".json", ".jsonl") else (p.name or str(path))


@dataclass
class Aligned:
    """Several analyses restricted to their common layers, in the first input's layer order."""

    labels: list[str]
    results: list[AnalysisResult]
    names: list[str]  # common layer names
    dropped: dict = field(default_factory=dict)  # label -> layer names not in every input
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        left = "; left out: " + ", ".join(f"{lab} {len(d)}" for lab, d in self.dropped.items()) if self.dropped else ""
        return f"<Aligned {', '.join(self.labels)}: {len(self.names)} common layers{left}>"


def common_layers(layer_lists: Sequence[Sequence], labels: Sequence[str]) -> tuple[list[str], dict]:
    """The layer names every input has, in the first input's order, and per label the names left out.

    Items need only `.name` and `.shape`: LayerUpdates (headers, nothing read yet) or LayerResults, so
    the CLI picks the common layers before any tensor is read or any SVD runs. A common layer must
    have one shape everywhere (else ShapeMismatchError)."""
    common = set.intersection(*({x.name for x in items} for items in layer_lists))
    names = [x.name for x in layer_lists[0] if x.name in common]
    if not names:
        raise DeltaspecError(f"the inputs share no layer names ({', '.join(labels)}); nothing to compare")
    shapes = [{x.name: tuple(x.shape) for x in items} for items in layer_lists]
    for n in names:
        if len({s[n] for s in shapes}) > 1:
            raise ShapeMismatchError(f"layer {n} has different shapes across inputs: "
                                     + ", ".join(f"{lab} {s[n]}" for lab, s in zip(labels, shapes)))
    dropped = {lab: [x.name for x in items if x.name not in common] for lab, items in zip(labels, layer_lists)}
    return names, dropped


def align(results: Sequence[AnalysisResult], labels: Optional[Sequence[str]] = None,
          on_n_ref_mismatch: str = "recompute", left_out: Optional[Mapping] = None) -> Aligned:
    """Keep the layers every input has; make n_ref agree per layer (see the module docstring).

    left_out: {label: layer names} already left out before the analysis (the CLI analyses only the
    common layers); they are reported with the ones dropped here."""
    results = list(results)
    if not results:
        raise DeltaspecError("nothing to compare: give at least one analysis")
    labels = list(labels) if labels else [default_label(r.source.get("path", f"input{i}")) for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise DeltaspecError(f"{len(labels)} labels for {len(results)} inputs; give one label per input")
    if len(set(labels)) != len(labels):
        raise DeltaspecError(f"labels must be distinct, got {labels}; pass labels=")
    names, dropped = common_layers([res.layers for res in results], labels)
    dropped = {lab: list((left_out or {}).get(lab, [])) + d for lab, d in dropped.items()}
    notes = [f"{lab}: {len(d)} layer{'s' if len(d) > 1 else ''} not in every input left out ({by_module(d)})"
             for lab, d in dropped.items() if d]
    by_name = [{r.name: r for r in res.layers} for res in results]
    out = [AnalysisResult([idx[n] for n in names], dict(res.source), dict(res.settings), list(res.warnings),
                          list(res.notes)) for idx, res in zip(by_name, results)]
    _common_n_ref(out, labels, names, on_n_ref_mismatch, notes)
    return Aligned(labels, out, names, {k: v for k, v in dropped.items() if v}, notes)


def _common_n_ref(results: list[AnalysisResult], labels, names, policy: str, notes: list[str]) -> None:
    """Per layer, make every method's normalized_entropy use one n_ref (copying, never mutating inputs)."""
    fixed = []
    for k, n in enumerate(names):
        if len({res.layers[k].n_ref for res in results}) == 1:
            continue
        if policy == "error":
            raise DeltaspecError(f"layer {n}: normalized_entropy uses different n_ref across inputs ("
                                 + ", ".join(f"{lab}: {res.layers[k].n_ref}" for lab, res in zip(labels, results))
                                 + "); re-run analyze with the same n_ref=")
        fixed.append(n)
        for res in results:
            lr = copy.copy(res.layers[k])
            lr.n_ref = min(lr.shape)
            lr.metrics = dict(lr.metrics, normalized_entropy=M.normalized_entropy(lr.singular_values, lr.n_ref))
            res.layers[k] = lr
    if fixed:
        notes.append(f"n_ref differed across inputs in {len(fixed)} layer(s): normalized_entropy recomputed "
                     "from the singular values with n_ref = min(d_out, d_in) for every method")


@dataclass
class Comparison:
    """Metrics of several methods side by side, per module type (or per layer), with differences.

    `values[group][metric][label]` is the mean over the group's layers (NaNs ignored), or the layer's
    value in per-layer mode; `spread[group][metric][label]` the standard deviation over those layers
    (population, ddof=0; 0 for one layer); differences are `label − first label` of the means.
    """

    aligned: Aligned
    per_layer: bool
    metrics: list[str]
    values: dict  # group -> metric -> label -> value
    n_layers: dict  # group -> number of layers averaged
    spread: dict = field(default_factory=dict)  # group -> metric -> label -> std over the layers

    @property
    def labels(self) -> list[str]:
        return self.aligned.labels

    def __repr__(self) -> str:
        groups = f"{len(self.values)} layers" if self.per_layer else f"{len(self.values)} module types"
        return (f"<Comparison {', '.join(self.labels)}: {groups} × {len(self.metrics)} metrics over "
                f"{len(self.aligned.names)} common layers>")

    def _repr_html_(self) -> str:
        from .tables import comparison_html

        return comparison_html(self)

    def differences(self, group: str, metric: str) -> dict:
        v = self.values[group][metric]
        first = v[self.labels[0]]
        return {lab: v[lab] - first for lab in self.labels[1:]}

    def n_ref_note(self) -> str:
        refs = sorted({r.n_ref for res in self.aligned.results for r in res.layers})
        same = all(len({r.n_ref for r in col}) == 1 for col in zip(*(res.layers for res in self.aligned.results)))
        return (f"same {len(self.aligned.names)} layers in every column; normalized_entropy = H / ln(n_ref) with "
                f"{'one' if same else 'DIFFERENT'} n_ref per layer for every method (n_ref: {', '.join(map(str, refs))})")

    def rows(self) -> list[dict]:
        """One row per (group, metric): each method's value, `label-first` differences, then (per module
        type) each method's std over the layers as `label_std`."""
        key = "layer" if self.per_layer else "module"
        first = self.labels[0]
        out = []
        for g, per_metric in self.values.items():
            for m in self.metrics:
                row = {key: g, "n_layers": self.n_layers[g], "metric": m, **per_metric[m]}
                row.update({f"{lab}-{first}": d for lab, d in self.differences(g, m).items()})
                if not self.per_layer:
                    row.update({f"{lab}_std": v for lab, v in self.spread[g][m].items()})
                out.append(row)
        return out

    def to_pandas(self):
        """`rows()` as a pandas DataFrame indexed by (module or layer, metric) (needs `pip install pandas`)."""
        from .results import require_pandas

        pd = require_pandas("Comparison.to_pandas()")
        return pd.DataFrame(self.rows()).set_index(["layer" if self.per_layer else "module", "metric"])

    to_frame = to_pandas

    def table(self):
        """A pandas DataFrame indexed by (group, metric) when pandas is installed, else a printable Table."""
        try:
            import pandas as pd
        except ImportError:
            return Table(self.rows())
        key = "layer" if self.per_layer else "module"
        return pd.DataFrame(self.rows()).set_index([key, "metric"])

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        return buf.getvalue()

    def to_dict(self) -> dict:
        a = self.aligned
        groups = {g: {"n_layers": self.n_layers[g],
                      "metrics": {m: {lab: _json_num(v) for lab, v in per[m].items()} for m in self.metrics},
                      "differences": {m: {lab: _json_num(v) for lab, v in self.differences(g, m).items()}
                                      for m in self.metrics},
                      **({} if self.per_layer else {"std": {m: {lab: _json_num(v) for lab, v in self.spread[g][m].items()}
                                                            for m in self.metrics}})}
                  for g, per in self.values.items()}
        return {"deltaspec_version": __version__, "labels": a.labels, "reference": a.labels[0],
                "group_by": "layer" if self.per_layer else "module",
                "spread": None if self.per_layer else "std: population standard deviation over the layers of the group",
                "inputs": [{"label": lab, **{k: res.source.get(k) for k in ("path", "format", "base")},
                            "settings": res.settings} for lab, res in zip(a.labels, a.results)],
                "layers": a.names, "n_ref": {r.name: r.n_ref for r in a.results[0].layers},
                "dropped": a.dropped, "notes": a.notes + [self.n_ref_note()],
                "warnings": [f"{lab}: {w}" for lab, res in zip(a.labels, a.results) for w in res.warnings],
                "groups": groups}

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def format_table(self, metrics: Optional[Sequence[str]] = None, width: Optional[int] = None,
                     headline: bool = True) -> str:
        """Terminal report: a one-line verdict, then per group and metric each method's mean ± std and Δ
        to the first method.

        metrics: the rows to show (default: all compared metrics); width: fit that many characters;
        headline: False leaves out the verdict (docs/METRICS.md, "Verdicts").
        """
        from .tables import comparison_table

        return comparison_table(self, metrics, width, headline)

    def to_latex(self, metrics: Optional[Sequence[str]] = None) -> str:
        """A booktabs LaTeX tabular of `mean ± std` per method (rows: module type × metric)."""
        from .tables import comparison_latex

        return comparison_latex(self, metrics)

    def to_markdown(self, metrics: Optional[Sequence[str]] = None) -> str:
        """A GitHub Markdown table of `mean ± std` per method (rows: module type × metric)."""
        from .tables import comparison_markdown

        return comparison_markdown(self, metrics)


def compare(results: Sequence[AnalysisResult], labels: Optional[Sequence[str]] = None, *, per_layer: bool = False,
            metrics: Optional[Sequence[str]] = None, on_n_ref_mismatch: str = "recompute",
            left_out: Optional[Mapping] = None) -> Comparison:
    """Align `results` (a list, or a {label: result} mapping) on their common layers and tabulate their
    metrics side by side.

    metrics: names as in `analyze` (default: every metric all inputs have); per_layer: one group per
    layer instead of per module type; on_n_ref_mismatch: "recompute" (default) or "error";
    left_out: {label: layer names} left out before the analysis, reported as dropped (see `align`).
    """
    if isinstance(results, Mapping) and "layers" not in results:  # {label: result}, as the plot functions take
        if labels is not None:
            raise DeltaspecError("labels= comes from the mapping's keys; pass a list of results to set labels")
        labels, results = list(results), list(results.values())
    elif isinstance(results, (str, Path, Mapping, AnalysisResult)):
        raise DeltaspecError("compare() takes a list of inputs (or a {label: input} mapping), got a single "
                             f"{type(results).__name__}")
    a = align([as_result(r) for r in results], labels, on_n_ref_mismatch, left_out)
    have = [set(res.metric_names) for res in a.results]
    all_names = [m for m in a.results[0].metric_names if all(m in h for h in have)]
    all_names += _initial_names(a.results, all_names)  # shown as NaN for inputs without --initial (full FT)
    if metrics:
        missing = [m for m in metrics if m not in all_names]
        if missing:
            raise DeltaspecError(f"unknown or not shared metric(s) {missing}{did_you_mean(missing[0], all_names)}; "
                                 f"available: {', '.join(all_names)}")
        chosen = list(metrics)
    else:
        chosen = all_names
        lost = sorted(set().union(*have) - set(all_names))
        if lost:
            a.notes.append(f"metrics not in every input left out: {', '.join(lost)}")
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(a.results[0].layers):
        groups.setdefault(r.name if per_layer else r.module, []).append(k)
    per = lambda f: {g: {m: {lab: f([res.layers[k].metrics.get(m, math.nan) for k in ks]) for lab, res in zip(a.labels, a.results)}
                         for m in chosen} for g, ks in groups.items()}
    return Comparison(a, per_layer, chosen, per(_mean), {g: len(ks) for g, ks in groups.items()}, per(_std))


def _initial_names(results, shared) -> list:
    """The learned-vs-initial fields (init_split.py) that some input has and not every one."""
    from .init_split import SPLIT_FIELDS

    names = dict.fromkeys(m for res in results for m in res.metric_names
                          if m in SPLIT_FIELDS or m.startswith("learned_"))
    return [m for m in names if m not in shared]


def as_result(x) -> AnalysisResult:
    """An AnalysisResult from what `compare` accepts: a result, a saved analysis (path of a .json file,
    `to_json()`'s string or `to_dict()`'s dict), or a checkpoint path (analysed now with the defaults)."""
    if isinstance(x, AnalysisResult):
        return x
    if isinstance(x, Mapping) or (isinstance(x, str) and x.lstrip().startswith("{")):
        return AnalysisResult.from_json(x)
    if isinstance(x, (str, Path)):
        if Path(x).is_file() and Path(x).suffix.lower() in (".json", ".jsonl"):
            from .integrations.record import load_analysis

            return load_analysis(x)
        from .analysis import analyze

        return analyze(str(x))
    raise DeltaspecError(f"compare() inputs are AnalysisResults, saved analyses (a .json path, JSON text or dict) "
                         f"or checkpoint paths; got {type(x).__name__}")


def _std(vals) -> float:
    a = np.asarray(vals, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.std()) if a.size else math.nan


def _mean(vals) -> float:
    if len(vals) == 1:
        v = vals[0]
        return v if isinstance(v, (int, np.integer)) else float(v)
    a = np.asarray(vals, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan

