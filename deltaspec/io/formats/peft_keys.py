"""PEFT adapter files: which tensor keys belong to which adapted module.

Keys are accepted with or without `base_model.model.`, with the adapter name left in
(`lora_A.default.weight`, raw `PeftModel.state_dict()` dumps) and behind the `module.` of DDP or the
`_orig_mod.` of torch.compile. LoRA on parameters (PEFT `target_parameters`, MoE experts) nests one
wrapper per parameter: `….experts.lora_A` is the outermost, `….experts.base_layer.lora_A` the next
one in, and so on; `depth` counts those `base_layer`s.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import FormatError
from ..model.names import Skipped, strip_wrappers
from ..files.tensors import TensorFile

PREFIX = "base_model.model."
_PARTS = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_scaling", "lora_diag", "lora_A", "lora_B",
          "lora_E")
_KEY_RE = re.compile(r"^(?P<mod>.+?)\.(?P<part>" + "|".join(_PARTS) + r")(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
_BASE_LAYER = ".base_layer"


def strip_prefix(key: str) -> str:
    key = strip_wrappers(key)
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def parse_keys(f: TensorFile, skipped: Skipped | None = None):
    """Group adapter keys by module: ({(module, depth): {part: key}}, {module: full-copy key}, other keys).
    Biases and base-layer copies go to `skipped` (with their reason) when it is given."""
    skipped = skipped if skipped is not None else Skipped()
    modules: dict[tuple[str, int], dict[str, str]] = {}
    copies: dict[str, str] = {}
    other: list[str] = []
    adapters: set[str] = set()
    biases: list[str] = []
    for key in f.keys():
        k = strip_prefix(key)
        m = _KEY_RE.match(k)
        if m and not k.endswith(".bias"):
            if m["adapter"] not in (None, "weight"):
                adapters.add(m["adapter"])
            mod, depth = m["mod"], 0
            while mod.endswith(_BASE_LAYER):
                mod, depth = mod[: -len(_BASE_LAYER)], depth + 1
            modules.setdefault((mod, depth), {})[m["part"]] = key
        elif k.endswith(".ranknum"):
            continue  # AdaLoRA bookkeeping (the rank is read from the factors)
        elif ".modules_to_save." in k:
            mod, _, rest = k.partition(".modules_to_save.")
            adapter, _, param = rest.partition(".")
            adapters.add(adapter)
            if param == "weight":
                copies[mod] = key
            else:
                skipped.add("modules_to_save parameters that are not weights (biases, norms)", k)
        elif k.endswith(".bias"):
            biases.append(k)
        elif ".base_layer." in k or ".original_module." in k:
            skipped.add("copies of base weights (base_layer / original_module), not updates", k)
        elif k.endswith(".weight"):
            copies[k[: -len(".weight")]] = key
        else:
            other.append(key)
    for k in biases:
        copy = k[: -len(".bias")] in copies
        skipped.add("biases of modules_to_save copies: not weight matrices" if copy else
                    "biases (lora_bias / bias='all'): not weight updates", k)
    for mod in [m for m in copies if (m, 0) in modules]:  # a base copy saved next to its own LoRA factors
        skipped.add("copies of base weights (base_layer / original_module), not updates", copies.pop(mod))
    if len(adapters) > 1:
        raise FormatError(f"{f.path}: holds several adapters ({', '.join(sorted(adapters))}); "
                          "save one adapter per directory")
    return modules, copies, other


def adapter_weights(d: Path) -> Path:
    for n in ("adapter_model.safetensors", "adapter_model.bin"):
        if (d / n).is_file():
            return d / n
    raise FormatError(f"{d}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin")
