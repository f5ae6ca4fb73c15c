"""Which files make a model directory: transformers' and diffusers' single, sharded (+ index) and
legacy `.bin` weights, their precision variants, and diffusers pipeline folders (one subfolder per
component). Names only: nothing here reads a tensor.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ...errors import CorruptFileError, FormatError, reason as _reason


STEMS = ("model", "pytorch_model", "diffusion_pytorch_model")  # transformers, its legacy .bin, diffusers
SHARD_RE = re.compile(r"^(" + "|".join(STEMS) + r")-\d+-of-\d+\.(safetensors|bin)$")
_ADAPTER_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# variants saved next to the plain weights (`x.fp16.safetensors`, `x.fp16-00001-of-00002.safetensors`)
_VARIANT_RE = re.compile(r"\.(fp16|bf16|fp32|fp8|non_ema|ema)(?=[-.])")


def model_files(d: Path) -> tuple[list[Path], Optional[Path]]:
    """Weight files of a model directory (and its index json), safetensors preferred; [] if none.
    Variants (diffusers' `*.fp16.safetensors` next to the full-precision file) are used only when
    there is no plain file; never mixed."""
    for suf in (".safetensors", ".bin"):
        for stem in STEMS:
            index = d / f"{stem}{suf}.index.json"
            if index.is_file():
                return _index_shards(index), index
            if (d / f"{stem}{suf}").is_file():
                return [d / f"{stem}{suf}"], None
            shards = sorted(p for p in d.glob(f"{stem}-*-of-*{suf}") if SHARD_RE.match(p.name))
            if shards:
                return shards, None
    files = sorted(p for p in d.glob("*.safetensors") if p.name not in _ADAPTER_NAMES)
    plain = [p for p in files if not _VARIANT_RE.search(p.name)]
    if plain or not files:
        return plain, None
    variants = sorted({_VARIANT_RE.search(p.name)[1] for p in files})
    if len(variants) > 1:
        raise FormatError(f"{d}: holds the weights only in variants {', '.join(variants)}; pass one file, "
                          f"e.g. {files[0]}")
    return files, None


def _index_shards(index: Path) -> list[Path]:
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("weight_map values must be shard file names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptFileError(f"{index}: not a readable checkpoint index ({_reason(e)}); expected "
                               '{"weight_map": {tensor: shard file}}') from None
    shards = [index.parent / n for n in names]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise FormatError(f"{index}: lists shard {missing[0]} which does not exist"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return shards


def pipeline_hint(d: Path) -> Optional[str]:
    """The error for a diffusers pipeline folder (model_index.json, weights per component subfolder)."""
    if not (d / "model_index.json").is_file():
        return None
    comps = sorted(s.name for s in d.iterdir() if s.is_dir() and model_files(s)[0])
    eg = comps[0] if comps else "unet"
    return (f"{d}: a diffusers pipeline folder (model_index.json) whose weights are in component subfolders "
            f"({', '.join(comps) or 'none found'}); analyse one component: {d / eg} (with base=<base>/{eg})")


