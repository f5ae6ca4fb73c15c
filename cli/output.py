"""Writing reports: stdout or -o FILE, format from --format or the file extension; never into inputs.

`check_output` runs before any work: an -o that cannot be written, or that lies inside an input
path, is a one-line error at once instead of a traceback after the whole analysis.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from deltaspec.errors import DeltaspecError, reason

EXTENSIONS = {".json": "json", ".csv": "csv", ".txt": "table", "": "table", ".tex": "latex", ".md": "markdown"}


def output_format(fmt: str | None, out: str | None, allowed=("table", "json", "csv")) -> str:
    """--format wins; else from -o's extension (.json .csv .txt, and .tex .md where allowed); else the
    table. An unknown extension (x.xlsx) is refused: we will not write a text table into it."""
    if fmt:
        return fmt
    if not out:
        return "table"
    ext = Path(out).suffix.lower()
    if EXTENSIONS.get(ext) not in allowed:
        known = ", ".join(e for e, f in EXTENSIONS.items() if e and f in allowed)
        raise DeltaspecError(f"{out}: unknown report extension '{ext}'; use {known} (or none for a table), "
                             "or pass --format")
    return EXTENSIONS[ext]


def check_output(out: str | None, inputs) -> None:
    """Before any work: refuse an -o that is empty, inside (or equal to) an input path or the checkpoint
    folder of an input file, a folder, or a place that cannot be written. Creates nothing."""
    from deltaspec.io.write.outputs import check_writable, refuse_inputs

    if out is None:
        return
    target = refuse_inputs(out, inputs)
    if target.is_dir():
        raise DeltaspecError(f"{out}: is a directory; give a file name")
    if target.exists():
        try:
            open(target, "ab").close()  # neither truncates nor changes the file
        except OSError as e:
            raise DeltaspecError(f"{out}: cannot write this file ({reason(e)})") from None
        return
    check_writable(target, out)


def emit(text: str, out: str | None) -> None:
    """Print to stdout, or write to `out` (creating its folder) and say where on stderr."""
    if not out:
        click.echo(text.rstrip("\n"))
        return
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        with open(out, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as e:  # a full disk, /dev/full, a path that changed since check_output
        raise DeltaspecError(f"{out}: cannot write it ({reason(e)})") from None
    click.echo(f"wrote {out}", err=True)


def warn(messages) -> None:
    """Each warning as one `warning: …` line on stderr (in the CLI's words; wrapped only on a terminal)."""
    from .common import cli_words

    for w in messages:
        echo_err(f"warning: {cli_words(w)}")


def stderr_width() -> int | None:
    """Where `error:`/`warning:` lines wrap: at word boundaries at the terminal's width ($COLUMNS first)
    when stderr is a terminal; None (one line per message) otherwise, so logs, pipes and tools that
    parse one line per message see one."""
    from deltaspec.progress import terminal_columns

    return terminal_columns(sys.stderr) if sys.stderr.isatty() else None


def echo_err(message: str) -> None:
    """`message` on stderr, wrapped at word boundaries when stderr is a terminal (see stderr_width)."""
    from deltaspec.formatting import wrap

    for line in wrap(message, stderr_width()):
        click.echo(line, err=True)


def labelled(label, message: str, path=None) -> str:
    """`label: message`, without the input's own path when the message starts with it (the label names
    the input already: never `warning: ft: ft: …`)."""
    from deltaspec.omissions import without_source

    return message if label is None else f"{label}: {without_source(message, path, label)}"


def warn_results(pairs) -> None:
    """For each (label or None, result or Updates): one quiet `note:` line summing up its expected omissions
    (norms, embeddings: see deltaspec.omissions), then its warnings, labelled once."""
    from deltaspec.omissions import summary

    from .common import cli_words

    pairs = [(label, res, getattr(res, "path", None) or getattr(res, "source", {}).get("path"))
             for label, res in pairs]
    for label, res, path in pairs:
        if getattr(res, "notes", None):
            echo_err(f"note: {labelled(label, cli_words(summary(res.notes)), path)}")
    warn(labelled(label, w, path) for label, res, path in pairs for w in res.warnings)


def table_width(out: str | None) -> int | None:
    """Width for terminal tables: $COLUMNS when set, else the terminal's width when stdout is one;
    None (as wide as the content) when writing to a file or a pipe."""
    if out:
        return None
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
