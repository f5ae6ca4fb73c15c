"""The updates of a model *while it trains*: named `LayerUpdate`s read from its live modules, no file.

Adapter layers found (each in the orientation the checkpoint reader uses, so the numbers equal
`deltaspec analyze` on a checkpoint saved at the same step):
- PEFT LoRA (`peft.tuners.lora.LoraLayer`: Linear, GPT-2 Conv1D via fan_in_fan_out, Embedding, Conv):
  ΔW = s·B A with PEFT's own `scaling[adapter]` (α/r, α/√r for rsLoRA, rank/alpha patterns applied);
  several active adapters on one layer are summed, as PEFT's forward does;
- PEFT DoRA: ΔW = m·V/‖V‖_row − W0, V = W0 + s·B A, with W0 the layer's base weight (dense);
- deltaspec's own LoRALinear / MultiLoRALinear (deltaspec.train.layers): the layer's factors.
Full fine-tuning (`FullSnapshot`): ΔW = W − W0 against a copy of W0 taken before training, kept
only for the selected modules and refused beyond a memory budget.

Every loader detaches the live tensors and leaves them on the model's device; nothing is copied
until the SVD upcasts to its compute dtype.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import DeltaspecError
from ..updates import Dense, LayerUpdate, LowRank, SumOfLowRank, module_type

DEFAULT_MAX_COPY_BYTES = 1 << 30  # full fine-tuning: at most 1 GiB of initial weights kept
_WRAPPERS = ("module.", "_orig_mod.", "_forward_module.")  # DDP, torch.compile, Lightning/Fabric wrappers


def clean_name(name: str) -> str:
    """The module name a saved checkpoint uses: without PEFT's `base_model.model.` (and anything
    before it, e.g. a Lightning module's attribute) and without DDP / compile wrapper prefixes."""
    key = "base_model.model."
    if key in name:
        name = name[name.rindex(key) + len(key):]
    changed = True
    while changed:
        changed = False
        for w in _WRAPPERS:
            if name.startswith(w):
                name, changed = name[len(w):], True
    return name


def unsupported_sharding(model: nn.Module) -> Optional[str]:
    """Why the local parameters are not whole weights (FSDP, DeepSpeed ZeRO-3), else None."""
    for m in model.modules():
        if type(m).__name__ == "FullyShardedDataParallel":
            return "FSDP shards the weights across ranks"
    for p in model.parameters():
        if hasattr(p, "ds_id") or type(p).__name__ == "DTensor":
            return "the weights are sharded across ranks (DeepSpeed ZeRO-3 or FSDP2)"
    return None


def _peft_lora_layer():
    if "peft" not in sys.modules:  # a model cannot hold PEFT layers unless peft was imported
        return None
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def _active(m) -> list[str]:
    names = getattr(m, "active_adapters", None) or list(getattr(m, "scaling", {}))
    if isinstance(names, str):
        names = [names]
    return [a for a in names if a in m.lora_A or a in m.lora_embedding_A]


def _peft_factors(m, a: str):
    """(B, A, transposed) of adapter `a` of a PEFT LoRA layer, flattened to matrices, detached."""
    if a in m.lora_embedding_A:  # embedding: stored (r, vocab) / (dim, r); the weight is (vocab, dim)
        return m.lora_embedding_B[a].detach(), m.lora_embedding_A[a].detach(), True
    A = m.lora_A[a].weight.detach().flatten(1)
    B = m.lora_B[a].weight.detach().flatten(1)
    return B, A, bool(getattr(m, "fan_in_fan_out", False)) and m.lora_A[a].weight.dim() == 2


def _peft_update(m, adapters: list[str]):
    """Loader of one PEFT layer's ΔW (all active adapters; DoRA needs exactly one)."""
    dora = [a for a in adapters if a in m.lora_magnitude_vector]
    if dora:
        if len(adapters) > 1:
            raise DeltaspecError(f"{len(adapters)} active adapters on a DoRA layer: activate one to track it")
        return lambda: _dora(m, adapters[0])

    def load():
        terms = []
        for a in adapters:
            B, A, transposed = _peft_factors(m, a)
            terms.append((float(m.scaling[a]), A.T, B.T) if transposed else (float(m.scaling[a]), B, A))
        return LowRank(terms[0][1], terms[0][2], terms[0][0]) if len(terms) == 1 else SumOfLowRank(terms)

    return load


@torch.no_grad()
def _dora(m, a: str) -> Dense:
    """As the PEFT reader forms it: float64 V = W0 + s·B A, ΔW = m·V/‖V‖_row − W0, returned float32."""
    from ..io.algebra.merge_math import dora

    B, A, transposed = _peft_factors(m, a)
    W0 = m.get_base_layer().weight.detach().double()
    W0m = W0.T if transposed else W0.reshape(W0.shape[0], -1)
    dW = float(m.scaling[a]) * (B.double() @ A.double())
    mag = m.lora_magnitude_vector[a].weight.detach().double().reshape(-1, 1)
    delta = dora(W0m, dW, mag)
    return Dense((delta.T if transposed else delta).contiguous().float())


def _shape_of(load) -> tuple:
    """(shape, rank bound, kind) of a loader's update without forming a dense matrix for factored forms."""
    u = load()
    return tuple(u.shape), u.rank_bound, "dense" if isinstance(u, Dense) else "lowrank"


def adapter_layers(model: nn.Module) -> list[LayerUpdate]:
    """Every adapter layer of `model`, in model order, as LayerUpdates reading the live tensors."""
    from ..train.layers import LoRALinear, MultiLoRALinear

    lora_cls = _peft_lora_layer()
    out = []
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            load, variant = (lambda m=m: LowRank(m.lora_B.detach(), m.lora_A.detach(), m.scaling)), "lora"
        elif isinstance(m, MultiLoRALinear):
            load, variant = (lambda m=m: LowRank(*_detached(m.factors()), 1.0)), "multilora"
        elif lora_cls is not None and isinstance(m, lora_cls):
            active = _active(m)
            if not active:
                continue
            load = _peft_update(m, active)
            variant = "dora" if any(a in m.lora_magnitude_vector for a in active) else "lora"
        else:
            continue
        shape, rank, kind = _shape_of(load)
        out.append(LayerUpdate(clean_name(name), shape, kind, rank, load, "live model", "float32", {"variant": variant}))
    return out


@torch.no_grad()
def _detached(factors):
    L, R = factors
    return L.detach(), R.detach()


class FullSnapshot:
    """Full fine-tuning: W0 of the selected weight matrices, copied once (same device and dtype as
    the weight), so ΔW = W − W0 can be formed at any step. Refuses to copy more than `max_copy_bytes`."""

    def __init__(self, model: nn.Module, modules: Optional[Sequence[str]] = None, layers=None,
                 max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES, copy: bool = True):
        """copy=False checks the selection and the budget but copies nothing (ranks other than 0)."""
        from ..selection import select

        candidates = [(clean_name(n), m) for n, m in model.named_modules()
                      if n and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
                      and not isinstance(m, nn.Embedding) and type(m).__name__ != "LayerNorm"]
        if not candidates:
            raise DeltaspecError("full fine-tuning tracking: the model has no 2-D weight matrices (nn.Linear)")
        stubs = [LayerUpdate(n, tuple(m.weight.shape), "dense", min(m.weight.shape), None, "live model")
                 for n, m in candidates]
        chosen = {u.name for u in select(stubs, modules, layers, where="model")}
        self.weights = {n: m.weight for n, m in candidates if n in chosen}
        need = sum(w.numel() * w.element_size() for w in self.weights.values())
        if need > max_copy_bytes:
            raise DeltaspecError(
                f"full fine-tuning tracking keeps a copy of the initial weights: the {len(self.weights)} selected "
                f"modules need {_size(need)}, over max_copy_bytes={_size(max_copy_bytes)}; select fewer modules "
                "(modules=[...]) or raise max_copy_bytes")
        self.bytes = need
        with torch.no_grad():
            self.initial = {n: w.detach().clone() for n, w in self.weights.items()} if copy else {}

    def layers(self) -> list[LayerUpdate]:
        from ..io.files.tensors import compute_dtype

        def loader(n):
            def load():
                w, w0 = self.weights[n].detach(), self.initial[n].to(self.weights[n].device)
                dtype = torch.promote_types(compute_dtype(w.dtype), compute_dtype(w0.dtype))
                return Dense(w.to(dtype) - w0.to(dtype))
            return load

        return [LayerUpdate(n, tuple(w.shape), "dense", min(w.shape), loader(n), "live model", "float32",
                            {"variant": "full"}) for n, w in self.weights.items()]


def _size(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def module_types(layers: Sequence[LayerUpdate]) -> list[str]:
    return list(dict.fromkeys(module_type(u.name) for u in layers))
