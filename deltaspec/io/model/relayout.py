"""The same weights under another layout: pair a fine-tune and a base saved by different library versions.

When a name is missing on one side, a known re-layout of the same weights is looked for before giving up.
Known today: MoE experts, fused 3-D (transformers 5: `….experts.gate_up_proj` (E, 2I, H) and
`….experts.down_proj`, orientation and gate/up layout from `experts.Layout`) against per-expert 2-D
weights (transformers 4, Qwen-MoE/DeepSeek style: `….experts.3.gate_proj.weight`, `up_proj`,
`down_proj`; Mixtral's `….block_sparse_moe.experts.3.w1/w3/w2.weight` for gate/up/down of
`….mlp.experts`). Each expert and projection pairs with its own matrix: ΔW is exactly what two files in
the same layout give, named as the per-expert file names it (`….experts.3.gate_proj`, Mixtral `….w1`). The architecture must be known (config.json
of either side); otherwise nothing is paired and the usual "not in the base" warnings stay.
"""
from __future__ import annotations

import re
from typing import Callable

from ...errors import ShapeMismatchError
from .experts import Layout, expert_matrix, expert_shape
from .names import strip_wrappers
from ..files.tensors import TensorStore, check_finite, compute_dtype

_STACK = re.compile(r"^(?P<mod>.+\.experts)\.(?P<param>gate_up_proj|gate_proj|up_proj|down_proj)$")
# per-expert naming schemes: (the experts module on disk from the stack's, projection names)
_SCHEMES = ((lambda mod: mod, {}),
            (lambda mod: mod.replace(".mlp.experts", ".block_sparse_moe.experts"),  # Mixtral (transformers 4)
             {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}))
_HALVES = {"gate_up_proj": (("gate_proj", 0), ("up_proj", 1))}


def expert_relayout(ft: TensorStore, b0: TensorStore, ft_keys: list[str], b_keys: list[str], layout: Layout):
    """[(layer name, (out, in), ft key, base key, load)] for unmatched keys that are the same experts in the
    other layout, in both directions; `load()` gives ΔW = W_ft − W0 (float32, float64 if stored so)."""
    if not layout.known:
        return []
    out = []
    for stacks, s_keys, per, p_keys, sign in ((ft, ft_keys, b0, b_keys, 1), (b0, b_keys, ft, ft_keys, -1)):
        names = {strip_wrappers(k): k for k in p_keys}
        for sk in s_keys:
            m = _STACK.match(strip_wrappers(sk))
            stored = tuple(stacks.shape(sk))
            if m is None or len(stored) != 3:
                continue
            parts = [(e, proj, half) for e in range(stored[0])
                     for proj, half in _HALVES.get(m["param"], ((m["param"], None),))]
            keys = next((ks for ks in ([names.get(f"{where(m['mod'])}.{e}.{alias.get(proj, proj)}.weight")
                                        for e, proj, _ in parts] for where, alias in _SCHEMES) if None not in ks), None)
            if keys is None:
                continue  # not the same experts: left to the unmatched warnings
            for (e, proj, half), pk in zip(parts, keys):
                shape = expert_shape(stored, half, layout)
                if tuple(per.shape(pk)) != shape:
                    raise ShapeMismatchError(f"{stacks.source(sk)}: expert {e} of '{sk}' is {list(shape)} as "
                                             f"{proj} (out, in), but {per.source(pk)} has '{pk}' "
                                             f"{list(per.shape(pk))}; is the base the model this was fine-tuned from?")
                load = _loader(stacks, sk, e, half, per, pk, layout, sign)
                ftk, bk = (sk, pk) if sign > 0 else (pk, sk)
                out.append((strip_wrappers(pk).removesuffix(".weight"), shape, ftk, bk, load))
    return out


_RENAMES = ((".block_sparse_moe.gate.weight", ".mlp.gate.weight"),)  # Mixtral's router, transformers 4 ↔ 5


def renamed_pairs(ft_keys: list[str], b_keys: list[str]) -> list[tuple[str, str, str]]:
    """(name, ft key, base key) for unmatched keys that are one tensor renamed between library versions;
    the name is the transformers-4 one, as for the experts."""
    b_names = {strip_wrappers(k): k for k in b_keys}
    out = []
    for k in ft_keys:
        n = strip_wrappers(k)
        for old, new in _RENAMES:
            for mine, other in ((old, new), (new, old)):
                if n.endswith(mine) and (bk := b_names.get(n[: -len(mine)] + other)) is not None:
                    out.append((n if mine == old else n[: -len(mine)] + old, k, bk))
    return out


def _loader(stacks, sk, e, half, per, pk, layout, sign) -> Callable:
    def load():
        import torch

        s, p = stacks.raw(sk, e), per.raw(pk)
        dtype = torch.promote_types(compute_dtype(s.dtype), compute_dtype(p.dtype))
        a = check_finite(expert_matrix(s.to(dtype), half, layout), stacks.source(sk), sk)
        b = check_finite(p.to(dtype), per.source(pk), pk)
        d = a - b if sign > 0 else b - a
        return check_finite(d.contiguous(), f"{stacks.source(sk)} − {per.source(pk)}", sk)

    return load
