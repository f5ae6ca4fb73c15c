"""The report's sections, from analyses, rank suggestions and provenance (a presenter: no math here).

Tables come from `AnalysisResult.aggregates()`, `compare.compare`, `RankSuggestions`; figures from
`deltaspec.plots` (Figure 2 histogram, spectra, energy, heatmaps, rank needed), serialised by
`figures.svg_of`.
"""
from __future__ import annotations

import datetime as _dt
from typing import Mapping, Optional, Sequence

from .. import __version__
from ..errors import DeltaspecError
from ..tables import INITIAL_COLUMNS, TABLE_METRICS
from . import html as H
from ..findings import input_sentence
from .figures import svg_of

REPORT_METRICS = TABLE_METRICS + INITIAL_COLUMNS  # the second part only with --initial
FIG_LEVEL = 0.9  # energy share of the rank-needed figures (the tables show every level)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def provenance(inputs: Sequence[dict], command: Optional[str], settings: Mapping) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [H.kv([("deltaspec", __version__), ("generated", now)] + ([("command", command)] if command else []))]
    out.append("<h3>Settings</h3>" + H.kv((k, v) for k, v in settings.items()))
    for inp in inputs:
        head = [("path", inp["path"]), ("format", inp.get("format") or "?")]
        if inp.get("base"):
            head.append(("base", inp["base"]))
        out.append(f"<h3>{H.esc(inp['label'])}</h3>" + H.kv(head))
        files = [(f"{side}{f['name']}", _size(f["bytes"]), f["sha256"] or "not computed (--no-hash)")
                 for side, key in (("", "files"), ("base: ", "base_files")) for f in inp.get(key, [])]
        if files:
            out.append(H.table(["file", "size", "SHA-256"], files, left=(0, 2)).replace("<td class=\"l\">",
                                                                                         "<td class=\"l mono\">"))
    return "".join(out)


def warnings(results: Mapping) -> str:
    """Warnings (what may surprise) in the yellow box, each naming its input once; expected omissions
    (norms, embeddings: deltaspec.omissions) as one quiet line per input below it."""
    from ..omissions import summary, without_source

    items = [(lab, without_source(w, res.source.get("path"), lab)) for lab, res in results.items() for w in res.warnings]
    notes = "".join(f"<p class='muted'><b>{H.esc(lab)}</b>: {H.esc(summary(res.notes))}</p>"
                    for lab, res in results.items() if res.notes)
    if not items:
        return "<p>None.</p>" + notes if notes else "<p>None: every tensor of every input was read and analysed.</p>"
    return ('<ul class="warn">' + "".join(f"<li><b>{H.esc(lab)}</b>: {H.esc(w)}</li>" for lab, w in items) + "</ul>"
            + notes)


def summary(results: Mapping) -> str:
    out = []
    for lab, res in results.items():
        agg = res.aggregates()
        cols = [m for m in REPORT_METRICS if m in res.metric_names]
        rows = [[m, a["n_layers"]] + [a["mean"][c] for c in cols] for m, a in agg.items()]
        src = res.source
        out.append(f"<h3>{H.esc(lab)}</h3><p class='muted'>{len(res.layers)} layers, format "
                   f"{H.esc(src.get('format'))}; mean over the layers of each module type "
                   f"(per-layer values under Rank suggestions and Per-layer metrics).</p>")
        out.append(H.table(["module", "layers"] + cols, rows))
    return "".join(out)


def findings(results: Mapping, cmp) -> str:
    """The report's opening: one sentence per input, then the method differences beyond their spread."""
    from ..findings import DOMINATED, differences_beyond_spread, focus_modules

    common = [m for m in next(iter(results.values())).modules() if all(m in r.modules() for r in results.values())]
    mods = focus_modules(common) if common else None
    items = [H.esc(input_sentence(lab, res, mods)) for lab, res in results.items()]
    out = "<ul>" + "".join(f"<li>{x}</li>" for x in items) + "</ul>"
    if cmp is not None:
        diffs = differences_beyond_spread(cmp, [m for m in TABLE_METRICS if m in cmp.metrics])
        out += ("<p>Differences beyond their spread (|Δ| > √(s₁² + s₂²), s the std over the layers of a module type):"
                "</p><ul>" + "".join(f"<li>{H.esc(d)}</li>" for d in diffs) + "</ul>")
    out += (f"<p class='muted'>Dominated: the top direction holds at least {DOMINATED:g} of ‖ΔW‖²_F "
            "(top-1 energy), as much as all others together. Values are mean ± std over the layers.</p>")
    return '<div class="find">' + out + "</div>"


def comparison(cmp) -> str:
    """Mean ± std per method and module type, differences to the first method (coloured when beyond the spread)."""
    from ..findings import beyond_spread
    from ..formatting import fmt_spread
    from ..tables import diff_cell

    first = cmp.labels[0]
    metrics = [m for m in REPORT_METRICS if m in cmp.metrics]
    head = ["module", "metric"] + cmp.labels + [f"{lab} − {first}" for lab in cmp.labels[1:]]
    rows = []
    for g in cmp.values:
        for i, m in enumerate(metrics):
            sp = cmp.spread[g][m]
            diffs = []
            for lab in cmp.labels[1:]:
                d = cmp.differences(g, m)[lab]
                cls = ("pos" if d > 0 else "neg") if beyond_spread(d, sp[first], sp[lab]) else "dim"
                diffs.append((diff_cell(cmp, g, m, lab), cls))
            rows.append([f"{g} ({cmp.n_layers[g]})" if i == 0 else "", m]
                        + [fmt_spread(cmp.values[g][m][lab], sp[lab], "±") for lab in cmp.labels] + diffs)
    notes = cmp.aligned.notes + [cmp.n_ref_note()]
    return (f"<p>Mean ± std over the layers every input has, per module type; differences are method − "
            f"{H.esc(first)}, coloured when beyond the spread (green: larger, red: smaller; grey: within it).</p>"
            + H.table(head, rows, left=(1,)) + "".join(f"<p class='muted'>{H.esc(n)}</p>" for n in notes))


def figures(results: Mapping) -> str:
    import deltaspec.plots as dp

    figs = []
    labels = " vs ".join(results)
    try:
        mods = _fig2_modules(results)
        figs.append(H.figure(svg_of(dp.hist(results, modules=mods), f"Histograms of σ_i/σ_1 (top singular values "
                             f"per layer) of {', '.join(mods)}, {labels}"),
                             f"Figure 2 (MultiLoRA paper): singular values of ΔW for {', '.join(mods)}, top R per "
                             "layer divided by σ_1, R the smallest rank among the inputs; inputs overlaid."))
        figs.append(H.figure(svg_of(dp.spectrum(results), f"Median sorted singular values σ_i/σ_1 per input, {labels}"),
                             "Spectra: σ_i/σ_1 vs i, median over all layers with interquartile band (log y)."))
        figs.append(H.figure(svg_of(dp.energy(results), f"Cumulative energy share vs k per input, {labels}"),
                             "Cumulative energy share vs k (sum of the top k σ_i² over the sum of all): how much of ΔW the top k "
                             "directions hold."))
    except DeltaspecError as e:  # inputs without common layers: no overlaid figures
        figs.append(f"<p>No overlaid figures: {H.esc(e)}</p>")
    lo, hi = _heat_range(results, "normalized_entropy")
    for lab, res in results.items():
        try:
            figs.append(H.figure(svg_of(dp.heatmap({lab: res}, "normalized_entropy", vmin=lo, vmax=hi),
                                        f"Heatmap of normalized entropy by layer and module type, {lab}"),
                                 f"{lab}: normalized entropy H/ln(n_ref) per layer × module (1 = flat spectrum); "
                                 "every heatmap of this report uses the same colour scale."))
        except DeltaspecError as e:
            figs.append(f"<p>{H.esc(lab)}: no heatmap: {H.esc(e)}</p>")
        try:
            figs.append(H.figure(svg_of(dp.rank_needed({lab: res}, energy=FIG_LEVEL),
                                        f"Rank needed to keep {100 * FIG_LEVEL:g}% of ΔW's energy vs layer, one line "
                                        f"per module type, {lab}"),
                                 f"{lab}: rank a truncated SVD (a LoRA) needs to keep {100 * FIG_LEVEL:g}% of each "
                                 "layer's ΔW energy (other shares: Rank suggestions)."))
        except DeltaspecError as e:
            figs.append(f"<p>{H.esc(lab)}: no rank-needed plot: {H.esc(e)}</p>")
    return '<div class="figs">' + "".join(figs) + "</div>"


def _heat_range(results: Mapping, metric: str):
    """(min, max) of `metric` over every layer of every input: one colour scale for all heatmaps."""
    vals = [r.metrics.get(metric) for res in results.values() for r in res.layers if r.layer is not None]
    vals = [float(v) for v in vals if v is not None and v == v]
    return (min(vals), max(vals)) if vals and min(vals) < max(vals) else (None, None)


def _fig2_modules(results: Mapping) -> list[str]:
    first = next(iter(results.values()))
    common = [m for m in first.modules() if all(m in r.modules() for r in results.values())]
    paper = [m for m in ("k_proj", "v_proj") if m in common]
    return paper or common[:2]


def rank_section(suggestions: Mapping) -> str:
    if not suggestions:
        return "<p>Not computed.</p>"
    out = []
    for lab, s in suggestions.items():
        mt = s.module_table()
        head = ["module", "layers", "dim"] + [f"{100 * lv:g}% energy" for lv in s.levels]
        rows = [[r["module"], r["layers"], r["dim"]] + [f"{r['needed'][lv][0]:g} ({r['needed'][lv][1]})"
                                                        for lv in s.levels] for r in mt]
        out.append(f"<h3>{H.esc(lab)}</h3><p>Rank a LoRA needs to keep each share of ΔW's energy (truncated SVD, "
                   "Eckart–Young), per module type: median (max) over layers.</p>" + H.table(head, rows))
        lh, lb = s.layer_grid()
        out.append(H.details(f"{lab}: rank per layer by policy (* = chosen: {s.chosen.label})",
                             H.table(lh, lb) + "<p class='muted'>e = energy share, fro = relative Frobenius error, "
                             "ratio = σ_1/σ_i bound (kohya sv_ratio), knee = knee of σ_i/σ_1, erank = effective rank; "
                             "kept/err: energy kept and relative error of the chosen truncation; r = current rank.</p>"))
        if s.ranks():
            out.append(H.details(f"{lab}: PEFT LoraConfig for {s.chosen.label}",
                                 f"<pre>{H.esc(s.lora_config_snippet())}</pre>"))
    return "".join(out)


def per_layer(results: Mapping) -> str:
    from ..formatting import short_names

    out = []
    for lab, res in results.items():
        cols = [m for m in REPORT_METRICS if m in res.metric_names]
        short = short_names([r.name for r in res.layers])
        names = [short[r.name] for r in res.layers]
        rows = [[n, f"{r.shape[0]}×{r.shape[1]}", r.kind, r.rank] + [r.metrics[c] for c in cols]
                for n, r in zip(names, res.layers)]
        out.append(H.details(f"{lab}: {len(rows)} layers", H.table(["layer", "shape", "kind", "rank"] + cols, rows,
                                                                     left=(1, 2))))
    return "".join(out)


def build(results: Mapping, *, suggestions: Optional[Mapping] = None, inputs: Sequence[dict] = (),
          command: Optional[str] = None, settings: Optional[Mapping] = None, title: Optional[str] = None) -> str:
    """The whole report as one HTML string.

    results: {label: AnalysisResult}; suggestions: {label: RankSuggestions}; inputs: provenance dicts
    (`provenance.describe`); settings: what the analysis used (shown as given).
    """
    if not results:
        raise DeltaspecError("a report needs at least one analysis")
    suggestions = dict(suggestions or {})
    title = title or f"deltaspec report: {', '.join(results)}"
    intro = (f"<p class='muted'>Spectra of the weight updates ΔW of {len(results)} input(s), computed by deltaspec "
             f"{__version__}. This file is self-contained: no scripts, no network, figures inline.</p>")
    cmp = None
    if len(results) > 1:
        from ..compare import compare

        try:
            cmp = compare(list(results.values()), list(results))
        except DeltaspecError as e:
            cmp_error = f"<p>No comparison: {H.esc(e)}</p>"
    sections = [("findings", "Findings", findings(results, cmp))]
    if len(results) > 1:
        sections.append(("comparison", "Comparison", comparison(cmp) if cmp is not None else cmp_error))
    sections += [("figures", "Figures", figures(results)),
                 ("summary", "Summary per module type", summary(results)),
                 ("ranks", "Rank suggestions", rank_section(suggestions)),
                 ("layers", "Per-layer metrics", per_layer(results)),
                 ("warnings", "Warnings", warnings(results)),
                 ("provenance", "Provenance", provenance(inputs, command, settings or {}))]
    return H.page(title, sections, intro)
