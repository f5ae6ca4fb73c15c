"""Checkpoint readers: a path in, named per-layer updates out, read lazily.

    from deltaspec.io import load, detect
    detect("adapter/")                        # "peft"
    updates = load("ft/", base="base/")       # Updates: LayerUpdate per layer, in model order
    updates[0].load().materialize()           # ΔW of the first layer, float32

Formats (DESIGN §2): "full" (ft − base), "peft" (LoRA, rsLoRA, DoRA, AdaLoRA, embeddings, Conv2d,
modules_to_save), "multilora" (deltaspec's layout), "mtl-multilora" (MTL-LoRA repo's .pt; needs
lora_alpha), "kohya" (Stable Diffusion lora_down/lora_up files). Layer names are the base model's
module names; shapes are in the orientation of the base model's stored weight. Loaders read only
their own tensors (memory-mapped), upcast to float32 before any arithmetic, and raise
NonFiniteError on NaN/Inf. Nothing is ever written next to the inputs.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import DeltaspecWarning, FormatError
from ..updates import Updates
from .detect import FORMATS, detect, resolve

__all__ = ["load", "detect", "FORMATS"]


def load(path, base=None, format: str = "auto", lora_alpha=None, include_embeddings: bool = False) -> Updates:
    """The per-layer updates of the checkpoint at `path`.

    base: the base model (dir or file); needed for "full", DoRA and modules_to_save.
    format: "auto" (see `detect`) or one of FORMATS.
    lora_alpha: α for formats that do not store it ("mtl-multilora"); ignored, with a warning, otherwise.
    include_embeddings: also return embedding / lm_head updates (skipped by default).
    """
    from .full import read_full
    from .kohya import read_kohya
    from .multilora import read_mtl_multilora, read_multilora
    from .peft import read_peft

    if format in (None, "auto"):
        fmt, p = resolve(path)
    elif format in FORMATS:
        fmt, p = format, Path(path)
        if not p.exists():
            raise FormatError(f"{p}: no such file or directory")
        if p.is_file() and format in ("peft", "multilora") and (p.parent / "adapter_config.json").is_file():
            p = p.parent
    else:
        raise FormatError(f"unknown checkpoint format {format!r}: expected one of auto, {', '.join(FORMATS)}")
    if base is not None and not Path(base).exists():
        raise FormatError(f"{base}: no such file or directory (base=, the base model)")
    if fmt == "full":
        u = read_full(p, base, include_embeddings)
    elif fmt == "peft":
        _need_config(p)
        u = read_peft(p, base, include_embeddings)
    elif fmt == "multilora":
        _need_config(p)
        u = read_multilora(p, base, include_embeddings)
    elif fmt == "mtl-multilora":
        u = read_mtl_multilora(p, base, include_embeddings, lora_alpha)
    else:
        if p.is_dir():
            from .tensors import model_files

            files, _ = model_files(p)
            if len(files) != 1:
                raise FormatError(f"{p}: expected one kohya LoRA .safetensors file, found {len(files)}")
            p = files[0]
        u = read_kohya(p, base, include_embeddings)
    u.path = str(path)
    if lora_alpha is not None and fmt != "mtl-multilora":
        msg = f"lora_alpha={lora_alpha} ignored: {fmt} checkpoints store their own scale (α), which is used"
        u.warnings.append(msg)
        warnings.warn(f"{path}: {msg}", DeltaspecWarning, stacklevel=3)
    return u


def _need_config(d: Path) -> None:
    if not (d / "adapter_config.json").is_file():
        raise FormatError(f"{d}: adapter weights found but no adapter_config.json "
                          "(the PEFT config with r, lora_alpha and target modules is needed)"
                          if any((d / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin"))
                          else f"{d}: no adapter_config.json: not a PEFT adapter directory")
