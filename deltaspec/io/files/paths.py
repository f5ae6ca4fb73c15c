"""User paths: untrusted, and local unless they look like a Hub id.

Loops. A symbolic link loop is a one-line error naming it.

`Path.exists()`/`is_file()` answer False for a loop (Python 3.11 swallows ELOOP), and `Path.resolve()`
raises RuntimeError on one; `os.stat` says which it is, so every user path is checked with it first.

Local or Hub. Local paths vs Hugging Face Hub ids, and what to say when a local path does not exist.

A path that looks local is never sent to the Hub: it starts with `.`, `/` or `~`, or it has a `/`
and its first component exists here (`sample_checkpoints/lroa`: `sample_checkpoints/` is a folder
in the current directory, so this is a typo, not the model `sample_checkpoints/lroa` on the Hub).
A missing local path is "no such file or directory", with the closest existing sibling of the first
missing component suggested (difflib). Pure Python: no torch, nothing read but directory listings.
"""
from __future__ import annotations

import difflib
import errno
import os
from pathlib import Path
from typing import Optional

from ...errors import FormatError


def path_problem(path) -> Optional[str]:
    """Why `path` cannot be used (a symbolic link loop, a dangling link), or None: it exists, or it does not
    exist or is unreachable for an ordinary reason that the caller's own checks report."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "a dangling symbolic link (its target does not exist)" if os.path.islink(path) else None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (too many levels of symbolic links)"
    except ValueError as e:  # an embedded NUL byte
        return f"not a usable path ({e})"
    return None


def check_path(path, what: str = "") -> None:
    """FormatError `<path>: <problem><what>` when `path_problem` finds one."""
    problem = path_problem(path)
    if problem is not None:
        raise FormatError(f"{path}: {problem}{what}")


def looks_local(path) -> bool:
    """True for `./x`, `../x`, `/x`, `~/x`, and `a/b` whose first component `a` exists here."""
    s = str(path)
    if s.startswith((".", "/", "~")) or os.sep != "/" and s.startswith(os.sep):
        return True
    first = s.split("/", 1)[0]
    return "/" in s and bool(first) and os.path.exists(first)


def nearest(path) -> str | None:
    """The existing path closest to a missing one: the first missing component replaced by its most
    similar existing sibling (and the rest kept when that exists too, else cut); None if nothing is close."""
    p = Path(os.path.expanduser(str(path)))
    parts = p.parts
    for i in range(len(parts)):
        if not Path(*parts[: i + 1]).exists():
            break
    else:
        return None
    parent = Path(*parts[:i]) if i else Path(".")
    try:
        siblings = [c.name for c in parent.iterdir()]
    except OSError:
        return None
    close = difflib.get_close_matches(parts[i], siblings, n=1, cutoff=0.6)
    if not close:
        return None
    fixed = parent / close[0] if i else Path(close[0])
    whole = fixed.joinpath(*parts[i + 1:])
    return str(whole if whole.exists() else fixed)


def missing_message(path, what: str = "") -> str:
    """`X: no such file or directory (did you mean Y?)`; `what` names the argument (" (the --base model)")."""
    guess = nearest(path)
    hint = f" (did you mean {guess}?)" if guess and guess != str(path) else ""
    return f"{path}: no such file or directory{what}{hint}"
