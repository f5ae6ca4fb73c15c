"""One error family. Each message says what is wrong, where (the file), and how to fix it.

The library raises these; only the CLI turns them into a one-line message and a non-zero exit.
"""
from __future__ import annotations


def reason(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name if empty), for a one-line error;
    cut to `limit` characters when given (third-party messages can be very long)."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices` to a mistyped `word` (difflib), else ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class DeltaspecError(Exception):
    """Base class: a problem with the user's input, not a bug in deltaspec."""


class FormatError(DeltaspecError):
    """The path is not a checkpoint layout deltaspec knows, or its config is unusable."""


class MissingBaseError(DeltaspecError):
    """The update cannot be formed without the base weights (full FT, DoRA, modules_to_save)."""


class ShapeMismatchError(DeltaspecError):
    """Base and fine-tuned tensors (or adapter factors) do not fit together."""


class CorruptFileError(DeltaspecError):
    """A checkpoint file cannot be read: truncated, corrupt header, wrong container."""


class NonFiniteError(DeltaspecError):
    """A tensor holds NaN or Inf values."""


class DeltaspecWarning(UserWarning):
    """Something the user asked for was not done as asked (e.g. a lora_alpha the checkpoint overrides).
    Also kept in `Updates.warnings`; the CLI prints those itself as `warning: …` lines."""
