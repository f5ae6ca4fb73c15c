"""Provenance of report inputs: which files, how large, their SHA-256 (I/O only, no analysis)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def files_of(path, hash_files: bool = True) -> list[dict]:
    """{name, bytes, sha256} for a file, or for every regular (non-hidden) file directly in a directory."""
    p = Path(path)
    if p.is_file():
        paths = [p]
    elif p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
    else:
        return []
    return [{"name": q.name, "bytes": q.stat().st_size, "sha256": sha256(q) if hash_files else None} for q in paths]


def describe(label: str, path, fmt: Optional[str], base=None, hash_files: bool = True) -> dict:
    """What the report's provenance section shows for one input."""
    out = {"label": label, "path": str(path), "format": fmt, "files": files_of(path, hash_files)}
    if base:
        out["base"] = str(base)
        out["base_files"] = files_of(base, hash_files)
    return out
