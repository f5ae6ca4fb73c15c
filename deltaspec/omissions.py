"""Expected omissions are notes, not warnings.

Every full fine-tune has norm scales and biases (1-D, not weight matrices) and embeddings (skipped
unless asked for); printing them as warnings on every command trains users to ignore warnings. The
readers word these omissions in a fixed way; `split` moves them from `warnings` to `notes`, which
the CLI prints as one quiet line per input (`summary`) and `deltaspec info` prints in full.
Warnings stay for what may surprise (tensors not understood, shapes that differ, …). Pure text.
"""
from __future__ import annotations

import re

# (what the readers write, its short form in the summary line)
EXPECTED = (
    (re.compile(r"(\d+) tensor\(s\) not analysed, 1-D \(norm scales, biases\)"), "{} 1-D tensor(s) (norm scales, biases)"),
    (re.compile(r"(\d+) tensor\(s\) not analysed, not floating point"), "{} integer/bool buffer(s)"),
    (re.compile(r"(\d+) embedding update\(s\) skipped"), "{} embedding update(s)"),
)
_HINT = re.compile(r"(pass \S+ to analyse them)")  # the note's own words (the CLI's after cli_words)


def _short(message: str):
    for pattern, short in EXPECTED:
        m = pattern.search(message)
        if m:
            hint = _HINT.search(message)
            return short.format(m.group(1)) + (f" ({hint.group(1)})" if hint else "")
    return None


def split(warnings) -> tuple[list[str], list[str]]:
    """(warnings, notes): the expected omissions moved out of `warnings`, order kept."""
    warn, notes = [], []
    for w in warnings:
        (notes if _short(w) else warn).append(w)
    return warn, notes


def summary(notes) -> str:
    """One line for all of an input's expected omissions ('' if none), e.g. 'not analysed, as
    expected: 9 1-D tensor(s) (norm scales, biases), 3 embedding update(s) (…)'."""
    parts = [s for s in (_short(n) for n in notes) if s]
    return f"not analysed, as expected: {', '.join(parts)}; `deltaspec info` names them" if parts else ""


def without_source(message: str, *sources) -> str:
    """`message` without a leading `source: ` (the input's path or label), for lines that name the input
    already: never `warning: ft: ft: …`."""
    for s in sources:
        if s and message.startswith(f"{s}: "):
            return message[len(str(s)) + 2:]
    return message
