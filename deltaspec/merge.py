"""Merge several LoRA-type adapters of one base into one update: ΔW = Σ_j w_j ΔW_j, kept factored.

Each adapter's layer is a factored form ΔW_j = L_j R_j (LoRA, MultiLoRA, LoHa, …), so the weighted sum
is one product [w_1 L_1 | … | w_n L_n] @ [R_1; …; R_n] of rank ≤ Σ r_j (a `SumOfLowRank`); its exact
factored SVD (spectra.py) gives the best rank-r LoRA of the sum by Eckart–Young (`resize.resize`),
without forming any d_out × d_in matrix. This is the job of kohya's svd_merge_lora.py and of PEFT's
`add_weighted_adapter(combination_type="svd")`, which both materialise ΔW and take a dense SVD.

A layer present in only some adapters contributes only there (as svd_merge_lora). Adapters whose
common layers differ in shape, orientation or kernel are of different bases: a DeltaspecError.

    merged = merge_updates([ds.load("a.safetensors"), ds.load("b.safetensors")], [0.7, 0.3])
    res = resize(merged, ranks.policy("rank", 16))
"""
from __future__ import annotations

from typing import Sequence

from .errors import DeltaspecError
from .updates import LayerUpdate, SumOfLowRank, Updates, is_factored

_SAME = ("conv_kernel", "fan_in_fan_out", "embedding")


def merge_updates(adapters: Sequence[Updates], weights: Sequence[float]) -> Updates:
    """One Updates whose layers are Σ_j w_j ΔW_j over the adapters that have them (loaded lazily)."""
    if len(adapters) < 2:
        raise DeltaspecError("merge needs at least two adapters")
    if len(weights) != len(adapters):
        raise DeltaspecError(f"{len(weights)} weights for {len(adapters)} adapters; give one weight per adapter")
    first = adapters[0]
    by_name: dict[str, list] = {}
    for upd, w in zip(adapters, weights):
        if upd.format != first.format:
            raise DeltaspecError(f"{upd.path}: a {upd.format} file, but {first.path} is {first.format}: merge adapters "
                                 "of one base saved in one format")
        for u in upd:
            if u.kind == "dense":
                raise DeltaspecError(f"{upd.path}: {u.name}: a dense update ({u.meta.get('variant', 'full')}); merge "
                                     "takes LoRA-type (factored) adapters; resize it into a LoRA first")
            by_name.setdefault(u.name, []).append((upd, u, float(w)))
    if not any(len(v) > 1 for v in by_name.values()):
        raise DeltaspecError(f"{adapters[1].path}: no layer in common with {first.path}: adapters of different bases "
                             "(or naming schemes) cannot be merged")
    layers = []
    for name, parts in by_name.items():
        _, u0, _ = parts[0]
        for upd, u, _ in parts[1:]:
            if tuple(u.shape) != tuple(u0.shape) or any(u.meta.get(k) != u0.meta.get(k) for k in _SAME):
                raise DeltaspecError(f"{upd.path}: layer '{name}' is {u.shape[0]}x{u.shape[1]} "
                                     f"{u.meta.get('conv_kernel') or ''} here but {u0.shape[0]}x{u0.shape[1]} "
                                     f"{u0.meta.get('conv_kernel') or ''} in {parts[0][0].path}: adapters of "
                                     "different bases cannot be merged")
        layers.append(_merged_layer(name, parts))
    warnings = [w for upd in adapters for w in upd.warnings]
    return Updates(layers, " + ".join(str(a.path) for a in adapters), first.format, first.base, warnings)


def _merged_layer(name: str, parts: list) -> LayerUpdate:
    _, u0, _ = parts[0]

    def load() -> SumOfLowRank:
        terms = []
        for upd, u, w in parts:
            f = u.load()
            if not is_factored(f):
                raise DeltaspecError(f"{upd.path}: {name}: a {type(f).__name__} update is not factored; merge takes "
                                     "LoRA-type adapters (LoRA, LoCon, LoHa, MultiLoRA)")
            L, R = f.factors()
            terms.append((w, L, R))
        return SumOfLowRank(terms)

    rank = min(sum(u.rank_bound for _, u, _ in parts), *u0.shape)
    meta = {k: u0.meta[k] for k in _SAME if k in u0.meta} | {"variant": "merged", "sources": len(parts)}
    return LayerUpdate(name, tuple(u0.shape), "lowrank", rank, load, u0.source, u0.dtype, meta)
