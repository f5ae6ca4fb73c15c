"""Reports as text: the terminal tables of `analyze` and `compare`, and paper tables (LaTeX, Markdown).

Presentation only: everything here reads an AnalysisResult or a Comparison and returns strings.
Terminal tables take `width` (None: as wide as the content; 80: fit 80 characters, see
`formatting.text_grid`) and use short layer names (`L0.q_proj`); JSON/CSV keep the full names.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .formatting import (fmt_diff, fmt_num, fmt_signed, fmt_spread, hoist_constant, html_table, name_legend, short_names, tally,
                         text_grid, wrap)
from .omissions import summary, without_source

# Default metric columns of the terminal tables (every metric is in JSON/CSV; `--metrics` to choose).
TABLE_METRICS = ("frobenius_norm", "top1_energy", "top4_energy", "effective_rank", "normalized_entropy", "stable_rank")
# With initial factors (`analyze --initial`): the learned-vs-initial columns (docs/TRAINING.md).
INITIAL_COLUMNS = ("init_share", "learned_top1_energy", "learned_effective_rank", "moveA", "moveB")
INITIAL_TABLE_METRICS = ("top1_energy", "effective_rank") + INITIAL_COLUMNS


def default_metrics(names: Sequence[str]) -> tuple:
    """The terminal tables' default columns for results with these metric names."""
    return INITIAL_TABLE_METRICS if "init_share" in names else TABLE_METRICS


def by_module(names: Sequence[str]) -> str:
    """'gate_proj ×4, up_proj ×4' — a list of layer names summarised by module type."""
    return tally(n.rsplit(".", 1)[-1] for n in names)


# ---- analyze ---------------------------------------------------------------------------------------
def analysis_table(res, metrics: Optional[Sequence[str]] = None, aggregates: bool = True,
                   width: Optional[int] = None, headline: bool = True) -> str:
    """The `analyze` report: a one-line verdict (findings.py), one line per layer, then the mean per
    module type."""
    from .findings import analysis_headline

    cols = [m for m in (metrics or default_metrics(res.metric_names)) if m in res.metric_names]
    if headline and "top1_energy" in res.metric_names and "top1_energy" not in cols:
        cols.append("top1_energy")  # the verdict quotes it: the table shows it
    s = res.source
    lines = (analysis_headline(res, width) if headline else []) + wrap(f"{s.get('path')}  [{s.get('format')}]" + (f"  base: {s['base']}" if s.get("base") else "")
                 + f"  {len(res.layers)} layers, {res.settings.get('dtype', '')}", width)
    short = short_names([r.name for r in res.layers])
    head = ["layer", "shape", "kind", "rank"] + cols
    body = [[short[r.name], f"{r.shape[0]}x{r.shape[1]}", r.kind, str(r.rank)] + [fmt_num(r.metrics[c]) for c in cols]
            for r in res.layers]
    head, body, same = hoist_constant(head, body, ["shape", "kind", "rank"])
    lines += wrap(f"every layer: {same}", width) if same else []
    lines += name_legend(short, width) + [""] + text_grid(head, body, width)
    if aggregates and res.layers:
        rows = [[m, str(a["n_layers"])] + [fmt_num(a["mean"][c]) for c in cols] for m, a in res.aggregates().items()]
        lines += ["", "mean per module type:"] + text_grid(["module", "layers"] + cols, rows, width)
    n_refs = sorted({r.n_ref for r in res.layers})
    lines += [""] + wrap(f"normalized_entropy = spectral_entropy / ln(n_ref), n_ref = "
                         f"{res.settings.get('n_ref', 'shape')} ({', '.join(map(str, n_refs))})", width)
    if res.notes:
        lines += wrap(f"note: {summary(res.notes)}", width)
    for w in res.warnings:
        lines += wrap(f"warning: {w}", width)
    return "\n".join(lines)


# ---- compare ---------------------------------------------------------------------------------------
def _groups(cmp) -> dict:
    """group -> heading: 'q_proj (4 layers)' per module type, the short layer name per layer."""
    if cmp.per_layer:
        return short_names(list(cmp.values))
    return {g: f"{g} ({n} layer{'s' if n != 1 else ''})" for g, n in cmp.n_layers.items()}


def _cell(cmp, g, m, lab, sep) -> str:
    std = None if cmp.per_layer else cmp.spread[g][m][lab]
    return fmt_spread(cmp.values[g][m][lab], std, sep)


def _chosen(cmp, metrics) -> list[str]:
    """`metrics` (default: the comparison's), each one the comparison has, else a clear error."""
    from .errors import DeltaspecError

    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics or () if m not in cmp.metrics]
    if unknown:
        raise DeltaspecError(f"metrics={unknown}: not in this comparison; available: {', '.join(cmp.metrics)}")
    return list(metrics or cmp.metrics)


def diff_cell(cmp, g, m, lab) -> str:
    """Δ of `lab` to the first method, to the precision the two methods' spread supports."""
    if cmp.per_layer:
        return fmt_signed(cmp.differences(g, m)[lab])
    sp = cmp.spread[g][m]
    return fmt_diff(cmp.differences(g, m)[lab], math.hypot(sp[cmp.labels[0]], sp[lab]))


def comparison_table(cmp, metrics: Optional[Sequence[str]] = None, width: Optional[int] = None,
                     headline: bool = True) -> str:
    """Terminal report: a one-line verdict (findings.py), then per group each method's mean ± std and
    its difference Δ to the first method (to the precision the spread supports)."""
    from .findings import METRIC, comparison_headline

    metrics = _chosen(cmp, metrics)
    verdict = comparison_headline(cmp, width) if headline else []
    if verdict and METRIC not in metrics:
        metrics = metrics + [METRIC]  # the verdict quotes it: the table shows it
    first = cmp.labels[0]
    a = cmp.aligned
    lines = verdict + ([""] if verdict else [])
    for lab, res in zip(a.labels, a.results):
        lines += wrap(f"{lab}: {res.source.get('path')} [{res.source.get('format')}]", width)
    what = "per layer" if cmp.per_layer else "mean ± std over the layers of each module type"
    lines += ["", *wrap(f"{what}; Δ = method − {first}", width)]
    head = ["metric"] + cmp.labels + [f"Δ {lab}" for lab in cmp.labels[1:]]
    body = []
    groups = _groups(cmp)
    for g in cmp.values:
        body.append(groups[g])
        for m in metrics:
            body.append([m] + [_cell(cmp, g, m, lab, "±") for lab in cmp.labels]
                        + [diff_cell(cmp, g, m, lab) for lab in cmp.labels[1:]])
    lines += text_grid(head, body, width)
    if cmp.per_layer:
        lines += name_legend(groups, width)
    lines += [""]
    for note in [cmp.n_ref_note()] + [f"note: {x}" for x in a.notes]:
        lines += wrap(note, width)
    for lab, res in zip(a.labels, a.results):
        if res.notes:
            lines += wrap(f"note: {lab}: {summary(res.notes)}", width)
    for lab, res in zip(a.labels, a.results):
        for w in res.warnings:
            lines += wrap(f"warning: {lab}: {without_source(w, res.source.get('path'), lab)}", width)
    return "\n".join(lines)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_PM = " \\pm "


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(c, c) for c in str(s))


def comparison_latex(cmp, metrics: Optional[Sequence[str]] = None) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}): rows = (module, metric), columns = methods,
    cells `mean ± std` over the layers (per layer: the value)."""
    metrics = _chosen(cmp, metrics)
    key = "Layer" if cmp.per_layer else "Module"
    spread = "value per layer" if cmp.per_layer else "mean $\\pm$ std over the layers of each module type"
    out = [f"% deltaspec compare: {spread}; needs \\usepackage{{booktabs}}",
           "\\begin{tabular}{ll" + "r" * len(cmp.labels) + "}", "\\toprule",
           " & ".join([key, "Metric"] + [_latex_escape(l) for l in cmp.labels]) + " \\\\", "\\midrule"]
    groups = _groups(cmp) if not cmp.per_layer else {g: g for g in cmp.values}
    for n, g in enumerate(cmp.values):
        if n:
            out.append("\\midrule")
        for i, m in enumerate(metrics):
            cells = [f"${_cell(cmp, g, m, lab, _PM)}$" for lab in cmp.labels]
            name = _latex_escape(groups[g]) if i == 0 else ""
            out.append(" & ".join([name, _latex_escape(m)] + cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out)


def comparison_markdown(cmp, metrics: Optional[Sequence[str]] = None) -> str:
    """A GitHub Markdown table: rows = (module, metric), columns = methods, cells `mean ± std`."""
    metrics = _chosen(cmp, metrics)
    esc = lambda s: str(s).replace("|", "\\|")
    key = "layer" if cmp.per_layer else "module"
    out = ["| " + " | ".join([key, "metric"] + [esc(l) for l in cmp.labels]) + " |",
           "|---|---|" + "---:|" * len(cmp.labels)]
    groups = _groups(cmp) if not cmp.per_layer else {g: g for g in cmp.values}
    for g in cmp.values:
        for i, m in enumerate(metrics):
            cells = [_cell(cmp, g, m, lab, " ± ") for lab in cmp.labels]
            out.append("| " + " | ".join([esc(groups[g]) if i == 0 else "", f"`{m}`"] + cells) + " |")
    what = "value per layer" if cmp.per_layer else "mean ± std (population, over the layers of each module type)"
    return "\n".join(out + ["", f"*{what}; {cmp.n_ref_note()}*"])


# ---- notebooks (_repr_html_) -----------------------------------------------------------------------
def _warnings_html(warnings, notes=()) -> str:
    import html

    note = f"<div style='opacity:.7'>note: {html.escape(summary(notes))}</div>" if notes else ""
    return note + "".join(f"<div>warning: {html.escape(w)}</div>" for w in warnings)


def analysis_html(res) -> str:
    """Per-layer table (full names) of the default metrics, with the result's one-line summary."""
    cols = [m for m in TABLE_METRICS if m in res.metric_names]
    body = [[r.name, f"{r.shape[0]}x{r.shape[1]}", r.kind, r.rank] + [fmt_num(r.metrics[c]) for c in cols]
            for r in res.layers]
    return html_table(["layer", "shape", "kind", "rank"] + cols, body, caption=repr(res)) + _warnings_html(res.warnings, res.notes)


def layer_html(lr) -> str:
    """Every metric of one layer, and its leading singular values."""
    sv = ", ".join(fmt_num(float(x)) for x in lr.singular_values[:8]) + (", …" if len(lr.singular_values) > 8 else "")
    body = [[k, fmt_num(v)] for k, v in lr.metrics.items()] + [["singular values", sv]]
    return html_table(["metric", "value"], body, caption=repr(lr))


def updates_html(u) -> str:
    body = [[x.name, f"{x.shape[0]}x{x.shape[1]}", x.kind, x.rank_bound, x.dtype] for x in u.layers]
    return html_table(["layer", "shape", "kind", "rank", "dtype"], body, caption=repr(u)) + _warnings_html(u.warnings, u.notes)


def comparison_html(cmp) -> str:
    """mean ± std per method (as the paper tables), differences to the first method."""
    metrics = [m for m in TABLE_METRICS if m in cmp.metrics] or cmp.metrics
    first = cmp.labels[0]
    body = []
    for g in cmp.values:
        for i, m in enumerate(metrics):
            body.append([g if i == 0 else "", m] + [_cell(cmp, g, m, lab, " ± ") for lab in cmp.labels]
                        + [diff_cell(cmp, g, m, lab) for lab in cmp.labels[1:]])
    head = ["layer" if cmp.per_layer else "module", "metric"] + cmp.labels + [f"{lab} − {first}" for lab in cmp.labels[1:]]
    return html_table(head, body, caption=repr(cmp), max_rows=60)
