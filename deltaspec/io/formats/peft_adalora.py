"""AdaLoRA after rank pruning (PEFT's update_and_allocate): `rank_pattern` in adapter_config.json holds,
per module, the boolean mask of the init_r ranks that were kept, and `save_pretrained` stores only the kept
ranks of lora_A / lora_E / lora_B. The scale stays α/(init_r + 1e-5) (PEFT keeps ranknum = init_r when it
resizes); a module pruned to 0 ranks has ΔW = 0.
"""
from __future__ import annotations

import math

from ...errors import FormatError
from ...updates import LayerUpdate, LowRank


def adalora_masks(cfg: dict, path, init_r) -> dict:
    """AdaLoRA's rank_pattern after pruning: {"<module>.lora_E": [bool] * init_r} → {module: ranks kept}."""
    raw = cfg.get("rank_pattern")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: rank_pattern: expected an object {{module: mask}}, got {type(raw).__name__}")
    out = {}
    for k, mask in raw.items():
        if not isinstance(mask, list) or not all(isinstance(b, bool) for b in mask) or \
                (init_r is not None and len(mask) != init_r):
            raise FormatError(f"{path}: rank_pattern[{k!r}]: expected a list of {init_r or 'init_r'} booleans (AdaLoRA's "
                              "pruning mask)")
        mod = k.rpartition(".lora_E")[0] if ".lora_E" in k else k
        out[mod] = sum(mask)
    return out


def pruned_layer(mod: str, parts: dict, ctx) -> LayerUpdate:
    """A layer AdaLoRA pruned to rank 0: ΔW = 0 (the shape from the empty factors)."""
    import torch

    f = ctx.f
    sa, sb = f.shape(parts["lora_A"]), f.shape(parts["lora_B"])
    shape = (sa[1], sb[0]) if ctx.fan_in_fan_out and len(sa) == 2 else (sb[0], math.prod(sa[1:]))
    ctx.pruned.append(mod)

    def load() -> LowRank:
        return LowRank(torch.zeros(shape[0], 1), torch.zeros(1, shape[1]), 1.0)

    return LayerUpdate(mod, shape, "lowrank", 0, load, f.path, f.dtype(parts["lora_A"]),
                       {"variant": "adalora", "r": 0, "pruned": True})
