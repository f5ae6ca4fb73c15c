"""Subspace metrics of weight updates (DESIGN §3): they need singular vectors, some the base weight W0.

- `subspace_similarity(U1, U2, i, j)`: φ = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j) (LoRA paper §7.2),
  in [0, 1]: 1 when the smaller of the two subspaces lies inside the other, 0 when orthogonal.
  `similarity_grid` gives every (i, j) at once.
- `amplification_factor(U, V, sigma, W0, r)`: ‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F (LoRA paper §7.3, Table 7):
  how strongly ΔW amplifies directions W0 already has along ΔW's own top-r directions.
- `intruder_dimensions(W0, W_ft, k, eps)` (Shuttleworth et al. 2024, Algorithm 1): top-k left
  singular vectors of W0 + ΔW whose largest |cosine| with every left singular vector of W0 is < eps.

Pure torch/numpy; inputs may be torch tensors or numpy arrays; computation in float64.
Shapes: U (d_out, k) left singular vectors, V (d_in, k) right ones, columns ordered by σ descending.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch


def _t(x) -> torch.Tensor:
    """float64 CPU tensor view/copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def subspace_similarity(U1, U2, i: int, j: int) -> float:
    """φ(U1, U2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j).

    >>> import torch
    >>> E = torch.eye(4)
    >>> subspace_similarity(E, E, 2, 2), subspace_similarity(E[:, :2], E[:, 2:], 2, 2)
    (1.0, 0.0)
    >>> subspace_similarity(E, E, 1, 3)  # e1 lies in span(e1, e2, e3)
    1.0
    """
    A, B = _t(U1), _t(U2)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"U1 and U2 must have the same number of rows, got {tuple(A.shape)} and {tuple(B.shape)}")
    if not (1 <= i <= A.shape[1] and 1 <= j <= B.shape[1]):
        raise ValueError(f"need 1 ≤ i ≤ {A.shape[1]} and 1 ≤ j ≤ {B.shape[1]}, got i={i}, j={j}")
    M = A[:, :i].T @ B[:, :j]  # (i, j)
    return float((M**2).sum() / min(i, j))


def similarity_grid(U1, U2, max_i: Optional[int] = None, max_j: Optional[int] = None) -> np.ndarray:
    """All φ(U1, U2, i, j) for 1 ≤ i ≤ max_i, 1 ≤ j ≤ max_j: array G with G[i-1, j-1] = φ(i, j).

    One product and a 2-D cumulative sum: ‖U1_iᵀ U2_j‖_F² = Σ_{a≤i, b≤j} (U1ᵀU2)_{ab}².
    """
    A, B = _t(U1), _t(U2)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"U1 and U2 must have the same number of rows, got {tuple(A.shape)} and {tuple(B.shape)}")
    I = A.shape[1] if max_i is None else min(max_i, A.shape[1])
    J = B.shape[1] if max_j is None else min(max_j, B.shape[1])
    M2 = ((A[:, :I].T @ B[:, :J]) ** 2).numpy()  # (I, J)
    csum = M2.cumsum(axis=0).cumsum(axis=1)
    denom = np.minimum.outer(np.arange(1, I + 1), np.arange(1, J + 1))
    return csum / denom


@dataclass
class Amplification:
    """Result of `amplification_factor`; `factor` = delta_norm / projected_norm."""

    factor: float
    delta_norm: float  # ‖ΔW‖_F (all singular values given)
    projected_norm: float  # ‖U_rᵀ W0 V_r‖_F: W0 seen through ΔW's top-r directions
    base_norm: float  # ‖W0‖_F, the LoRA paper's reference for projected_norm
    r: int


def amplification_factor(U, V, sigma, W0, r: Optional[int] = None) -> Amplification:
    """‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F, with U_r (d_out, r), V_r (d_in, r) the top-r singular vectors of ΔW.

    As in the LoRA paper §7.3 (Table 7: 6.91 / 0.32 ≈ 21.5 for W_q at r = 4), ‖ΔW‖_F is the norm of
    the whole update (√Σσ²) and r defaults to the number of singular values given (an adapter's rank).
    A large factor means ΔW strongly amplifies directions that W0 barely uses. `base_norm` = ‖W0‖_F
    puts `projected_norm` in context (a random r-dim projection keeps ≈ ‖W0‖_F·r/√(d_out·d_in)).

    >>> import torch
    >>> W0 = torch.diag(torch.tensor([10.0, 1.0, 0.1]))
    >>> e3 = torch.tensor([[0.0], [0.0], [1.0]])
    >>> round(amplification_factor(e3, e3, [2.0], W0).factor, 6)  # ΔW = 2·e3e3ᵀ: 2 / 0.1
    20.0
    """
    Ut, Vt, W = _t(U), _t(V), _t(W0)
    s = np.asarray(sigma, dtype=np.float64).ravel()
    r = len(s) if r is None else int(r)
    if not 1 <= r <= min(Ut.shape[1], Vt.shape[1], len(s)):
        raise ValueError(f"r must be between 1 and {min(Ut.shape[1], Vt.shape[1], len(s))}, got {r}")
    if W.shape != (Ut.shape[0], Vt.shape[0]):
        raise ValueError(f"W0 has shape {tuple(W.shape)} but ΔW is {Ut.shape[0]}x{Vt.shape[0]}")
    proj = float(torch.linalg.matrix_norm(Ut[:, :r].T @ W @ Vt[:, :r]))  # (r, r) core
    delta = float(np.sqrt((s**2).sum()))
    factor = delta / proj if proj > 0 else float("inf")
    return Amplification(factor, delta, proj, float(torch.linalg.matrix_norm(W)), r)


@dataclass
class Intruders:
    """Result of `intruder_dimensions`. Positions are 0-based ranks among the top-k of W_ft."""

    indices: np.ndarray  # positions j < k of the intruder singular vectors of W_ft
    max_similarity: np.ndarray  # (k,) max_i |cos(u0_i, u_j)| for each of the top-k vectors
    singular_values: np.ndarray  # (k,) top-k singular values of W_ft
    k: int
    eps: float
    n_base: int = 0  # number of base singular vectors compared against

    @property
    def count(self) -> int:
        return int(len(self.indices))

    def __repr__(self) -> str:
        return (f"Intruders({self.count} of the top {self.k} below eps={self.eps:g}: "
                f"positions {[int(i) for i in self.indices]})")

    @property
    def intruder_similarity(self) -> np.ndarray:
        return self.max_similarity[self.indices]

    @property
    def intruder_sigma(self) -> np.ndarray:
        return self.singular_values[self.indices]


def left_vectors(W) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, σ) of W (thin SVD, float64): reuse the base's U0 across methods with `U0=`."""
    U, S, _ = torch.linalg.svd(_t(W), full_matrices=False)
    return U, S


def intruder_dimensions(W0, W_ft, k: int = 10, eps: float = 0.5, U0=None) -> Intruders:
    """Top-k left singular vectors u_j of W_ft = W0 + ΔW with max_i |cos(u0_i, u_j)| < eps.

    Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", Alg. 1) compare
    against all singular vectors of W0. Singular vectors have arbitrary sign, hence |cos|.
    `U0`: precomputed left singular vectors of W0 (saves one SVD per method).
    """
    if U0 is None:
        U0, _ = left_vectors(W0)
    U0 = _t(U0)
    Ut, St = left_vectors(W_ft)
    if U0.shape[0] != Ut.shape[0]:
        raise ValueError(f"W0 and W_ft must have the same shape, got {U0.shape[0]} and {Ut.shape[0]} rows")
    k = min(int(k), Ut.shape[1])
    sims = (U0.T @ Ut[:, :k]).abs().amax(dim=0).numpy()  # (k,) unit vectors: dot = cosine
    idx = np.flatnonzero(sims < eps)
    return Intruders(idx, sims, St[:k].numpy(), k, float(eps), int(U0.shape[1]))


def reconstruct(U, sigma, V) -> torch.Tensor:
    """ΔW = U diag(σ) Vᵀ (float64) from an update's singular triplets."""
    s = torch.as_tensor(np.asarray(sigma, dtype=np.float64))
    Ut, Vt = _t(U)[:, : len(s)], _t(V)[:, : len(s)]
    return (Ut * s) @ Vt.T


@dataclass
class LayerSubspace:
    """Subspace report of one layer for several methods (see `layer_subspace`)."""

    name: str
    labels: list[str]
    amplification: list[Optional[Amplification]]
    intruders: list[Optional[Intruders]]
    similarity: dict = field(default_factory=dict)  # label -> grid of φ(first, label) (top-i, top-j)

    def __repr__(self) -> str:
        amp = ", ".join(f"{lab} {a.factor:.3g}" for lab, a in zip(self.labels, self.amplification) if a is not None)
        return (f"<LayerSubspace {self.name}: {', '.join(self.labels)}; φ grids vs {self.labels[0]}"
                + (f"; amplification {amp}" if amp else "") + ">")


def layer_subspace(name: str, labels: Sequence[str], layers: Sequence, W0=None, *, grid: int = 16,
                   amp_r: Optional[int] = None, intruder_k: int = 10, eps: float = 0.5) -> LayerSubspace:
    """Every subspace metric of one layer, for `layers` (LayerResults with U/V, one per method).

    φ grids compare each method's left singular vectors with the first method's (top `grid` of each).
    With W0 (the base weight, (d_out, d_in)): amplification at r = `amp_r` (default: the smallest rank
    over the methods, so each is judged on equally many directions) and intruder dimensions.
    """
    for lr in layers:
        if lr.U is None or lr.V is None:
            raise ValueError(f"{name}: singular vectors missing; analyze with vectors=True")
    sims = {lab: similarity_grid(layers[0].U, lr.U, grid, grid) for lab, lr in zip(labels[1:], layers[1:])}
    amps: list = [None] * len(layers)
    intr: list = [None] * len(layers)
    if W0 is not None:
        W = _t(W0)
        U0, _ = left_vectors(W)
        r = amp_r or min(len(lr.singular_values) for lr in layers)
        for n, lr in enumerate(layers):
            amps[n] = amplification_factor(lr.U, lr.V, lr.singular_values, W, min(r, len(lr.singular_values)))
            intr[n] = intruder_dimensions(W, W + reconstruct(lr.U, lr.singular_values, lr.V), intruder_k, eps, U0=U0)
    return LayerSubspace(name, list(labels), amps, intr, sims)
