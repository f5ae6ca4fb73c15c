"""Writing what the trainer produced, in the layouts deltaspec (and PEFT) read.

- LoRA: PEFT's adapter layout (`adapter_config.json`, `adapter_model.safetensors` with keys
  `base_model.model.<module>.lora_A.weight` (r, d_in) / `.lora_B.weight` (d_out, r)).
- MultiLoRA: deltaspec's layout, docs/FORMATS.md (`lora_A` (n, r, d_in), `lora_B` (n, d_out, r),
  `lora_scaling` (n, d_out)).
- full / pretrain: a model directory like the base (`config.json`, `model.safetensors`); a local
  transformers base: its own `save_pretrained` layout plus the tokenizer (`HFCausalLM.save_full`).
Adapter names are the base's module names (for a transformers model, the HF ones, no wrapper prefix).
Every run also writes `train_info.json`: how it was made and how well it does.
"""
from __future__ import annotations

import hashlib
import json
import os

from safetensors.torch import save_file

from .hf import HFCausalLM, named
from .layers import LoRALinear, MultiLoRALinear, adapters
from .model import save_model


def _cpu(t):
    return t.detach().contiguous().cpu()


def save_lora(model, out: str, cfg, base_path: str, task_type: str | None = None) -> None:
    """task_type "CAUSAL_LM" for a transformers base: PEFT then loads it as PeftModelForCausalLM."""
    from ..io.write.peft import LoraFactors, write_lora_adapter

    layers = adapters(model)
    factors = []
    for name, m in layers.items():
        assert isinstance(m, LoRALinear)
        factors.append(LoraFactors(name, _cpu(m.lora_A), _cpu(m.lora_B), cfg.resolved_alpha()))
    write_lora_adapter(out, factors, target_modules=sorted({n.rsplit(".", 1)[-1] for n in layers}),
                       base_model=base_path, task_type=task_type, dropout=cfg.dropout)


def save_multilora(model, out: str, cfg, base_path: str) -> None:
    layers = adapters(model)
    tensors = {}
    for name, m in layers.items():
        assert isinstance(m, MultiLoRALinear)
        tensors[f"base_model.model.{name}.lora_A.weight"] = _cpu(m.lora_A)
        tensors[f"base_model.model.{name}.lora_B.weight"] = _cpu(m.lora_B)
        tensors[f"base_model.model.{name}.lora_scaling"] = _cpu(m.lora_scaling)
    config = {
        "peft_type": "MULTILORA", "deltaspec_format": "multilora", "format_version": 1, "n_heads": cfg.heads,
        "r": cfg.per_head_rank, "lora_alpha": cfg.resolved_alpha(), "scaling": "vector",
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}), "fan_in_fan_out": False,
        "lora_dropout": cfg.dropout, "base_model_name_or_path": base_path,
    }
    _write(out, config, tensors)


def _write(out: str, config: dict, tensors: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))


def save_run(model, cfg, info: dict, out: str | None = None) -> None:
    """Write the checkpoint for cfg.method into `out` (default cfg.out; a step checkpoint passes its
    own folder), then train_info.json. The model may still be on its training device."""
    out = out or cfg.out
    is_hf = isinstance(model, HFCausalLM)
    base = cfg.hf_model if is_hf else cfg.base  # as the user gave it (a relative path stays portable)
    if cfg.method in ("full", "pretrain") and is_hf:
        model.save_full(out)
    elif cfg.method in ("full", "pretrain"):
        save_model(model, out)
    elif cfg.method == "lora":
        save_lora(named(model), out, cfg, base, "CAUSAL_LM" if is_hf else None)
    else:
        save_multilora(named(model), out, cfg, base)
    with open(os.path.join(out, "train_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def file_sha256(*paths) -> str:
    """SHA-256 of the files' bytes in order: one file gives its sha256sum; a sharded model, one digest."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
