"""Layer × module heatmap of one metric for one checkpoint (e.g. normalized_entropy)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import DeltaspecError
from ..results import AnalysisResult
from .style import as_aligned, new_axes, pick, styled


def heatmap_data(result: AnalysisResult, metric: str, *, modules=None, layers=None):
    """(grid, layer indices, module names): grid[row, col] = metric of layer row, module col (NaN: absent).

    Layers without an index (e.g. lm_head) have no row and are left out.
    """
    if metric not in result.metric_names:
        raise DeltaspecError(f"unknown metric '{metric}'; available: {', '.join(result.metric_names)}")
    rows = [r for r in pick(result, modules, layers) if r.layer is not None]
    if not rows:
        raise DeltaspecError(f"no numbered layers to plot; modules: {', '.join(result.modules())}")
    mods = [m for m in dict.fromkeys(r.module for r in rows)]
    if modules and not isinstance(modules, str):
        mods = [m for m in modules if m in mods]
    idx = sorted({r.layer for r in rows})
    grid = np.full((len(idx), len(mods)), np.nan)
    for r in rows:
        v = r.metrics[metric]
        grid[idx.index(r.layer), mods.index(r.module)] = np.nan if v is None else float(v)
    return grid, idx, mods


@styled
def heatmap(data, metric: str = "normalized_entropy", *, modules=None, layers: Optional[Sequence[int]] = None,
            annotate: Optional[bool] = None, cmap: str = "viridis", vmin=None, vmax=None, title: Optional[str] = None,
            colorbar: bool = True, ax=None, size=None, height=None):
    """Rows = layer index, columns = module type, colour = `metric`; returns the Axes.

    data: one AnalysisResult (or a one-entry mapping/list). annotate: print values in the cells
    (default: when there are at most 120 cells). Missing cells are left blank. viridis is
    perceptually uniform and colour-blind safe. Several panels on one scale: pass vmin/vmax,
    colorbar=False, and add one with `fig.colorbar(ax.get_images()[0], ax=axes)`.
    """
    al = as_aligned(data)
    if len(al.results) != 1:
        raise DeltaspecError(f"a heatmap shows one checkpoint, got {len(al.results)}; plot them one at a time")
    grid, idx, mods = heatmap_data(al.results[0], metric, modules=modules, layers=layers)
    if ax is None:
        h = height or min(max(1.2, 0.2 * len(idx) + 0.9), 8.0)
        _, (ax,) = new_axes(1, size, height=h)
    masked = np.ma.masked_invalid(grid)
    im = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(mods)), mods, rotation=30 if len(mods) > 4 else 0, ha="right" if len(mods) > 4 else "center")
    ax.set_yticks(range(len(idx)), [str(i) for i in idx])
    ax.set_ylabel("layer")
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(length=0)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        cb.set_label(metric)
        cb.formatter.set_useOffset(False)  # nearly constant grids: no "1e-8+9.6e-1" offset label
        cb.update_ticks()
        cb.outline.set_linewidth(0.4)
    if annotate is None:
        annotate = grid.size <= 120
    if annotate:
        lo, hi = im.get_clim()
        for (y, x), v in np.ndenumerate(grid):
            if math.isfinite(v):
                light = (v - lo) / (hi - lo) < 0.55 if hi > lo else True
                ax.text(x, y, f"{v:.3g}", ha="center", va="center", fontsize=5.5, color="white" if light else "black")
    src = al.labels[0]
    ax.set_title(title if title is not None else f"{src}: {metric}")
    return ax
