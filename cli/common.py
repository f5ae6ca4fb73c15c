"""Shared CLI pieces: error handling, option parsing helpers."""
from __future__ import annotations

import functools
import sys

import click

from deltaspec.errors import DeltaspecError


def user_errors(fn):
    """Turn a DeltaspecError (a user mistake) into one line on stderr and exit code 2; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeltaspecError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def parse_list(value: str | None) -> list[str] | None:
    """'k_proj,v_proj' -> ['k_proj', 'v_proj']; None or '' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_layers(value: str | None) -> list[int] | None:
    """'0-3,8' -> [0, 1, 2, 3, 8]; None -> None (all layers)."""
    if not value:
        return None
    out: list[int] = []
    for part in value.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise click.BadParameter(f"expected layer indices like '0-3,8', got {value!r}", param_hint="--layers")
    return out
