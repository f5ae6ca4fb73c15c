"""Plots show inline in Jupyter, without pyplot.

Unless pyplot is already imported, deltaspec's figures are plain `matplotlib.figure.Figure`s that pyplot never sees, so scripts have no
global state to clean up and nothing pops up. Under a Jupyter kernel (an IPython shell with a
kernel), a figure a plot function made itself (`ax=None`) is queued and shown as a PNG when the
cell finishes, like pyplot's inline backend does — after any changes the cell made to the axes.
Figures drawn into the caller's own `ax=` are the caller's to show (pyplot shows its own), and so
are figures made while pyplot is imported: those are registered with pyplot (style.new_axes), which
shows them, so they are not queued here (no double display).
Anywhere else this module does nothing. `deltaspec.plots.inline(False)` turns it off.
"""
from __future__ import annotations

import sys

_pending: list = []  # figures made by deltaspec.plots in the running cell
_hooked: set = set()  # ids of the shells our post_execute hook is registered with
_enabled = True
DPI = 150  # notebook PNGs: sharp on high-density screens, shown at 100 dpi size


def inline(enabled: bool = True) -> None:
    """Show deltaspec's own figures inline in Jupyter (default) or not."""
    global _enabled
    _enabled = bool(enabled)


def kernel_shell():
    """The IPython shell when running under a Jupyter kernel, else None (IPython is never imported)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        shell = ipython.get_ipython()
    except Exception:  # a half-imported or stub IPython
        return None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def show_later(fig) -> None:
    """Queue `fig` to be shown when the current cell finishes (only under a Jupyter kernel)."""
    if not _enabled:
        return
    shell = kernel_shell()
    if shell is None:
        return
    if id(shell) not in _hooked:
        shell.events.register("post_run_cell", flush)
        _hooked.add(id(shell))
    if not any(f is fig for f in _pending):
        _pending.append(fig)


def flush(result=None) -> None:
    """Show the queued figures as PNG (IPython's post_run_cell hook), but not a figure that is the cell's
    own result and that IPython already showed as an image (pyplot's inline backend does, once imported)."""
    from IPython.display import Image, display

    from .save import render

    figs = list(_pending)
    _pending.clear()
    shown = getattr(result, "result", None)
    for fig in figs:
        if fig is shown and _has_png_formatter(fig):
            continue
        display(Image(data=render(fig, "png", DPI), format="png", width=int(round(fig.get_figwidth() * 100))))


def _has_png_formatter(fig) -> bool:
    shell = kernel_shell()
    try:
        return shell is not None and shell.display_formatter.formatters["image/png"].lookup(fig) is not None
    except KeyError:
        return False
