"""Shared plotting plumbing: the shipped paper style, figure sizes, method colours, input handling.

- `paper_style()`: context manager applying `paper.mplstyle` (8 pt DejaVu Sans, no LaTeX, Okabe–Ito
  colours, TrueType fonts embedded in PDF, glyph paths in SVG, fixed SVG hash salt).
- Sizes: `SINGLE_COLUMN` = 3.3 in, `DOUBLE_COLUMN` = 6.9 in (two-column conference/journal layouts).
- `PALETTE`: Okabe & Ito (2008) colour-blind-safe colours; method i always gets `PALETTE[i]`.
- `as_aligned(data)`: every plot takes its data as an AnalysisResult, a list of them, a
  {label: AnalysisResult} mapping, or a `compare.Aligned`/`Comparison`; several inputs are aligned
  on their common layers first, so every method is drawn from the same layers.
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..compare import Aligned, Comparison, align
from ..errors import DeltaspecError
from ..results import AnalysisResult, LayerResult
from .notebook import show_later
from .paperstyle import paper_style

SINGLE_COLUMN = 3.3  # inches
DOUBLE_COLUMN = 6.9
# Okabe–Ito order chosen so the first three (blue, vermillion, bluish green) stay distinct in greyscale too.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
SIZES = {"single": SINGLE_COLUMN, "double": DOUBLE_COLUMN}


# Line styles go with the colours, so methods stay apart in greyscale (Okabe–Ito's vermillion and
# bluish green have nearly the same luminance).
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def linestyle(i: int):
    return LINESTYLES[i % len(LINESTYLES)]


def figsize(size: str | float = "single", panels: int = 1, height: Optional[float] = None) -> tuple[float, float]:
    """(width, height) in inches: `size` "single" (3.3 in), "double" (6.9 in) or a width in inches."""
    if isinstance(size, str) and size not in SIZES:
        raise DeltaspecError(f"size={size!r}: use 'single', 'double' or a width in inches")
    width = SIZES[size] if isinstance(size, str) else float(size)
    if not width > 0 or (height is not None and not height > 0):
        raise DeltaspecError(f"figure width and height must be positive, got size={size!r}, height={height!r}")
    if height is None:
        height = min(0.72 * width / panels, 2.4) if panels > 1 else 0.72 * width
    return width, height


MIN_PANEL_WIDTH = 2.0  # inches: narrower panels cannot fit their tick and axis labels in 8 pt text


def grid_shape(panels: int, width: float) -> tuple[int, int]:
    """(rows, columns) for `panels` panels in `width` inches: one row while each panel keeps at least
    MIN_PANEL_WIDTH, else a grid (4 panels in a double column: 2 × 2)."""
    cols = max(1, min(panels, int(width // MIN_PANEL_WIDTH)))
    if cols < panels:
        cols = math.ceil(panels / math.ceil(panels / cols))  # balanced rows (2 × 2, not 3 + 1)
    return math.ceil(panels / cols), cols


def new_axes(panels: int = 1, size: Optional[str | float] = None, height: Optional[float] = None):
    """A new Figure laid out by constrained layout (labels, titles and legends get the room they need)
    and its axes list, on a grid when one row would squeeze the panels.

    Registered with pyplot only when pyplot is already imported (then `plt.savefig`/`plt.show()` act
    on it, and pyplot shows it in notebooks); otherwise a plain Figure: no global state, nothing to close.
    """
    size = size or ("single" if panels == 1 else "double")
    width, h = figsize(size, panels, height)
    rows, cols = grid_shape(panels, width)
    if rows > 1 and height is None:
        h = rows * min(0.72 * width / cols, 2.4)
    plt = sys.modules.get("matplotlib.pyplot")
    fig = (plt.figure(figsize=(width, h), layout="constrained") if plt is not None
           else Figure(figsize=(width, h), layout="constrained"))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for extra in axes[panels:]:
        extra.remove()
    return fig, axes[:panels]


def panel_axes(ax, names: list, what: str, size=None, height=None):
    """(figure or None, one Axes per name): a new figure with one panel each when `ax` is None, else
    the caller's Axes (one, or a sequence of len(names)); ValueError when the count does not fit."""
    if ax is None:
        return new_axes(len(names), size, height)
    axes = list(np.atleast_1d(ax))
    if len(axes) != len(names):
        raise ValueError(f"{len(names)} {what} need {len(names)} axes, got {len(axes)}")
    return None, axes


def styled(fn):
    """Run a plot function under `paper_style()` when it creates its own figure (`ax` is None), and
    show that figure inline when running in Jupyter (see notebook.py).

    With an axes from the caller, the caller's style applies (only the method colours are fixed).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.get("ax") is not None:
            return fn(*args, **kwargs)
        with paper_style():
            out = fn(*args, **kwargs)
        first = out[0] if isinstance(out, (list, tuple)) else out
        if getattr(first.figure.canvas, "manager", None) is None:  # pyplot's figures: pyplot shows them
            show_later(first.figure)
        return out

    wrapper.__doc__ = (fn.__doc__ or "").rstrip() + FIGURE_NOTE
    return wrapper


FIGURE_NOTE = """

    The figure (`ax.figure`) is the handle: `dp.save(ax, "fig.pdf")` or `ax.figure.savefig(...)`. When
    matplotlib.pyplot is already imported the figure is also pyplot's current figure, so `plt.savefig`
    and `plt.show()` act on it (and pyplot shows it in notebooks); without pyplot it shows inline in
    Jupyter when the cell ends and touches no global state.
    """


def as_aligned(data, labels: Optional[Sequence[str]] = None) -> Aligned:
    """Normalise a plot's `data` argument to an `Aligned` (see the module docstring)."""
    if isinstance(data, Comparison):
        return data.aligned
    if isinstance(data, Aligned):
        return data
    if isinstance(data, AnalysisResult):
        return align([data], labels)
    if isinstance(data, Mapping):
        return align(list(data.values()), list(labels or data.keys()))
    if isinstance(data, Sequence) and data and all(isinstance(d, AnalysisResult) for d in data):
        return align(list(data), labels)
    raise TypeError("plot data must be an AnalysisResult, a list of them, a {label: AnalysisResult} mapping, "
                    f"or a compare.Aligned/Comparison; got {type(data).__name__}")


_METRIC_LABELS = {"frobenius_norm": "Frobenius norm", "spectral_norm": "spectral norm σ$_1$",
                  "spectral_entropy": "spectral entropy (nats)", "energy_entropy": "energy entropy (nats)"}


def metric_label(name: str) -> str:
    """A readable axis label for a metric name ('top4_energy' → 'top-4 energy share')."""
    if name in _METRIC_LABELS:
        return _METRIC_LABELS[name]
    if name.startswith("top") and name.endswith("_energy") and name[3:-7].isdigit():
        return f"top-{name[3:-7]} energy share"
    return name.replace("_", " ")


def pick(result: AnalysisResult, modules=None, layers=None) -> list[LayerResult]:
    """The layers of `result` whose module type (or trailing name part, see `updates.module_matches`) is in
    `modules` and layer index in `layers` (None: all)."""
    from ..layernames import module_matches

    if isinstance(modules, str):
        modules = [modules]
    return [r for r in result.layers if (not modules or any(module_matches(r.name, r.module, m) for m in modules))
            and (layers is None or r.layer in layers)]


def picked(al: Aligned, modules=None, layers=None) -> list[list[LayerResult]]:
    """`pick` for every method of an Aligned; raises when nothing matches."""
    out = [pick(res, modules, layers) for res in al.results]
    if not out[0]:
        what = f"modules {list(modules) if not isinstance(modules, str) else [modules]}" if modules else "all modules"
        raise DeltaspecError(f"no layers to plot for {what}"
                             + (f" and layers {list(layers)}" if layers is not None else "")
                             + f"; available modules: {', '.join(al.results[0].modules())}")
    return out


def legend(ax, **kw) -> None:
    """A compact legend without frame (handles with labels starting '_' are skipped by matplotlib)."""
    ax.legend(**{"loc": "best", "frameon": False, **kw})


def plain_log_ticks(axis) -> None:
    """Log-axis tick labels as plain numbers (1, 10, 100) instead of 10^k."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
