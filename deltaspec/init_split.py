"""Learned vs initial: how much of a LoRA / MultiLoRA update is its initial factors (pure torch).

A MultiLoRA head starts with random A_i⁰ AND B_i⁰ (only the zero scalings keep ΔW = 0 at step 0), so
part of the trained update is the learned scalings applied to the *initial* factors:

    trained          ΔW   = c Σ_i diag(s_i) B_i A_i       = L  @ R
    initial factors  ΔW_0 = c Σ_i diag(s_i) B_i⁰ A_i⁰     = L₀ @ R₀   (same s_i: the learned ones)
    learned part     ΔW − ΔW_0 = [L | −L₀] @ [R; R₀]                  (exact, rank ≤ 2 Σ r_i)
    init share       ‖ΔW_0‖²_F / ‖ΔW‖²_F

For LoRA, ΔW_0 = s·B⁰A⁰, which is 0 for the standard init (B⁰ = 0). Every norm and inner product
comes from r×r Gram matrices, ⟨L R, L' R'⟩_F = tr((LᵀL')(R'Rᵀ)): nothing d_out × d_in is formed.
Factor movement ‖B−B⁰‖_F/‖B⁰‖_F and ‖A−A⁰‖_F/‖A⁰‖_F uses the raw factors (no scalings), all heads
stacked; it is NaN where the initial factor is 0 (LoRA's B⁰). docs/TRAINING.md, "Learned vs initial".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .updates import LowRank, SumOfLowRank

# The fields `analyze --initial` adds to every layer's metrics (besides learned_<metric>).
SPLIT_FIELDS = ("init_share", "init_cos", "moveA", "moveB")


@dataclass
class InitSplit:
    """How a trained update relates to its initial factors (definitions in the module docstring)."""

    init_share: float  # ‖ΔW_0‖² / ‖ΔW‖²; NaN when ΔW = 0
    init_cos: float  # ⟨ΔW, ΔW_0⟩ / (‖ΔW‖ ‖ΔW_0‖); NaN when either is 0
    moveA: float  # ‖A − A⁰‖ / ‖A⁰‖
    moveB: float  # ‖B − B⁰‖ / ‖B⁰‖; NaN when B⁰ = 0 (standard LoRA)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in SPLIT_FIELDS}


def _check_pair(trained, initial) -> None:
    if type(trained) is not type(initial) or type(trained) not in (LowRank, SumOfLowRank):
        raise ValueError(f"the initial update must have the trained one's form (LoRA or MultiLoRA factors); got "
                         f"{type(trained).__name__} and {type(initial).__name__}")
    pairs = ([(trained.B, initial.B), (trained.A, initial.A)] if isinstance(trained, LowRank) else
             [(t, i) for (_, Bt, At), (_, Bi, Ai) in zip(trained.terms, initial.terms) for t, i in ((Bt, Bi), (At, Ai))])
    n_t = 1 if isinstance(trained, LowRank) else len(trained.terms)
    n_i = 1 if isinstance(initial, LowRank) else len(initial.terms)
    if n_t != n_i or any(tuple(t.shape) != tuple(i.shape) for t, i in pairs):
        shapes = lambda u: ([list(u.B.shape), list(u.A.shape)] if isinstance(u, LowRank)
                            else f"{len(u.terms)} heads, B {list(u.terms[0][1].shape)}, A {list(u.terms[0][2].shape)}")
        raise ValueError(f"initial factors {shapes(initial)} do not match the trained ones {shapes(trained)} "
                         "(another run, or another rank?)")


def initial_part(trained, initial):
    """ΔW_0: the trained update's scalings on the initial factors (same form as `trained`)."""
    _check_pair(trained, initial)
    if isinstance(trained, LowRank):
        return LowRank(initial.B, initial.A, trained.scale)
    return SumOfLowRank([(s, B0, A0) for (s, _, _), (_, B0, A0) in zip(trained.terms, initial.terms)])


def learned_part(trained, initial) -> LowRank:
    """ΔW − ΔW_0 as one exact factored product [L | −L₀] @ [R; R₀]."""
    L, R = trained.factors()
    L0, R0 = initial_part(trained, initial).factors()
    return LowRank(torch.cat([L, -L0.to(L.dtype)], dim=1), torch.cat([R, R0.to(R.dtype)], dim=0))


def inner(L1, R1, L2, R2) -> float:
    """⟨L1 R1, L2 R2⟩_F = tr((L1ᵀ L2)(R2 R1ᵀ)) in float64, from r×r Gram matrices."""
    L1, R1, L2, R2 = (t.double() for t in (L1, R1, L2, R2))
    return float(((L1.T @ L2) * (R1 @ R2.T)).sum())


def _raw(u) -> tuple:
    """(all B stacked, all A stacked) without scalings."""
    if isinstance(u, LowRank):
        return u.B, u.A
    return torch.cat([B for _, B, _ in u.terms], dim=1), torch.cat([A for _, _, A in u.terms], dim=0)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def init_split(trained, initial) -> InitSplit:
    """Init share, cosine with ΔW_0 and factor movement of `trained` against its `initial` update."""
    L, R = trained.factors()
    L0, R0 = initial_part(trained, initial).factors()
    n2, n02, c = inner(L, R, L, R), inner(L0, R0, L0, R0), inner(L, R, L0, R0)
    (B, A), (B0, A0) = _raw(trained), _raw(initial)
    move = lambda X, X0: _ratio(float((X.double() - X0.double()).norm()), float(X0.double().norm()))
    return InitSplit(_ratio(n02, n2), _ratio(c, math.sqrt(n2 * n02)) if n2 > 0 and n02 > 0 else math.nan,
                     move(A, A0), move(B, B0))
