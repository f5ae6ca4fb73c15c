"""Adapter layers as tiny nn.Modules (minLoRA spirit): LoRA and MultiLoRA around a frozen nn.Linear.

LoRA (PEFT's convention):   h = W0 x + (α/r) B A x,            A Kaiming-uniform(a=√5), B = 0.
MultiLoRA (arXiv 2311.11501, as in the MTL-LoRA repo's baseline, DESIGN §2):
                            h = W0 x + (α/r) Σ_i s_i ⊙ (B_i A_i x),
    n heads of rank r each (total rank n·r), A_i and B_i Kaiming-uniform(a=√5), scalings s_i ∈ R^{d_out}
    zero-initialised: the model is unchanged at step 0 without forcing B to zero, which is what lets
    the update spread over more directions than LoRA's (the paper's point). docs/TRAINING.md says more.
Both report their exact ΔW (`delta_weight`) and can `merge()` into a plain nn.Linear.
"""
from __future__ import annotations

import math
import re
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))  # A: (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))  # B: (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) B A, shape (d_out, d_in)."""
        return self.scaling * self.lora_B @ self.lora_A

    def merge(self) -> nn.Linear:
        return _merged(self.base, self.delta_weight())


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, heads: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base, self.heads, self.r, self.alpha, self.scaling = base, heads, r, alpha, alpha / r
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        d_out, d_in = base.out_features, base.in_features
        self.lora_A = nn.Parameter(torch.empty(heads, r, d_in))  # A_i: (r, d_in)
        self.lora_B = nn.Parameter(torch.empty(heads, d_out, r))  # B_i: (d_out, r)
        self.lora_scaling = nn.Parameter(torch.zeros(heads, d_out))  # s_i: (d_out,)
        for i in range(heads):  # per head, so fan-in is that of one LoRA (as nn.Linear would use)
            nn.init.kaiming_uniform_(self.lora_A.data[i], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B.data[i], a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW = L @ R with L = (α/r)[diag(s_1)B_1 | … | diag(s_n)B_n] (d_out, n·r), R = [A_1; …; A_n] (n·r, d_in)."""
        n, d_out, r = self.lora_B.shape
        L = (self.lora_scaling[:, :, None] * self.lora_B).permute(1, 0, 2).reshape(d_out, n * r)
        return self.scaling * L, self.lora_A.reshape(n * r, -1)

    def forward(self, x):
        L, R = self.factors()  # two plain matmuls: much faster than per-head einsums, same function
        return self.base(x) + F.linear(F.linear(self.dropout(x), R), L)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) Σ_i diag(s_i) B_i A_i, shape (d_out, d_in)."""
        L, R = self.factors()
        return L @ R

    def merge(self) -> nn.Linear:
        return _merged(self.base, self.delta_weight())


def _merged(base: nn.Linear, delta: torch.Tensor) -> nn.Linear:
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, dtype=base.weight.dtype,
                    device=base.weight.device)
    with torch.no_grad():
        out.weight.copy_(base.weight + delta.to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
    return out


def matches(name: str, patterns: Iterable[str]) -> bool:
    """PEFT's rule: a pattern matches the module name's last components (`q_proj`, `self_attn.q_proj`)
    or, if it contains regex characters, the whole name."""
    for p in patterns:
        if re.fullmatch(rf"(.*\.)?{re.escape(p)}", name) or (set(p) & set("*[]()|^$+?") and re.fullmatch(p, name)):
            return True
    return False


def wrap(model: nn.Module, targets: Iterable[str], method: str, rank: int, alpha: float, heads: int = 1,
         dropout: float = 0.0) -> list[str]:
    """Replace every nn.Linear whose name matches `targets` with a LoRA / MultiLoRA layer; freeze the rest.

    `rank` is the TOTAL rank: MultiLoRA gives each of its `heads` heads rank // heads (equal total
    rank is how the paper compares methods). α is relative to the per-head rank, as in LoRA.
    Returns the wrapped module names.
    """
    if method not in ("lora", "multilora"):
        raise ValueError(f"method must be 'lora' or 'multilora', got {method!r}")
    if method == "multilora" and rank % heads:
        raise ValueError(f"--rank {rank} is not divisible by --heads {heads}")
    names = frozen_targets(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = (LoRALinear(base, rank, alpha, dropout) if method == "lora"
                 else MultiLoRALinear(base, heads, rank // heads, alpha, dropout))
        setattr(parent, child, layer.to(base.weight.device))
    return names


def frozen_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Freeze every parameter of `model`; return the names of the nn.Linear modules matching `targets`
    (ValueError, with a hint of what there is, when none does)."""
    targets = list(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in linear if matches(n, targets)]
    if not names:
        raise ValueError(f"no nn.Linear module matches the target patterns {targets}; {_linear_hint(model)}")
    unused = [t for t in targets if not any(matches(n, [t]) for n in linear)]
    if unused:  # a typo next to a good name would silently train fewer modules than asked
        raise ValueError(f"target pattern(s) {unused} match no nn.Linear module; {_linear_hint(model)}")
    return names


def _linear_hint(model: nn.Module, n: int = 4) -> str:
    """What --target-modules could name: a few nn.Linear module names (and why GPT-2-style layers are missing)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    hint = "the model has no nn.Linear module"
    if linear:
        hint = f"the model's nn.Linear modules include {', '.join(linear[:n])}"
        hint += f" ({len(linear)} in all)" if len(linear) > n else ""
    if any(type(m).__name__ == "Conv1D" for m in model.modules()):
        hint += "; its transformers Conv1D layers (GPT-2 style) are not nn.Linear and cannot be adapted"
    return hint


def adapters(model: nn.Module) -> dict[str, nn.Module]:
    """Module name → adapter layer, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, MultiLoRALinear))}


def merge_all(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W0 + ΔW), in place; returns the model."""
    for name, layer in list(adapters(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.merge())
    return model
