"""Shared CLI pieces: error handling, option parsing helpers."""
from __future__ import annotations

import ast
import errno
import functools
import os
import re
import sys
import warnings

import click

from deltaspec.errors import DeltaspecError, DeltaspecWarning


# The library's messages name Python arguments (`base=PATH`, `modules=['kproj']`); on the command line
# the same words are flags. Python argument -> CLI option (None: a flag without a value).
CLI_FLAGS = {"base": "--base", "device": "--device", "dtype": "--dtype", "lora_alpha": "--lora-alpha",
             "n_ref": "--n-ref", "energy_k": "--energy-k", "svd_top_k": "--svd-top-k", "modules": "--modules",
             "layers": "--layers", "labels": "--labels", "metrics": "--metrics", "include_embeddings": "--include-embeddings",
             "initial": "--initial", "cmap": "--cmap", "vmin": "--vmin", "vmax": "--vmax", "top": "--top",
             "bins": "--bins", "dpi": "--dpi", "zero_tol": "--zero-tol", "every": "--track-every",
             # Python arguments without a flag: the words that say the same on the command line
             "vectors": "singular vectors (give checkpoints, not saved analyses)"}
_PY_ARG = re.compile(r"(?<![\w./-])(" + "|".join(CLI_FLAGS) + r")=(\[[^\]]*\]|\([^)]*\)|'[^']*'|[^\s,;:)]*)")


def cli_words(message: str) -> str:
    """The one translation of library messages (which name Python arguments) for the command line, applied
    to everything the CLI prints or writes (errors, warnings, notes, tables, JSON, reports):
    `pass base=PATH` → `pass --base PATH`, `modules=['kproj']` → `--modules kproj`, `x=True` → the flag."""
    def sub(m):
        flag, value = CLI_FLAGS[m.group(1)], m.group(2)
        if value[:1] in "[('":
            try:
                v = ast.literal_eval(value)
                value = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            except (ValueError, SyntaxError):
                pass
        return flag if value in ("", "True") else f"{flag} {value}"

    return _PY_ARG.sub(sub, message)


class PathError(click.ClickException):
    """A path argument that cannot be used (a symlink loop): `error: <path>: …`, exit 2."""
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class UserPath(click.Path):
    """click.Path that first refuses symbolic link loops and unreadable paths with one `error:` line
    naming the path and the flag (UserPath(exists=True) would call a loop "does not exist")."""

    def convert(self, value, param, ctx):
        from deltaspec.io.files.paths import path_problem

        problem = path_problem(value) if isinstance(value, (str, os.PathLike)) else None
        if problem is not None:
            opts = sorted(getattr(param, "opts", None) or [], key=len)
            flag = f" ({opts[-1]})" if opts and opts[-1].startswith("-") else ""
            raise PathError(f"{value}: {problem}{flag}")
        return super().convert(value, param, ctx)


class SuggestingGroup(click.Group):
    """A click group that answers a mistyped command with the closest name (`anlyze` → did you mean analyze?)."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        names = self.list_commands(ctx)
        if name and not name.startswith("-") and name not in names:
            from deltaspec.errors import did_you_mean

            hint = did_you_mean(name, names)
            if hint:
                ctx.fail(f"No such command '{name}'{hint}; commands: {', '.join(names)}")
        return super().resolve_command(ctx, args)


def user_errors(fn):
    """Turn a DeltaspecError (a user mistake) into one line on stderr and exit code 2; no traceback.
    Python argument names in the message become the matching options (`cli_words`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():  # the commands print Updates.warnings themselves
                warnings.simplefilter("ignore", DeltaspecWarning)
                return fn(*args, **kwargs)
        except DeltaspecError as e:
            from .output import echo_err

            echo_err(f"error: {cli_words(str(e))}")
            sys.exit(2)
        except BrokenPipeError:  # `deltaspec … | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as e:  # reading errors are DeltaspecErrors already: this is writing a result
            from .output import echo_err

            where = f"{e.filename}: " if e.filename else ""
            if e.errno == errno.ELOOP:
                echo_err(f"error: {where}a symbolic link loop (too many levels of symbolic links)")
                sys.exit(2)
            echo_err(f"error: {where}cannot write it ({e.strerror or e})")
            sys.exit(2)

    return wrapper


def check_paths(paths, hub: bool = True, what: str = "", keep=()) -> None:
    """Before any work (and before torch is imported): every given path exists, else one line
    `X: no such file or directory (did you mean Y?)`. hub=True lets a Hugging Face Hub id through
    (`org/name`); a path that looks local (`./x`, `a/b` with `a/` here) never counts as one."""
    from deltaspec.errors import FormatError
    from deltaspec.io.files.hub import is_hub_id
    from deltaspec.io.files.paths import missing_message

    for p in paths:
        if p is not None and p not in keep and not os.path.exists(os.path.expanduser(str(p))) and not (hub and is_hub_id(p)):
            raise FormatError(missing_message(p, what))


def paths_exist(hub: bool = False, what: str = "", keep=()):
    """A click callback running `check_paths` while the command line is parsed, so a missing path is
    one line `error: X: no such file or directory (did you mean Y?)` and exit 2 before the command
    runs (and before torch is imported)."""
    def callback(ctx, param, value):
        try:
            check_paths(value if isinstance(value, (tuple, list)) else [value], hub, what, keep)
        except DeltaspecError as e:
            from .output import echo_err

            echo_err(f"error: {e}")
            ctx.exit(2)
        return value

    return callback


def parse_list(value: str | None) -> list[str] | None:
    """'k_proj,v_proj' -> ['k_proj', 'v_proj']; None or '' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_layers(value: str | None) -> list[int] | None:
    """'0-3,8' -> [0, 1, 2, 3, 8]; None -> None (all layers)."""
    from deltaspec.selection import layer_spec

    if not value:
        return None
    try:
        return layer_spec(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--layers") from None
