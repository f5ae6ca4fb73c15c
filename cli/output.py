"""Writing reports: stdout or -o FILE, format from --format or the file extension; never into inputs."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from deltaspec.errors import DeltaspecError


def output_format(fmt: str | None, out: str | None) -> str:
    """--format wins; else .json/.csv from -o's extension; else the terminal table."""
    if fmt:
        return fmt
    ext = Path(out).suffix.lower() if out else ""
    return {".json": "json", ".csv": "csv", ".tex": "latex", ".md": "markdown"}.get(ext, "table")


def check_not_input(out: str | None, inputs) -> None:
    """Refuse -o targets that would overwrite a file of an input checkpoint (we never write to inputs)."""
    if not out:
        return
    target = Path(out).resolve()
    if not target.exists():
        return
    for p in inputs:
        if not p:
            continue
        src = Path(p).resolve()
        if target == src or (src.is_dir() and src in target.parents):
            raise DeltaspecError(f"{out}: refusing to overwrite a file of the input checkpoint {p}; choose another -o path")


def emit(text: str, out: str | None) -> None:
    """Print to stdout, or write to `out` (creating its folder) and say where on stderr."""
    if not out:
        click.echo(text.rstrip("\n"))
        return
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with open(out, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    click.echo(f"wrote {out}", err=True)


def table_width(out: str | None) -> int | None:
    """Width for terminal tables: $COLUMNS when set, else the terminal's width when stdout is one;
    None (as wide as the content) when writing to a file or a pipe."""
    if out:
        return None
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
