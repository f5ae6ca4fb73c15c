"""Findings in words: the one-line verdict of `analyze`/`compare` and the report's summary sentences.

Nothing here is invented: every clause quotes a number that the table below it shows (or that the
report's summary states with its spread), computed from the metrics. Pure: reads AnalysisResults and
Comparisons, returns strings.

Definitions (docs/METRICS.md, "Verdicts"):
- a layer is *dominated by one direction* when its top-1 energy share σ_1²/Σσ_i² is at least
  DOMINATED = 0.5: its largest direction holds at least as much of ‖ΔW‖²_F as all the others together;
- a difference between two methods is *beyond the spread* when |Δ| > √(s_a² + s_b²), s the two
  methods' standard deviations over the layers of the module type (the ± of the tables).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .formatting import fmt_diff, fmt_num, fmt_spread, wrap

DOMINATED = 0.5
METRIC = "top1_energy"  # what the verdicts talk about: how top-heavy the update is
PAPER_MODULES = ("k_proj", "v_proj")  # the MultiLoRA paper's Figure 2 modules, when present


def focus_modules(modules: Sequence[str]) -> list[str]:
    """k_proj and v_proj when every input has them (the paper's choice), else every module type."""
    paper = [m for m in PAPER_MODULES if m in modules]
    return paper if len(paper) == len(PAPER_MODULES) else list(modules)


def dominated(res, modules: Optional[Sequence[str]] = None) -> tuple[int, int]:
    """(layers whose top-1 energy ≥ DOMINATED, layers with a top-1 energy) among `modules` (None: all)."""
    vals = [r.metrics.get(METRIC, math.nan) for r in res.layers if modules is None or r.module in modules]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(v >= DOMINATED for v in vals), len(vals)


def beyond_spread(delta: float, s_a: float, s_b: float) -> bool:
    """True when |delta| exceeds the combined spread √(s_a² + s_b²) (see the module docstring)."""
    if not all(x is not None and math.isfinite(x) for x in (delta, s_a, s_b)):
        return False
    return abs(delta) > math.hypot(s_a, s_b)


def _fit(clauses: list[str], width: Optional[int], lines: int = 2, lead: str = "verdict: ") -> list[str]:
    """As many clauses (in order, '; '-joined) as fit in `lines` lines of `width` characters."""
    out: list[str] = []
    for n in range(len(clauses), 0, -1):
        out = wrap(lead + "; ".join(clauses[:n]), width)
        if len(out) <= lines:
            return out
    return out[:lines]


# ---- analyze ---------------------------------------------------------------------------------------
def analysis_headline(res, width: Optional[int] = None) -> list[str]:
    """One or two lines: in how many layers one direction dominates, and the most/least top-heavy
    module types (their mean top-1 energy, as in the table's 'mean per module type'). [] without top-1."""
    if METRIC not in res.metric_names or not res.layers:
        return []
    n_dom, n = dominated(res)
    if not n:
        return []
    means = {m: a["mean"][METRIC] for m, a in res.aggregates().items() if math.isfinite(a["mean"][METRIC])}
    what = ("one direction dominates ΔW" if n_dom * 2 > n else "ΔW is spread over several directions")
    clauses = [f"{what}: top1_energy ≥ {DOMINATED:g} in {n_dom} of {n} layers"]
    if len(means) > 1:
        hi, lo = max(means, key=means.get), min(means, key=means.get)
        clauses.append(f"most top-heavy {hi} (mean {_share(means[hi])}), least {lo} ({_share(means[lo])})")
    return _fit(clauses, width)


# ---- compare ---------------------------------------------------------------------------------------
def _share(v: float) -> str:
    return f"{v:.2f}"


def _range(vals: list[float]) -> str:
    vals = [v for v in vals if math.isfinite(v)]
    lo, hi = _share(min(vals)), _share(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def comparison_headline(cmp, width: Optional[int] = None) -> list[str]:
    """One or two lines ranking the methods by top-1 energy (its range over the module rows of the
    table) and counting, against the first method, the module types where the difference is beyond
    the spread. [] in per-layer mode or without top-1 energy."""
    if cmp.per_layer or METRIC not in cmp.metrics or len(cmp.labels) < 2:
        return []
    groups = list(cmp.values)
    by_label = {lab: [cmp.values[g][METRIC][lab] for g in groups] for lab in cmp.labels}
    order = sorted(cmp.labels, key=lambda lab: -float(np.nanmean(by_label[lab])))
    first, top, n = cmp.labels[0], order[0], len(groups)
    others = [f"{lab} ({_range(by_label[lab])})" for lab in order[1:]]
    clauses = [f"{top}'s update is the most top-heavy (top1_energy {_range(by_label[top])} by module type)",
               f"{' and '.join(others)} spread{'s' if len(others) == 1 else ''} it more"]
    counts = []
    for lab in cmp.labels[1:]:
        d = [cmp.differences(g, METRIC)[lab] for g in groups]
        beyond = [beyond_spread(x, cmp.spread[g][METRIC][first], cmp.spread[g][METRIC][lab]) for g, x in zip(groups, d)]
        lower, higher = sum(b and x < 0 for b, x in zip(beyond, d)), sum(b and x > 0 for b, x in zip(beyond, d))
        counts.append(f"{lab} {'lower' if lower >= higher else 'higher'} on {max(lower, higher)}/{n}")
    clauses.append(f"beyond the spread vs {first}: {', '.join(counts)} module types")
    return _fit(clauses, width)


# ---- report ----------------------------------------------------------------------------------------
def input_sentence(label: str, res, modules: Optional[Sequence[str]] = None) -> str:
    """'LoRA: top-1 energy 0.41 ± 0.05 on k_proj, v_proj (8 layers); one direction dominates
    (top-1 energy ≥ 0.5) in 3 of 8 layers.' (mean ± std over those layers)."""
    mods = list(modules or focus_modules(res.modules()))
    if METRIC not in res.metric_names:
        return f"{label}: no top-1 energy (analysed with energy_k without 1)."
    vals = np.array([r.metrics[METRIC] for r in res.layers if r.module in mods], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return f"{label}: no layer of {', '.join(mods)} has a top-1 energy."
    n_dom, n = dominated(res, mods)
    er = [r.metrics.get("effective_rank", math.nan) for r in res.layers if r.module in mods]
    er = [v for v in er if math.isfinite(v)]
    verdict = ("the update is dominated by one direction" if n_dom * 2 > n else "the update is spread over several "
               "directions; one direction dominates")
    tail = f" Effective rank {fmt_spread(float(np.mean(er)), float(np.std(er)))}." if er else ""
    return (f"{label}: top-1 energy {fmt_spread(float(vals.mean()), float(vals.std()))} on {', '.join(mods)} "
            f"({n} layers); {verdict} (top-1 energy ≥ {DOMINATED:g}) in {n_dom} of {n} layers.{tail}")


def differences_beyond_spread(cmp, metrics: Sequence[str]) -> list[str]:
    """Per method against the first: each metric whose difference is beyond the spread on some module
    type, with the count and the range of those differences ('top1_energy lower on 4/4 module
    types (-0.36 to -0.27)')."""
    first, groups = cmp.labels[0], list(cmp.values)
    out = []
    for lab in cmp.labels[1:]:
        parts = []
        for m in metrics:
            if m not in cmp.metrics:
                continue
            ds = [(cmp.differences(g, m)[lab], cmp.spread[g][m][first], cmp.spread[g][m][lab]) for g in groups]
            hit = [d for d, a, b in ds if beyond_spread(d, a, b)]
            if not hit:
                continue
            sign = "higher" if sum(d > 0 for d in hit) >= sum(d < 0 for d in hit) else "lower"
            spread = max(math.hypot(a, b) for d, a, b in ds if beyond_spread(d, a, b))
            lo, hi = fmt_diff(min(hit), spread), fmt_diff(max(hit), spread)
            span = lo if lo == hi else f"{lo} to {hi}"
            parts.append(f"{m} {sign} on {len(hit)}/{len(groups)} module types ({span})")
        out.append(f"{lab} − {first}: " + ("; ".join(parts) if parts else "no difference beyond the spread") + ".")
    return out
