"""Saving figures for papers: vector PDF/SVG with embedded fonts, PNG at a chosen dpi, same bytes every run.

Determinism: the shipped style fixes `svg.hashsalt`; here the date stamps (PDF CreationDate, SVG
Date) and PNG's Software text are removed, so the same input gives the same file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

from .. import __version__
from ..errors import DeltaspecError
from .paperstyle import paper_style

FORMATS = ("pdf", "svg", "png")
METADATA = {
    "pdf": {"CreationDate": None, "Creator": f"deltaspec {__version__}"},
    "svg": {"Date": None, "Creator": f"deltaspec {__version__}"},
    "png": {"Software": None},
}


def figure_format(path, fmt: Optional[str] = None) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DeltaspecError(f"{path}: unsupported figure format '{fmt}'; use .pdf, .svg or .png")
    return fmt


def save(fig, path, *, dpi: int = 300, fmt: Optional[str] = None) -> Path:
    """Write `fig` (a Figure, or an Axes / list of Axes of one) to `path`; format from the extension.

    dpi applies to PNG (and to rasterised parts of vector files). Creates the parent folder.
    """
    fig = figure_of(fig)
    if not (isinstance(dpi, (int, float)) and dpi > 0):
        raise DeltaspecError(f"dpi must be a positive number, got {dpi!r}")
    fmt = figure_format(path, fmt)
    path = Path(path)
    os.makedirs(path.resolve().parent, exist_ok=True)
    data = render(fig, fmt, dpi)
    with open(path, "wb") as f:
        f.write(data)
    return path


def figure_of(obj):
    """The Figure of a Figure, an Axes, or a list / tuple / numpy array of Axes (plt.subplots' axes)."""
    if hasattr(obj, "savefig"):
        return obj
    if hasattr(obj, "flat"):  # numpy array of Axes
        obj = list(obj.flat)
    first = obj[0] if isinstance(obj, (list, tuple)) and obj else obj
    if not hasattr(getattr(first, "figure", None), "savefig"):
        raise DeltaspecError(f"fig= expects a matplotlib Figure, an Axes or a list of Axes, got {type(obj).__name__}")
    return first.figure


def render(fig, fmt: str = "png", dpi: int = 300) -> bytes:
    """The bytes `save` would write (also what notebooks display): deterministic, in the paper style."""
    buf = io.BytesIO()
    with paper_style():
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=METADATA[fmt])
    return buf.getvalue()
