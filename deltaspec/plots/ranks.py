"""Rank needed vs layer: the smallest rank k whose truncated SVD keeps a share of each layer's ΔW energy.

For full fine-tuning this is "what rank would a LoRA need to capture x % of this update", layer by
layer; one line per module type (colour), one line style per energy level. The numbers come from
`deltaspec.suggest.rank_needed` (energy policy of `deltaspec.ranks`); nothing else is computed here.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from matplotlib.ticker import MaxNLocator

from ..errors import DeltaspecError
from .style import as_aligned, color, legend, new_axes, pick, styled

STYLES = ("-", "--", ":", "-.")


def rank_needed_data(result, levels: Sequence[float], modules=None, layers=None) -> dict:
    """{(module, level): (layer indices, ranks, min(d_out, d_in) per layer)} for numbered layers."""
    from ..suggest import rank_needed

    rows = [r for r in pick(result, modules, layers) if r.layer is not None]
    if not rows:
        raise DeltaspecError(f"no numbered layers to plot; modules: {', '.join(result.modules())}")
    out = {}
    for m in dict.fromkeys(r.module for r in rows):
        col = sorted((r for r in rows if r.module == m), key=lambda r: r.layer)
        need = [rank_needed(r.singular_values, levels) for r in col]
        for lv in levels:
            out[(m, lv)] = ([r.layer for r in col], [n[lv] for n in need], [min(r.shape) for r in col])
    return out


@styled
def rank_needed(data, energy: Union[float, Sequence[float]] = 0.9, *, modules=None,
                layers: Optional[Sequence[int]] = None, relative: bool = False, log_y: bool = False,
                title: Optional[str] = None, ax=None, size=None, height=None):
    """Rank needed to keep `energy` (one level or several) of ΔW's energy, vs layer index.

    data: one AnalysisResult (or a one-entry mapping/list). relative: divide by min(d_out, d_in)
    (the full rank). Returns the Axes.
    """
    al = as_aligned(data)
    if len(al.results) != 1:
        raise DeltaspecError(f"rank_needed draws one checkpoint, got {len(al.results)}; plot them one at a time")
    levels = [energy] if isinstance(energy, (int, float)) else list(energy)
    if ax is None:
        _, (ax,) = new_axes(1, size, height)
    d = rank_needed_data(al.results[0], levels, modules, layers)
    mods = list(dict.fromkeys(m for m, _ in d))
    for i, m in enumerate(mods):
        for j, lv in enumerate(levels):
            x, k, dim = d[(m, lv)]
            y = [a / b for a, b in zip(k, dim)] if relative else k
            lab = m if j == 0 else "_nolegend_"
            ax.plot(x, y, STYLES[j % len(STYLES)], color=color(i), marker="o", ms=2.5, label=lab)
    if len(levels) > 1:  # line styles explained once, in grey
        for j, lv in enumerate(levels):
            ax.plot([], [], STYLES[j % len(STYLES)], color="0.4", label=f"{100 * lv:g}% energy")
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not relative and not log_y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
    ax.set_xlabel("layer")
    ax.set_ylabel("rank needed / min(d_out, d_in)" if relative else "rank needed")
    what = ", ".join(f"{100 * lv:g}%" for lv in levels)
    ax.set_title(title if title is not None else f"{al.labels[0]}: rank for {what} energy")
    legend(ax, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: hides no line
    return ax
