"""Which reader a path needs, from the files alone (headers only, nothing is loaded).

  directory with adapter_config.json          → "multilora" if peft_type MULTILORA, else "peft"
  final_checkpoint.pt (or a dir holding it)    → "mtl-multilora"
  .safetensors file with `lora_down` keys      → "kohya"
  LyCORIS keys (hada_*, lokr_*, lora_mid, dora_scale, diff, oft_blocks, IA3 on_input, …) → "lycoris"
  diffusers LoRA (`unet.`/`text_encoder.`/`transformer.` + lora_A/B, `…to_q_lora.down.weight`, or
  a directory with pytorch_lora_weights.safetensors/.bin) → "diffusers"
  model directory or .safetensors/.bin file    → "full"

Paths are resolved first (`resolve`): a Hub id `org/name` (downloaded or from the cache, see `hub`),
a Hub cache folder `models--org--name` (its refs/main snapshot), a `*.index.json` or one shard of a
sharded model (the model directory), a folder whose only adapter is in a subfolder (PEFT saves
named adapters as `out/<name>/`). Only headers are read: no torch for safetensors files.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .files import hub
from .model.sdkeys import is_diffusers, is_lycoris
from .files.model_files import SHARD_RE, STEMS, model_files, pipeline_hint
from .files.tensors import SafetensorsFile, TorchFile, read_json
from .files.paths import check_path

FORMATS = ("full", "peft", "multilora", "mtl-multilora", "kohya", "lycoris", "diffusers")
_EXPECTED = ("expected a model directory or .safetensors/.bin file (full fine-tuning), a PEFT adapter directory "
             "with adapter_config.json, a deltaspec MultiLoRA adapter, an MTL-LoRA final_checkpoint.pt, a "
             "kohya or LyCORIS .safetensors file, or a diffusers LoRA file")
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
DIFFUSERS_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")


def is_multilora_config(cfg: dict) -> bool:
    return str(cfg.get("peft_type", "")).upper() == "MULTILORA" or cfg.get("deltaspec_format") == "multilora"


def locate(path, what: str = "") -> Path:
    """The local path a user's argument means: hub ids and cache folders resolved, index/shard/config
    files mapped to their model directory. `what` names the argument in errors (" (the --base model)")."""
    p = Path(path)
    check_path(p, what)
    if not p.exists():
        if hub.is_hub_id(path):
            return hub.download(str(path))
        from .files.paths import missing_message

        raise FormatError(missing_message(path, what))
    p = hub.cache_snapshot(p) or p
    if p.is_file() and (p.name.endswith(".index.json") or (SHARD_RE.match(p.name) and any(
            (p.parent / f"{stem}{suf}.index.json").is_file() for stem in STEMS for suf in (".safetensors", ".bin")))):
        return p.parent  # the whole sharded model, not one shard of it
    if p.is_file() and p.name == "config.json" and model_files(p.parent)[0]:
        return p.parent
    return p


def adapter_subdir(d: Path):
    """The one subfolder of `d` holding an adapter (PEFT's `out/<adapter_name>/`), None if `d` has its own
    checkpoint files or no such subfolder; several subfolders → FormatError listing what to pass."""
    if not d.is_dir() or (d / "adapter_config.json").is_file() or model_files(d)[0]:
        return None
    subs = sorted(s for s in d.iterdir() if s.is_dir() and (s / "adapter_config.json").is_file())
    if len(subs) > 1:
        raise FormatError(f"{d}: holds {len(subs)} adapters in subfolders ({', '.join(s.name for s in subs)}); "
                          f"pass one of them, e.g. {subs[0]}")
    return subs[0] if subs else None


def resolve(path) -> tuple[str, Path]:
    """(format, the path its reader should open): see `locate`; a file inside an adapter directory
    means the directory, a folder holding one named adapter means that adapter's subfolder."""
    p = locate(path)
    p = adapter_subdir(p) or p
    if p.is_file() and (p.name == "adapter_config.json" or p.name in _ADAPTER_FILES):
        if (p.parent / "adapter_config.json").is_file():
            p = p.parent
        else:
            raise FormatError(f"{p.parent}: adapter weights found but no adapter_config.json "
                              "(the PEFT config with r, lora_alpha and target modules is needed)")
    if p.is_dir():
        return _detect_dir(p), p
    return _detect_file(p), p


def detect(path) -> str:
    """One of FORMATS ("full", "peft", "kohya", "lycoris", "diffusers", …); FormatError otherwise."""
    return resolve(path)[0]


def _detect_dir(d: Path) -> str:
    cfg = d / "adapter_config.json"
    if cfg.is_file():
        return "multilora" if is_multilora_config(read_json(cfg, "adapter config (adapter_config.json)")) else "peft"
    if (d / "final_checkpoint.pt").is_file() or (d / "checkpoint" / "final_checkpoint.pt").is_file():
        return "mtl-multilora"
    if any((d / n).is_file() for n in _ADAPTER_FILES):
        raise FormatError(f"{d}: adapter weights found but no adapter_config.json "
                          "(the PEFT config with r, lora_alpha and target modules is needed)")
    if any((d / n).is_file() for n in DIFFUSERS_FILES):
        return "diffusers"
    files, _ = model_files(d)
    if files:
        if len(files) == 1 and files[0].stem not in STEMS:
            kind = _detect_file(files[0])
            if kind in ("kohya", "lycoris", "diffusers"):
                return kind
        return "full"
    if not any(d.iterdir()):
        raise FormatError(f"{d}: empty directory, no checkpoint files")
    if hint := pipeline_hint(d):
        raise FormatError(hint)
    raise FormatError(f"{d}: unknown checkpoint format ({_EXPECTED})")


def _detect_file(p: Path) -> str:
    if p.name == "final_checkpoint.pt":
        return "mtl-multilora"
    if p.suffix == ".safetensors":
        sf = SafetensorsFile(p)
        keys = sf.keys()
        if is_lycoris(keys):
            return "lycoris"
        if any(".lora_down" in k for k in keys):
            return "kohya"
        if is_diffusers(keys, sf.metadata):
            return "diffusers"
        if any(".lora_A." in k or k.endswith(".lora_A") or "lora_embedding_A" in k for k in keys):
            raise FormatError(f"{p}: adapter weights found but no adapter_config.json (the PEFT config with r, "
                              "lora_alpha and target modules is needed; a diffusers LoRA file would have "
                              "unet./text_encoder./transformer. prefixes or lora_adapter_metadata)")
        return "full"
    if p.suffix in (".bin", ".pt", ".pth"):
        keys = TorchFile(p).keys()
        if any(k.endswith(".lora_scaling") for k in keys):
            return "mtl-multilora"
        if is_lycoris(keys):
            return "lycoris"
        if is_diffusers(keys, {}):
            return "diffusers"
        if any(".lora_A." in k or k.endswith(".lora_A") for k in keys):
            raise FormatError(f"{p}: adapter weights found but no adapter_config.json "
                              "(the PEFT config with r, lora_alpha and target modules is needed)")
        return "full"
    raise FormatError(f"{p}: unknown checkpoint format ({_EXPECTED})")

