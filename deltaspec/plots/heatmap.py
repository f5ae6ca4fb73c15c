"""Layer × module heatmaps of one metric (e.g. normalized_entropy), one panel per checkpoint.

Several checkpoints share one colour scale (the range of all panels, or vmin/vmax) and one colour
bar, so the same colour means the same value everywhere. Cell labels use one precision for the
whole figure (0.790 next to 0.815, not 0.79 next to 0.815).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import DeltaspecError
from ..results import AnalysisResult
from .style import as_aligned, metric_label, new_axes, pick, styled


def heatmap_data(result: AnalysisResult, metric: str, *, modules=None, layers=None):
    """(grid, layer indices, module names): grid[row, col] = metric of layer row, module col (NaN: absent).

    Layers without an index (e.g. lm_head) have no row and are left out.
    """
    if metric not in result.metric_names:
        raise DeltaspecError(f"metric={metric!r}: unknown metric; available: {', '.join(result.metric_names)}")
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


def decimals(values) -> int:
    """One number of decimals for every cell: 3 significant digits of the largest |value|."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    return 0 if not v.size else int(min(6, max(0, 2 - math.floor(math.log10(v.max())))))


FONT_PT = 5.5  # cell annotations
CHAR_PT = 0.6  # a digit's width per point of font size (DejaVu Sans)


def _column_pt(ax, n: int) -> float:
    """Width of one of `n` columns in points, from the Axes' current box (before constrained layout
    shrinks it a little: an upper bound)."""
    return ax.get_position().width * ax.figure.get_figwidth() * 72 / max(n, 1)


def _draw(ax, grid, idx, mods, cmap, vmin, vmax, annotate, digits):
    """imshow of grid (rows idx, columns mods). Numeric column labels are thinned to every k-th when
    they would touch (30 layers in a panel); cells are annotated by default only when at most 120 cells
    and the value fits its cell's width."""
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    col_pt = _column_pt(ax, len(mods))
    if all(m.isdigit() for m in mods):  # layer indices: upright, every k-th so that none touch
        step = max(1, math.ceil(CHAR_PT * 8 * (max(map(len, mods)) + 1) / col_pt))
        ax.set_xticks(range(0, len(mods), step), mods[::step])
    else:
        ax.set_xticks(range(len(mods)), mods, rotation=30 if len(mods) > 4 else 0,
                      ha="right" if len(mods) > 4 else "center")
    ax.set_yticks(range(len(idx)), [str(i) for i in idx])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(length=0)
    fits = CHAR_PT * FONT_PT * (digits + 3) <= col_pt  # "0.123" / "-1.23": digits + 3 characters
    if annotate if annotate is not None else grid.size <= 120 and fits:
        lo, hi = im.get_clim()
        for (y, x), v in np.ndenumerate(grid):
            if math.isfinite(v):
                light = (v - lo) / (hi - lo) < 0.55 if hi > lo else True
                ax.text(x, y, f"{v:.{digits}f}", ha="center", va="center", fontsize=FONT_PT,
                        color="white" if light else "black")
    return im


@styled
def heatmap(data, metric: str = "normalized_entropy", *, modules=None, layers: Optional[Sequence[int]] = None,
            annotate: Optional[bool] = None, cmap: str = "viridis", vmin=None, vmax=None, title: Optional[str] = None,
            colorbar: bool = True, labels=None, ax=None, size=None, height=None):
    """Rows = layer index, columns = module type, colour = `metric`.

    data: one AnalysisResult, or several (list / {label: result}): one panel each, on one colour
    scale (vmin/vmax, default the range over all panels) with one colour bar; panels are titled
    with their labels. Returns the Axes (one input) or the list of Axes. ax: an Axes, or one per
    input. annotate: values in the cells (default: at most 120 cells per panel). Missing cells are
    blank. viridis is perceptually uniform and colour-blind safe. The default title is none (the
    colour bar names the metric); `title` sets one.
    """
    al = as_aligned(data, labels)
    grids = [heatmap_data(res, metric, modules=modules, layers=layers) for res in al.results]
    import matplotlib

    if isinstance(cmap, str) and cmap not in matplotlib.colormaps:
        raise DeltaspecError(f"cmap={cmap!r} is not a matplotlib colormap (e.g. viridis, cividis, magma, RdBu)")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise DeltaspecError(f"vmin={vmin} must be below vmax={vmax}")
    own = ax is None
    if own:
        h = height or min(max(1.2, 0.2 * len(grids[0][1]) + 0.9), 8.0)
        fig, axes = new_axes(len(grids), size or ("single" if len(grids) == 1 else "double"), height=h)
    else:
        axes = list(np.atleast_1d(ax))
        if len(axes) != len(grids):
            raise DeltaspecError(f"{len(grids)} inputs need {len(grids)} axes, got {len(axes)}")
    every = np.concatenate([g.ravel() for g, _, _ in grids])
    finite = every[np.isfinite(every)]
    if finite.size:
        vmin = float(finite.min()) if vmin is None else vmin
        vmax = float(finite.max()) if vmax is None else vmax
    digits = decimals(every)
    for n, (a, (grid, idx, mods)) in enumerate(zip(axes, grids)):
        im = _draw(a, grid, idx, mods, cmap, vmin, vmax, annotate, digits)
        if n == 0:
            a.set_ylabel("layer")
        elif own and idx == grids[0][1]:
            a.tick_params(labelleft=False)  # the same rows as the first panel: its labels say it
        if len(grids) > 1:
            a.set_title(al.labels[n])
    if colorbar:
        cb = axes[0].figure.colorbar(im, ax=axes, fraction=0.05 if len(axes) == 1 else 0.03, pad=0.02)
        cb.set_label(metric_label(metric))
        cb.formatter.set_useOffset(False)  # nearly constant grids: no "1e-8+9.6e-1" offset label
        cb.update_ticks()
        cb.outline.set_linewidth(0.4)
    if title is not None:
        (axes[0].figure.suptitle if len(axes) > 1 else axes[0].set_title)(title)
    return axes[0] if len(axes) == 1 else axes
