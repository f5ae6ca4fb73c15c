"""Heads × layers heatmaps of a per-head quantity of MultiLoRA (`deltaspec.heads`), one panel per module.

Which heads carry the update: colour = each head's energy share ‖ΔW_i‖²/Σ‖ΔW_j‖² (default), or its
norm, σ_1, mean |s|, … (`head_results.HEAD_METRICS`). All panels share one colour scale and one colour
bar; cells are drawn as `heatmap` draws them (one precision for the whole figure).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import DeltaspecError
from ..head_results import HEAD_METRICS, HeadsResult
from .heatmap import _draw, decimals
from .style import new_axes, styled

LABELS = {"share": "head energy share", "frobenius_norm": "head ‖ΔW$_i$‖$_F$", "sigma_1": "head σ$_1$",
          "rank": "head rank", "mean_abs_s": "mean |s| of the head", "frac_s_small": "fraction of s ≈ 0",
          "overlap_col": "column-space overlap with the other heads",
          "overlap_row": "row-space overlap with the other heads"}


def heads_data(result: HeadsResult, metric: str = "share", *, modules=None, layers: Optional[Sequence[int]] = None):
    """{module: (grid, layer indices)}: grid[head, column] = `metric` of that head in layer idx[column]
    (NaN where a layer has fewer heads). Layers without an index (lm_head) are left out."""
    if not isinstance(result, HeadsResult):
        raise TypeError(f"plots.heads needs a HeadsResult (deltaspec.heads(...)); got {type(result).__name__}")
    if metric not in HEAD_METRICS:
        raise DeltaspecError(f"metric={metric!r}: not a per-head quantity; available: {', '.join(HEAD_METRICS)}")
    res = result.select(modules, layers) if modules or layers is not None else result
    out = {}
    for m in (list(modules) if modules and not isinstance(modules, str) else res.modules()):
        rows = [r for r in res.layers if r.module == m and r.layer is not None]
        if not rows:
            continue
        idx = sorted({r.layer for r in rows})
        grid = np.full((max(r.heads for r in rows), len(idx)), math.nan)
        for r in rows:
            for h in r.per_head():
                grid[h["head"], idx.index(r.layer)] = h[metric]
        out[m] = (grid, idx)
    if not out:
        raise DeltaspecError(f"no numbered layers to plot; modules: {', '.join(result.modules())}")
    return out


@styled
def heads(result: HeadsResult, metric: str = "share", *, modules=None, layers: Optional[Sequence[int]] = None,
          annotate: Optional[bool] = None, cmap: str = "viridis", vmin=None, vmax=None, title: Optional[str] = None,
          colorbar: bool = True, ax=None, size=None, height=None):
    """Rows = head, columns = layer index, colour = `metric`; one panel per module type (`modules`).

    Returns the Axes (one module) or the list of Axes. ax: an Axes, or one per module. annotate:
    values in the cells (default: at most 120 cells per panel). vmin/vmax: the shared colour scale
    (default: the range over all panels). With shares, 1/n (the number of heads) is the balanced value.
    """
    data = heads_data(result, metric, modules=modules, layers=layers)
    import matplotlib

    if isinstance(cmap, str) and cmap not in matplotlib.colormaps:
        raise DeltaspecError(f"cmap={cmap!r} is not a matplotlib colormap (e.g. viridis, cividis, magma, RdBu)")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise DeltaspecError(f"vmin={vmin} must be below vmax={vmax}")
    if ax is None:
        n_heads = max(g.shape[0] for g, _ in data.values())
        _, axes = new_axes(len(data), size or ("single" if len(data) == 1 else "double"),
                           height=height or min(max(1.2, 0.22 * n_heads + 0.9), 8.0))
    else:
        axes = list(np.atleast_1d(ax))
        if len(axes) != len(data):
            raise DeltaspecError(f"{len(data)} modules need {len(data)} axes, got {len(axes)}")
    every = np.concatenate([g.ravel() for g, _ in data.values()])
    finite = every[np.isfinite(every)]
    if finite.size:
        vmin = float(finite.min()) if vmin is None else vmin
        vmax = float(finite.max()) if vmax is None else vmax
    digits = decimals(every)
    for n, (a, (mod, (grid, idx))) in enumerate(zip(axes, data.items())):
        im = _draw(a, grid, list(range(grid.shape[0])), [str(i) for i in idx], cmap, vmin, vmax, annotate, digits)
        a.set_title(mod)
        a.set_xlabel("layer")
        if n == 0:
            a.set_ylabel("head")
        else:
            a.tick_params(labelleft=False)
    if colorbar:
        cb = axes[0].figure.colorbar(im, ax=axes, fraction=0.05 if len(axes) == 1 else 0.03, pad=0.02)
        cb.set_label(LABELS.get(metric, metric))
        cb.formatter.set_useOffset(False)
        cb.update_ticks()
        cb.outline.set_linewidth(0.4)
    if title is not None:
        axes[0].figure.suptitle(title)
    return axes[0] if len(axes) == 1 else axes
