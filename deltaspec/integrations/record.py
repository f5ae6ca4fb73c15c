"""The trajectory file tracking writes: JSON Lines, one analysis per tracked step (pure JSON, no torch).

    {"deltaspec_trajectory": 1, "deltaspec_version": "...", "run": "<label>", ...}   # header line
    {"step": 50, "analysis": {<AnalysisResult.to_dict()>}}                        # one line per step
    ...

Lines are appended as training goes, so a crashed run keeps every step it tracked and writing costs
the same at step 10 000 as at step 10. `deltaspec plot trajectory` reads the file (or a run folder
holding it) as one run, one point per step; `analyze`/`compare`/`report` read it as its last step,
as they read a run folder as its final checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TRAJECTORY_FILE = "spectra_trajectory.jsonl"
_KEY = "deltaspec_trajectory"


def start(path, header: dict) -> None:
    """Create (or replace) the file with its header line."""
    from .. import __version__

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({_KEY: 1, "deltaspec_version": __version__, **header}) + "\n")


def append(path, step: int, analysis: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": int(step), "analysis": analysis}, allow_nan=False) + "\n")


def is_trajectory(path) -> bool:
    """A file whose first line is a deltaspec trajectory header (cheap: reads one line)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".jsonl", ".json"):
        return False
    try:
        with open(p) as f:
            first = f.readline()
        return _KEY in json.loads(first)
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return False


def in_folder(path) -> Path | None:
    """The trajectory file of a run folder (`deltaspec train --track-every`, a callback's output_dir)."""
    p = Path(path) / TRAJECTORY_FILE
    return p if p.is_file() else None


def read(path) -> tuple[dict, list]:
    """(header, [(step, AnalysisResult), …] by step). A truncated last line (a run killed while
    writing) is skipped; any other bad line is a FormatError."""
    from ..errors import FormatError
    from ..results import AnalysisResult

    with open(path) as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0])
        if _KEY not in header:
            raise ValueError("no trajectory header")
    except (IndexError, ValueError, TypeError) as e:
        raise FormatError(f"{path}: not a deltaspec trajectory file ({e})") from None
    points = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            points[int(d["step"])] = AnalysisResult.from_dict(d["analysis"])
        except (ValueError, KeyError, TypeError) as e:
            if i == len(lines):
                break
            raise FormatError(f"{path}: line {i}: not a tracked step ({type(e).__name__}: {e})") from None
    if not points:
        raise FormatError(f"{path}: a trajectory file with no tracked step yet")
    return header, sorted(points.items())


def last(path):
    """The AnalysisResult of the last tracked step (what `analyze`, `compare` and `report` read)."""
    return read(path)[1][-1][1]


def load_analysis(path):
    """A saved analysis (`analyze -o x.json`) or, for a trajectory file, its last tracked step: what
    `compare`, `report`, `plot` and `suggest-rank` read from a file."""
    from ..results import AnalysisResult

    return last(path) if is_trajectory(path) else AnalysisResult.from_json(path)
