"""The shipped paper style (`paper.mplstyle`): 8 pt DejaVu Sans, no LaTeX, Okabe–Ito colours, fonts
embedded in PDF, glyph paths in SVG, a fixed SVG hash salt. Its own module so that saving and notebook
display (save.py, notebook.py) need only this, not the plotting plumbing of style.py.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

STYLE_PATH = Path(__file__).with_name("paper.mplstyle")


def paper_style():
    """Context manager: `with paper_style(): ...` applies the shipped style to what is created inside."""
    return mpl.rc_context(fname=str(STYLE_PATH))


def use_paper_style() -> None:
    """Apply the shipped style globally (e.g. in a notebook)."""
    mpl.rc_file(str(STYLE_PATH))
