"""Hugging Face Hub ids and cache folders → a local checkpoint directory.

- `org/name` (or `org/name@revision`) that is not a local path: `huggingface_hub.snapshot_download`
  fetches the configs and weights (safetensors first; `.bin` only when a repo has no safetensors).
  With `HF_HUB_OFFLINE=1` only the local cache is used. huggingface_hub is an optional extra
  (`pip install 'deltaspec[hub]'`); without it a hub id is a one-line error saying so.
- a cache folder `…/models--org--name` resolves to the snapshot that `refs/main` names (pure
  Python, no huggingface_hub needed): the directory the files really are in.
Nothing here writes next to the user's inputs; downloads go to the Hub cache as usual.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ...errors import FormatError, reason

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(@[A-Za-z0-9_./-]+)?$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def is_hub_id(path) -> bool:
    """`org/name` or `org/name@rev`: two plain name parts; local-looking paths (./x, /x, ~, or `a/b`
    whose folder `a` exists here: a typo, see paths.looks_local) are not."""
    from .paths import looks_local

    s = str(path)
    return bool(_ID.match(s)) and not looks_local(s) and ".." not in s


def cache_root() -> Path:
    """The Hub cache directory, as huggingface_hub picks it (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/…)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def cache_snapshot(d: Path, revision: str = "main") -> Optional[Path]:
    """The snapshot directory of a `models--org--name` cache folder (None if `d` is not one)."""
    if not (d.is_dir() and d.name.startswith(("models--", "datasets--")) and (d / "snapshots").is_dir()):
        return None
    snaps = d / "snapshots"
    ref = d / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snaps / commit).is_dir():
            return snaps / commit
        raise FormatError(f"{d}: refs/{revision} names snapshot {commit}, which is not in {snaps} "
                          "(an incomplete download? fetch it again)")
    if (snaps / revision).is_dir():  # a commit hash given as the revision
        return snaps / revision
    found = sorted(p.name for p in snaps.iterdir() if p.is_dir())
    if len(found) == 1:
        return snaps / found[0]
    if not found:
        raise FormatError(f"{d}: a Hub cache folder with no snapshots (nothing downloaded yet)")
    raise FormatError(f"{d}: a Hub cache folder without refs/{revision} and with {len(found)} snapshots; "
                      f"pass one of them, e.g. {snaps / found[0]}")


def local_snapshot(repo_id: str) -> Optional[Path]:
    """The cached snapshot of `org/name[@rev]` if it is in the local cache, else None (never downloads)."""
    if not is_hub_id(repo_id):
        return None
    name, _, rev = repo_id.partition("@")
    d = cache_root() / ("models--" + name.replace("/", "--"))
    try:
        return cache_snapshot(d, rev or "main")
    except FormatError:
        return None


def download(repo_id: str) -> Path:
    """The local snapshot of a Hub model repo: downloaded (configs + weights) or, offline, from the cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FormatError(f"{repo_id}: no such local path (looked in {os.getcwd()}); to read it as a Hugging Face "
                          "Hub id install the hub extra "
                          "(pip install 'deltaspec[hub]'), or download it and pass the local directory") from None
    name, _, rev = repo_id.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    kw = dict(revision=rev or None, cache_dir=os.environ.get("HF_HUB_CACHE") or None, local_files_only=offline)
    try:
        d = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"], **kw))
        if not any(d.glob("*.safetensors")):
            d = Path(snapshot_download(name, allow_patterns=["*.json", *_WEIGHTS[1:]], **kw))
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, LocalEntryNotFoundError, network errors
        where = "in the local Hub cache (HF_HUB_OFFLINE is set)" if offline else "on the Hugging Face Hub"
        raise FormatError(f"{repo_id}: no such local path (looked in {os.getcwd()}) and not available {where} "
                          f"as a model id ({type(e).__name__}: {reason(e, 120)})") from None
    return d
