"""User paths are untrusted: a symbolic link loop is a one-line error naming it.

`Path.exists()`/`is_file()` answer False for a loop (Python 3.11 swallows ELOOP), and `Path.resolve()`
raises RuntimeError on one; `os.stat` says which it is, so every user path is checked with it first.
"""
from __future__ import annotations

import errno
import os
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
