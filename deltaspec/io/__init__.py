"""Checkpoint readers: a path in, named per-layer updates out, read lazily.

    from deltaspec.io import load, detect
    detect("adapter/")                        # "peft"
    updates = load("ft/", base="base/")       # Updates: LayerUpdate per layer, in model order
    updates[0].load().materialize()           # ΔW of the first layer, float32

Formats (DESIGN §2, docs/FORMATS.md): "full" (ft − base: matrices, conv kernels, MoE expert stacks,
FP8 block-scaled weights dequantized), "peft" (LoRA, rsLoRA, DoRA, AdaLoRA, embeddings, Conv2d, MoE
experts via target_parameters, modules_to_save; LoHa, LoKr, VeRA, IA3, OFT, BOFT), "multilora"
(deltaspec's layout), "mtl-multilora" (MTL-LoRA repo's .pt; needs lora_alpha), "kohya" (Stable
Diffusion lora_down/lora_up files), "lycoris" (LyCORIS algorithms), "diffusers" (diffusers LoRA
files). Paths may be Hub ids or Hub cache folders (`detect.locate`). Layer names are the base model's
module names (MoE experts: `….experts.3.gate_proj`); shapes are in the orientation of the base
model's stored weight ((out, in) for experts). Loaders read only their own tensors (memory-mapped),
upcast to float32 before any arithmetic, and raise NonFiniteError on NaN/Inf. Whatever a reader
skips is counted and named in `Updates.warnings`; config values are validated (`validate`). Nothing
here imports torch until a tensor is read, and nothing is ever written next to the inputs.

Layout, bottom to top; a module imports only from its own folder or a lower one (tested in
tests/test_import_graph.py, which also forbids import circles anywhere in the package):
  files/     file access: safetensors headers (st_header), lazy tensor reading and shards (tensors,
             model_files), Hub ids and caches (hub), FP8 dequantization and refusals (quant),
             checked JSON configs (validate), user paths: loops, local vs Hub, typos (paths)
  model/     model knowledge: layer names and embeddings (names), MoE expert layouts (experts),
             Stable Diffusion key patterns (sdkeys), finding a base weight for an SD name (basemap),
             the same MoE experts fused or per expert (relayout)
  algebra/   the merge math: multiplicative merges into W0 (merge_math: DoRA, IA3, OFT), LoHa/LoKr
             tensors → factored forms (hadakron)
  write/     writers and output checks: PEFT LoRA adapters (peft), kohya / diffusers LoRA files (sd),
             where outputs may go (outputs)
  formats/   one module per format family, each a `read_<format>(...) → Updates`: full, peft (+ its
             helpers peft_keys, peft_copies, peft_experts, peft_tokens, peft_tuners, peft_adalora),
             multilora, kohya, lycoris, diffusers, initial (PiSSA/OLoRA), initial_factors (a run's
             checkpoint-0), and unknown (the rule every reader shares: a tensor it does not understand
             beside the factors it reads stops the layer)
  detect.py  which format a path holds (FORMATS, from the files alone); this file: `load` dispatches.
A new format: add formats/<name>.py with its reader, its name to `detect.FORMATS` and its detection
rule to detect.py, and one branch to `load` below.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import DeltaspecWarning, FormatError
from ..updates import Updates
from .detect import DIFFUSERS_FILES, FORMATS, adapter_subdir, detect, locate, resolve

__all__ = ["load", "detect", "FORMATS"]


def load(path, base=None, format: str = "auto", lora_alpha=None, include_embeddings: bool = False,
         require_base: bool = True, initial=None) -> Updates:
    """The per-layer updates of the checkpoint at `path`.

    path, base: a directory, a file, a Hugging Face Hub id `org/name` or a Hub cache folder (see `resolve`).
    base: the base model; needed for "full", DoRA and modules_to_save.
    format: "auto" (see `detect`) or one of FORMATS.
    lora_alpha: α for formats that do not store it ("mtl-multilora"); ignored, with a warning, otherwise.
    include_embeddings: also return embedding / lm_head updates (skipped by default).
    require_base: False lists the layers of a checkpoint that needs --base without it (headers only,
    for `deltaspec info`); loading such a layer then raises MissingBaseError.
    A checkpoint with nothing to analyse (empty, names that miss the base's, only skipped tensors)
    raises FormatError saying which.
    initial: the adapter saved before training (`deltaspec train` writes RUN/checkpoint-0/). For
    PiSSA/OLoRA-style adapters saved without conversion: ΔW = s(BA − B0A0), exact relative to the
    original base (io/initial.py). For plain LoRA and MultiLoRA ΔW is unchanged and every layer gets
    its initial factors (`LayerUpdate.initial`): `analyze` then reports the init share, the learned
    part ΔW − ΔW_0 and the factor movement (io/initial_factors.py, deltaspec/init_split.py).
    """
    from .formats.full import read_full
    from .formats.kohya import read_kohya
    from .formats.multilora import read_mtl_multilora, read_multilora
    from .formats.peft import read_peft
    from .formats.peft_tuners import TUNERS, read_peft_tuner
    from .files.tensors import read_json

    if format in (None, "auto"):
        fmt, p = resolve(path)
    elif format in FORMATS:
        fmt, p = format, locate(path)
        if p.is_file() and format in ("peft", "multilora") and (p.parent / "adapter_config.json").is_file():
            p = p.parent
        if format in ("peft", "multilora"):
            p = adapter_subdir(p) or p
    else:
        raise FormatError(f"unknown checkpoint format {format!r}: expected one of auto, {', '.join(FORMATS)}")
    if base is not None:
        base = locate(base, " (base=, the base model)")
    if initial is not None and fmt == "full":
        raise FormatError(f"{path}: initial= applies to LoRA and MultiLoRA adapters; a full fine-tune's initial "
                          "weights are its base (pass base=)")
    if initial is not None and fmt not in ("peft", "multilora", "mtl-multilora"):
        raise FormatError(f"{path}: initial= applies to LoRA and MultiLoRA adapters, not to {fmt} checkpoints")
    if fmt == "full":
        u = read_full(p, base, include_embeddings, require_base)
    elif fmt == "peft":
        _need_config(p)
        cfg = read_json(p / "adapter_config.json", "adapter config (adapter_config.json)")
        if str(cfg.get("peft_type") or "LORA").upper() in TUNERS:
            if initial is not None:
                raise FormatError(f"{path}: initial= applies to LoRA adapters, not peft_type {cfg.get('peft_type')}")
            u = read_peft_tuner(p, cfg, base, include_embeddings)
        else:
            u = read_peft(p, base, include_embeddings, require_base)
            if initial is not None:
                u = _with_initial(u, p, initial, cfg, include_embeddings)
    elif fmt == "multilora":
        _need_config(p)
        u = read_multilora(p, base, include_embeddings)
    elif fmt == "mtl-multilora":
        u = read_mtl_multilora(p, base, include_embeddings, lora_alpha)
    elif fmt == "lycoris":
        from .formats.lycoris import read_lycoris

        u = read_lycoris(_single_file(p, "LyCORIS"), base, include_embeddings)
    elif fmt == "diffusers":
        from .formats.diffusers import read_diffusers

        u = read_diffusers(_single_file(p, "diffusers LoRA", DIFFUSERS_FILES), base, include_embeddings)
    else:
        u = read_kohya(_single_file(p, "kohya LoRA"), base, include_embeddings)
    if initial is not None and fmt in ("multilora", "mtl-multilora"):
        u = _initial_factors(u, p, initial, fmt, lambda q: (read_multilora(q, None, include_embeddings) if fmt ==
                             "multilora" else read_mtl_multilora(q, None, include_embeddings, lora_alpha)))
    u.path = str(path)
    if p.parent == Path(path) and p.name != Path(path).name and p.is_dir():
        u.warnings.insert(0, f"{path}: holds one adapter, in the subfolder {p.name}/ (a named PEFT adapter): read that")
    if lora_alpha is not None and fmt != "mtl-multilora":
        msg = f"lora_alpha={lora_alpha} ignored: {fmt} checkpoints store their own scale (α), which is used"
        u.warnings.append(msg)
        warnings.warn(f"{path}: {msg}", DeltaspecWarning, stacklevel=3)
    return u


def _single_file(p: Path, what: str, preferred=()) -> Path:
    """The one weights file a single-file format reads from a directory (preferred names first)."""
    if not p.is_dir():
        return p
    for n in preferred:
        if (p / n).is_file():
            return p / n
    from .files.model_files import model_files

    files, _ = model_files(p)
    if len(files) != 1:
        raise FormatError(f"{p}: expected one {what} .safetensors file, found {len(files)}")
    return files[0]


def _with_initial(u: Updates, p: Path, initial, cfg: dict, include_embeddings: bool) -> Updates:
    from .formats.initial import with_initial
    from .formats.peft import _BASE_MODIFYING_INITS, read_peft

    fmt, d = resolve(initial)
    if fmt != "peft":
        raise FormatError(f"{initial}: initial= must be a PEFT LoRA adapter directory (the adapter saved before "
                          f"training), found a {fmt} checkpoint")
    init = str(cfg.get("init_lora_weights", "")).lower()
    if init.startswith(_BASE_MODIFYING_INITS) or cfg.get("loftq_config"):
        return with_initial(u, read_peft(d, None, include_embeddings), initial, cfg)
    return _initial_factors(u, p, initial, "peft", lambda q: read_peft(q, None, include_embeddings))


def _initial_factors(u: Updates, p: Path, initial, fmt: str, read) -> Updates:
    """Plain LoRA / MultiLoRA: attach each layer's initial factors (io/initial_factors.py)."""
    from .formats.initial_factors import attach_initial, check_same_run

    got, d = resolve(initial)
    if got != fmt:
        raise FormatError(f"{initial}: initial= must be the {fmt} adapter saved before training (step 0), "
                          f"found a {got} checkpoint")
    check_same_run(p if p.is_dir() else p.parent, d if d.is_dir() else d.parent, initial)
    return attach_initial(u, read(d), initial)


def _need_config(d: Path) -> None:
    if not (d / "adapter_config.json").is_file():
        raise FormatError(f"{d}: adapter weights found but no adapter_config.json "
                          "(the PEFT config with r, lora_alpha and target modules is needed)"
                          if any((d / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin"))
                          else f"{d}: no adapter_config.json: not a PEFT adapter directory")
