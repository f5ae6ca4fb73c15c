"""The one writer of PEFT LoRA adapters (used by `deltaspec resize` and by the trainer's `save_lora`).

Layout (PEFT's `save_pretrained`, verified by loading with `PeftModel.from_pretrained` in the tests):
  adapter_config.json         peft_type LORA, r, lora_alpha, target_modules, rank_pattern, alpha_pattern, …
  adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, d_in[, kh, kw])
                              base_model.model.<module>.lora_B.weight (d_out, r[, 1, 1])
                              embeddings: …<module>.lora_embedding_A (r, vocab), …lora_embedding_B (dim, r)
PEFT merges ΔW = (α/r)·B@A per module (transposed for fan_in_fan_out / embeddings). Per-layer ranks
and α go into rank_pattern/alpha_pattern with exact keys (`lora_config_fields`);
PEFT ≥ 0.15 is needed to read such keys (its pattern match is re.match(rf"(.*\\.)?({k})$", name)).

No torch at module level (deltaspec.io rule): tensors are only touched inside `write_lora_adapter`.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ...errors import DeltaspecError, ShapeMismatchError

PREFIX = "base_model.model."
FILES = ("adapter_config.json", "adapter_model.safetensors")
# transformers model types whose linear layers are GPT-2 `Conv1D`s, storing the weight as (d_in, d_out).
CONV1D_MODEL_TYPES = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")


def exact_key(name: str) -> str:
    """A PEFT rank_pattern/alpha_pattern key that matches exactly this module: PEFT ≥ 0.15 matches
    key k against a module name with re.match(rf"(.*\\.)?({k})$", name), so dots are escaped."""
    return re.escape(name)


def lora_config_fields(ranks: dict, alphas: dict, target_modules=None) -> dict:
    """r, lora_alpha, target_modules, rank_pattern, alpha_pattern for per-layer ranks and α.

    The global r is the most common rank (ties: the larger) and lora_alpha the most common α among
    the layers of that rank; only layers that differ get an exact pattern key. target_modules are the
    exact module names unless given.
    """
    if not ranks:
        raise DeltaspecError("no layers to write a LoRA config for")
    count = Counter(ranks.values())
    r = max(count, key=lambda k: (count[k], k))
    a_count = Counter(alphas[n] for n, k in ranks.items() if k == r)
    alpha = max(a_count, key=lambda a: (a_count[a], a))
    return {"r": int(r), "lora_alpha": float(alpha),
            "target_modules": list(target_modules) if target_modules is not None else list(ranks),
            "rank_pattern": {exact_key(n): int(k) for n, k in ranks.items() if k != r},
            "alpha_pattern": {exact_key(n): float(alphas[n]) for n in ranks if alphas[n] != alpha}}


@dataclass
class LoraFactors:
    """One adapted module: PEFT's lora_A (r, d_in[, kh, kw]) and lora_B (d_out, r[, 1, 1]), and α."""

    name: str  # the base model's module name (no base_model.model. prefix)
    A: object  # torch.Tensor
    B: object  # torch.Tensor
    alpha: float
    embedding: bool = False  # nn.Embedding: keys lora_embedding_A / lora_embedding_B

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


_CONV1D_NAMES = ("c_attn", "c_fc", "c_proj")  # GPT-2's Conv1D modules (also Linear in gpt_bigcode)


def conv1d_base(base, ckpt=None, names: Sequence[str] = ()) -> bool:
    """True when the model is GPT-2-style (Conv1D layers store W as (d_in, d_out), so a LoRA of them needs
    fan_in_fan_out), from the config.json of `base` or `ckpt` (a folder, or the folder of a file). Without
    any config, layer names GPT-2 and gpt_bigcode share (`c_attn`, …) are an error rather than a guess:
    the orientation decides whether the written adapter is ΔW or its transpose."""
    from ..files.validate import model_config

    for p in (base, ckpt):
        model_type = model_config(p)[0].get("model_type")
        if model_type:
            return str(model_type).lower() in CONV1D_MODEL_TYPES
    hits = [n for n in names if n.rsplit(".", 1)[-1] in _CONV1D_NAMES]
    if hits:
        raise DeltaspecError(f"{base}: no config.json says the model type, and layers such as '{hits[0]}' are "
                             "Conv1D (stored (in, out)) in GPT-2 but Linear elsewhere: pass base= as the model "
                             "folder with its config.json")
    return False


def check_out_dir(out, inputs: Sequence, force: bool = False) -> Path:
    """Refuse an output directory that is empty, is or lies inside an input (or an input file's checkpoint
    folder), cannot be created, or already holds files unless `force` (then only FILES are replaced)."""
    from .outputs import check_writable, refuse_inputs

    target = refuse_inputs(out, inputs)
    for p in inputs:
        if p and any((target / f) == Path(p).resolve() for f in FILES):
            raise DeltaspecError(f"{out}: refusing to write into the input {p}; choose another output directory")
    if target.exists() and not target.is_dir():
        raise DeltaspecError(f"{out}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DeltaspecError(f"{out}: directory is not empty; choose a new one, or pass --force to replace the "
                             "adapter files in it")
    check_writable(target, out)
    return target


def write_lora_adapter(out, layers: Sequence[LoraFactors], *, target_modules: Optional[Sequence[str]] = None,
                       base_model: Optional[str] = None, task_type: Optional[str] = None,
                       fan_in_fan_out: bool = False, dropout: float = 0.0, dtype=None) -> Path:
    """Write `layers` as a PEFT LoRA adapter directory `out` (created; existing FILES replaced).

    target_modules: default the exact module names (PEFT matches list entries exactly or as a
    dotted suffix); the trainer passes module types. dtype: storage dtype (default: as given).
    Returns the path of adapter_config.json.
    """
    from safetensors.torch import save_file

    if not layers:
        raise DeltaspecError(f"{out}: no layers to write")
    tensors, ranks, alphas = {}, {}, {}
    for f in layers:
        r = f.rank
        if r < 1 or f.B.shape[1] != r:
            raise ShapeMismatchError(f"{f.name}: lora_A {list(f.A.shape)} and lora_B {list(f.B.shape)} do not form a "
                                     "LoRA of rank ≥ 1 (A (r, d_in), B (d_out, r))")
        a, b = ("lora_embedding_A", "lora_embedding_B") if f.embedding else ("lora_A.weight", "lora_B.weight")
        for part, t in ((a, f.A), (b, f.B)):
            t = t.detach().to("cpu", dtype if dtype is not None else t.dtype).contiguous()
            tensors[f"{PREFIX}{f.name}.{part}"] = t
        ranks[f.name], alphas[f.name] = r, float(f.alpha)
    fields = lora_config_fields(ranks, alphas, target_modules)
    config = {
        "peft_type": "LORA", "task_type": task_type, "r": fields["r"], "lora_alpha": fields["lora_alpha"],
        "lora_dropout": dropout, "target_modules": fields["target_modules"], "bias": "none",
        "fan_in_fan_out": bool(fan_in_fan_out), "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": None, "rank_pattern": fields["rank_pattern"], "alpha_pattern": fields["alpha_pattern"],
        "inference_mode": True, "base_model_name_or_path": base_model,
    }
    os.makedirs(out, exist_ok=True)
    cfg_path = Path(out) / "adapter_config.json"
    with open(cfg_path, "w") as fh:
        json.dump(config, fh, indent=1)
    save_file(tensors, str(Path(out) / "adapter_model.safetensors"), metadata={"format": "pt"})
    return cfg_path
