"""Figure 2 of the MultiLoRA paper: histograms of the singular values of ΔW, methods overlaid.

One panel per projection type (k_proj, v_proj by default), all selected layers of that type pooled,
every method drawn with the same bins (shared per panel) so the bars are directly comparable.

What is counted (the fairness choice; documented in `deltaspec plot hist --help` and docs/PLOTS.md):
- top="auto" (default): the top R singular values of each layer, R = the smallest number of
  singular values any method has for that layer (a LoRA of rank 16 has 16 nonzero σ, full FT has
  min(d_out, d_in)). Every method then contributes equally many values per layer, so counts compare
  like with like; the rest of a full-FT spectrum is in the spectrum/energy plots.
  top=N takes the top N of each method; top="all" takes every stored σ (then prefer density=True).
- normalize=True (default): σ_i / σ_1 per layer. The paper's point is the shape of the spectrum,
  how dominated it is by its top values, not the update's scale (which α/r and learning rates set).
  Values near 1 = balanced directions; a pile near 0 = a few directions dominate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.ticker import MaxNLocator

from .style import as_aligned, color, legend, new_axes, picked, styled

DEFAULT_MODULES = ("k_proj", "v_proj")


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
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    if top is not None:
        s = s[:top]
    if normalize:
        s = s / s[0] if s.size and s[0] > 0 else s[:0]  # a zero update has no shape: left out
    return s


def _resolve_top(top, columns) -> Optional[int]:
    if top in (None, "all"):
        return None
    if top == "auto":
        return int(min(len(r.singular_values) for col in columns for r in col))
    return int(top)


def histogram_data(data, module: str, *, layers: Optional[Sequence[int]] = None, top: Union[str, int, None] = "auto",
                   normalize: bool = True, bins: int = 20, log_x: bool = False, labels=None) -> HistData:
    """Pooled values and shared-bin counts for one module type (what one panel of `hist` draws)."""
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
    what = "σ$_i$ / σ$_1$" if h.normalize else "singular value σ$_i$"
    return f"{what} (top {h.top} per layer)" if h.top is not None else f"{what} (all per layer)"


@styled
def hist(data, *, modules: Sequence[str] = DEFAULT_MODULES, layers: Optional[Sequence[int]] = None,
         top: Union[str, int, None] = "auto", normalize: bool = True, bins: int = 20, log_counts: bool = False,
         density: bool = False, log_x: bool = False, labels=None, title: Optional[str] = None, ax=None, size=None, height=None) -> list:
    """Figure 2: one panel per module type, one histogram (step outline + light fill) per method.

    data: see `style.as_aligned`. ax: None (new figure, one panel per module, double-column width for
    two or more), one Axes (one module) or a sequence of Axes. Returns the list of Axes.
    log_counts: log-scaled y; density: normalise each method's histogram to unit area.
    """
    modules = [modules] if isinstance(modules, str) else list(modules)
    own = ax is None
    if own:
        fig, axes = new_axes(len(modules), size, height)
    else:
        axes = list(np.atleast_1d(ax))
        if len(axes) != len(modules):
            raise ValueError(f"{len(modules)} modules need {len(modules)} axes, got {len(axes)}")
    al = as_aligned(data, labels)
    for i, (a, module) in enumerate(zip(axes, modules)):
        h = histogram_data(al, module, layers=layers, top=top, normalize=normalize, bins=bins, log_x=log_x)
        for n, lab in enumerate(al.labels):
            c = h.counts[lab]
            if density and c.sum() > 0:
                c = c / (c.sum() * np.diff(h.edges))
            base = 0.8 if log_counts and not density else (None if log_counts else 0)
            if base is not None:
                a.stairs(c, h.edges, baseline=base, fill=True, color=color(n), alpha=0.18, lw=0, label="_nolegend_")
            a.stairs(c, h.edges, baseline=base, color=color(n), lw=1.2, label=lab)
        if log_x:
            a.set_xscale("log")
        if log_counts:
            a.set_yscale("log")
        elif not density:
            a.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 12.5 ticks
        a.set_xlim(h.edges[0], h.edges[-1])
        a.set_title(f"{module} ({h.n_layers} layer{'s' if h.n_layers != 1 else ''})")
        a.set_xlabel(_xlabel(h))
        if i == 0:
            a.set_ylabel("density" if density else "count")
            if not own:
                legend(a)
        a.grid(axis="x", visible=False)
    if own:  # one legend for all panels, above them, so it never hides a bar
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=len(al.labels),
                   frameon=False)
    if title:
        axes[0].figure.suptitle(title)
    return axes
