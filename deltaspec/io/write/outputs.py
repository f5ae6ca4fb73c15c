"""Where outputs may go: never into an input checkpoint, and only where a file can be written.

Checked before any work, so a bad `-o` is a one-line error at once, not a traceback after the analysis.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

from ...errors import DeltaspecError, reason
from ..files.model_files import SHARD_RE, STEMS

_MARKERS = ("adapter_config.json", "config.json", "model_index.json", "train_info.json")
_MEMBERS = ("adapter_model.safetensors", "adapter_model.bin", "pytorch_lora_weights.safetensors",
            "pytorch_lora_weights.bin", "final_checkpoint.pt")


def checkpoint_root(path) -> Path:
    """The folder a checkpoint file belongs to (`run/adapter_model.safetensors` → `run/`: writing
    `run/adapter_config.json` would damage the checkpoint), else the path itself (a lone kohya file)."""
    p = Path(path).resolve()
    if p.is_file() and (p.name in _MEMBERS or p.name in _MARKERS or p.name.endswith(".index.json")
                        or SHARD_RE.match(p.name) or p.name.split(".")[0] in STEMS
                        or any((p.parent / m).is_file() for m in _MARKERS)):
        return p.parent
    return p


def refuse_inputs(out: str, inputs: Iterable, what: str = "-o") -> Path:
    """The resolved `out`, after refusing an empty one and one that is, or lies inside, an input."""
    if not str(out).strip():
        raise DeltaspecError(f"{what} '': an empty path; give a file or folder name")
    target = Path(out).resolve()
    for p in inputs:
        if not p:
            continue
        src, root = Path(p).resolve(), checkpoint_root(p)
        if target == src:
            raise DeltaspecError(f"{out}: refusing to overwrite the input {p}; choose another output path")
        if target == root or (root.is_dir() and root in target.parents):
            raise DeltaspecError(f"{out}: refusing to write inside the input checkpoint {root} (deltaspec never "
                                 "writes into its input paths); choose an output path outside it")
    return target


def check_writable(target: Path, out: str) -> None:
    """`target` (a file or folder to be created or replaced) can be written: its first existing ancestor
    is a folder we may create files in. Creates nothing that stays."""
    if target.exists():
        return
    folder = next(a for a in target.parents if a.exists())
    if not folder.is_dir():
        raise DeltaspecError(f"{out}: cannot create it: {folder} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()  # a probe without a name (O_TMPFILE where available)
    except OSError as e:
        raise DeltaspecError(f"{out}: cannot write in {folder} ({reason(e)})") from None
