"""Figure 2 of the MultiLoRA paper: histograms of the singular values of ΔW, methods overlaid.

One panel per projection type (k_proj, v_proj by default), all selected layers of that type pooled,
every method drawn with the same bins (shared per panel) so the bars are directly comparable.

What is counted (the fairness choice; documented in `deltaspec plot hist --help` and docs/PLOTS.md):
- top="auto" (default): the top R singular values of each layer, R = the smallest number of
  singular values any method has for that layer (a LoRA of rank 16 has 16 nonzero σ, full FT has
  min(d_out, d_in)). Every method then contributes equally many values per layer, so counts compare
  like with like; the rest of a full-FT spectrum is in the spectrum/energy plots.
  top=N takes the top N of each method; top="all" takes every stored σ (then prefer density=True).
- normalize=True (default): σ_i / σ_1 per layer, for i ≥ 2. The paper's point is the shape of the
  spectrum, how dominated it is by its top values, not the update's scale (which α/r and learning
  rates set). Values near 1 = balanced directions; a pile near 0 = a few directions dominate. σ_1
  itself is left out: σ_1/σ_1 = 1 for every layer, a bar at 1 that says nothing (the axis says i ≥ 2).
- density=True: each method's histogram has unit area — per unit of σ on a linear axis, per
  decade (unit of log₁₀ σ) with log_x, so log-spaced bins of different widths compare fairly.
Methods are told apart by colour and line style (outlines, no blended fills), so the figure
survives greyscale printing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import matplotlib as mpl
import numpy as np
from matplotlib.ticker import LogLocator, MaxNLocator

from ..errors import DeltaspecError
from .style import as_aligned, color, legend, linestyle, panel_axes, picked, styled

DEFAULT_MODULES = ("k_proj", "v_proj")
_DIFFUSERS_KV = ("to_k", "to_v")  # the same projections in diffusers / kohya names


def default_modules(names: Sequence[str]) -> tuple:
    """The paper's k/v panels in the naming the layers use: diffusers' to_k/to_v where there are such layers
    (a Stable Diffusion / Flux LoRA, whose text encoder's k_proj/v_proj are not the main model), else
    k_proj/v_proj."""
    from ..layernames import module_matches, module_type

    def has(spec):
        return any(module_matches(n, module_type(n), spec) for n in names)

    return _DIFFUSERS_KV if all(map(has, _DIFFUSERS_KV)) else DEFAULT_MODULES


@dataclass
class HistData:
    """What one panel shows: shared bin edges, counts per method, and how the values were chosen."""

    module: str
    edges: np.ndarray
    counts: dict  # label -> counts (len(edges) - 1)
    values: dict  # label -> the pooled values
    top: Optional[int]  # values per layer (None: all)
    n_layers: int
    normalize: bool

    def __repr__(self) -> str:
        top = f"top {self.top}" if self.top is not None else "all σ"
        return (f"HistData({self.module}: {', '.join(self.counts)}; {len(self.edges) - 1} bins, {top} of "
                f"{self.n_layers} layers{', σ_i/σ_1' if self.normalize else ''})")


def _per_layer(sigma: np.ndarray, top: Optional[int], normalize: bool) -> np.ndarray:
    """The layer's top values (σ_2/σ_1 … σ_top/σ_1 when normalised: σ_1/σ_1 = 1 carries nothing)."""
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    if top is not None:
        s = s[:top]
    if normalize:
        s = s[1:] / s[0] if s.size and s[0] > 0 else s[:0]  # a zero update has no shape: left out
    return s


def heights(h: "HistData", label: str, density: bool, log_x: bool) -> np.ndarray:
    """What a bar shows: counts, or a density with unit area (per decade on log-spaced bins)."""
    c = h.counts[label]
    if not density or c.sum() == 0:
        return c
    widths = np.diff(np.log10(h.edges)) if log_x else np.diff(h.edges)
    return c / (c.sum() * widths)


def _resolve_top(top, columns) -> Optional[int]:
    if top in (None, "all"):
        return None
    if top == "auto":
        return int(min(len(r.singular_values) for col in columns for r in col))
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 2:
        raise DeltaspecError(f"top={top!r}: use 'auto', 'all' or a number of singular values ≥ 2 (σ_1 itself is "
                             "left out of the normalised histogram)")
    return int(top)


def histogram_data(data, module: str, *, layers: Optional[Sequence[int]] = None, top: Union[str, int, None] = "auto",
                   normalize: bool = True, bins: int = 20, log_x: bool = False, labels=None) -> HistData:
    """Pooled values and shared-bin counts for one module type (what one panel of `hist` draws)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise DeltaspecError(f"bins={bins!r}: use a whole number of bins ≥ 1")
    al = as_aligned(data, labels)
    cols = picked(al, module, layers)
    k = _resolve_top(top, cols)
    values = {lab: np.concatenate([_per_layer(r.singular_values, k, normalize) for r in col] or [np.zeros(0)])
              for lab, col in zip(al.labels, cols)}
    pooled = np.concatenate(list(values.values()))
    if normalize and not log_x:
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif log_x:
        pos = pooled[pooled > 0]
        lo, hi = (pos.min(), pos.max()) if pos.size else (1e-3, 1.0)
        edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1) if hi > lo else np.geomspace(lo / 2, lo * 2, bins + 1)
    else:
        hi = pooled.max() if pooled.size and pooled.max() > 0 else 1.0
        edges = np.linspace(0.0, hi * (1 + 1e-9), bins + 1)
    counts = {lab: np.histogram(v, bins=edges)[0].astype(np.float64) for lab, v in values.items()}
    return HistData(module, edges, counts, values, k, len(cols[0]), normalize)


def _xlabel(h: HistData) -> str:
    if h.normalize:  # σ_1 is each layer's own: "i = 2…16" says both the top and that σ_1/σ_1 is left out
        return f"σ$_i$ / σ$_1$, i = 2…{h.top}" if h.top is not None else "σ$_i$ / σ$_1$, i ≥ 2 (all)"
    return f"singular value σ$_i$ (top {h.top} per layer)" if h.top is not None else "singular value σ$_i$ (all per layer)"


def _thin_ticks(a, width_in: float, height_in: float, log_x: bool, counts: bool) -> None:
    """Few enough ticks that 7 pt labels never touch, even in a 1.5 in wide panel (single column)."""
    nx = max(3, int(width_in / 0.45))
    if log_x:
        a.xaxis.set_major_locator(LogLocator(numticks=nx))
    else:
        a.xaxis.set_major_locator(MaxNLocator(nbins=nx - 1, steps=[1, 2, 2.5, 5, 10]))
    if a.get_yscale() != "log":
        a.yaxis.set_major_locator(MaxNLocator(nbins=max(3, int(height_in / 0.3)), integer=counts))


@styled
def hist(data, *, modules: Optional[Sequence[str]] = None, layers: Optional[Sequence[int]] = None,
         top: Union[str, int, None] = "auto", normalize: bool = True, bins: int = 20, log_counts: bool = False,
         density: bool = False, log_x: bool = False, labels=None, title: Optional[str] = None, ax=None, size=None, height=None) -> list:
    """Figure 2: one panel per module type, one step outline per method (colour + line style).

    data: see `style.as_aligned`. modules: None = k_proj, v_proj (diffusers / kohya names: to_k, to_v). ax: None (new figure, one panel per module, double-column width for
    two or more), one Axes (one module) or a sequence of Axes. Returns the list of Axes.
    log_counts: log-scaled y; density: each method's histogram has unit area (per decade with log_x).
    """
    al = as_aligned(data, labels)
    modules = default_modules([r.name for r in al.results[0].layers]) if modules is None else modules
    modules = [modules] if isinstance(modules, str) else list(modules)
    own = ax is None
    fig, axes = panel_axes(ax, modules, "modules", size, height)
    xlabels = []
    for i, (a, module) in enumerate(zip(axes, modules)):
        h = histogram_data(al, module, layers=layers, top=top, normalize=normalize, bins=bins, log_x=log_x)
        for n, lab in enumerate(al.labels):
            c = heights(h, lab, density, log_x)
            base = 0.8 if log_counts and not density else (None if log_counts else 0)
            a.stairs(c, h.edges, baseline=base, color=color(n), ls=linestyle(n), lw=1.3, label=lab)
        if log_x:
            a.set_xscale("log")
        if log_counts:
            a.set_yscale("log")
        a.set_xlim(h.edges[0], h.edges[-1])
        bbox = a.get_position(original=True)
        w_in, h_in = a.figure.get_size_inches()
        _thin_ticks(a, bbox.width * w_in, bbox.height * h_in, log_x, counts=not density)
        a.set_title(f"{module} ({h.n_layers} layer{'s' if h.n_layers != 1 else ''})")
        xlabels.append(_xlabel(h))
        a.set_xlabel(xlabels[-1])
        if i == 0:
            a.set_ylabel(("density per decade" if log_x else "density") if density else "count")
            if not own:
                legend(a)
        a.grid(axis="x", visible=False)
    if own and len(axes) > 1 and len(set(xlabels)) == 1:  # one x label under the panels: no collisions
        for a in axes:
            a.set_xlabel("")
        fig.supxlabel(xlabels[0], fontsize=mpl.rcParams["axes.labelsize"])
    if own:  # one legend for all panels, above them, so it never hides a bar
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=len(al.labels),
                   frameon=False)
    if title:
        axes[0].figure.suptitle(title)
    return axes
