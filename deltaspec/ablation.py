"""Ablating an update's directions: pure math for `deltaspec ablate` (how much a fine-tuned model
depends on the top singular directions of its ΔW, the functional side of the MultiLoRA paper's Figure 2).

With the exact SVD ΔW = U Σ Vᵀ (U: d_out × m, V: d_in × m, m = the update's rank bound: the factored
SVD for adapters, as `resize` uses, a dense SVD for full fine-tuning), every ablation is

    ΔW' = U C Vᵀ      with an m × m core C:
    trunc  k:  C = diag(σ_1 … σ_k, 0 … 0)                    rank-k truncation (Eckart–Young)
    remove k:  C = diag(0 … 0, σ_{k+1} … σ_m) = Σ − trunc    ΔW without its top-k directions
    random k:  C = Σ (I − c G Gᵀ)                             the control (below)

The control removes k random directions of the same energy. G (m × k) is a Haar-random orthonormal
frame (QR of a Gaussian m × k matrix, sign-fixed, from a seeded generator), so Q = V G is k random
orthonormal directions inside ΔW's row space, and the part removed is c·ΔW Q Qᵀ: the same kind of
perturbation as the top-k removal (rank k, inside the update's own row space), in random
directions. c = sqrt(Σ_{i≤k} σ_i² / ‖ΔW Q‖²_F) makes its energy ‖ΔW − ΔW'‖²_F equal the top-k
energy Σ_{i≤k} σ_i² exactly. c ≥ 1 (no k directions carry more energy than the top k, so a plain
projection could only remove less); c = 1 when Q spans the top-k directions, and at k = m (ΔW' = 0).
A zero update stays zero (c = 0).

k = m ("full"): trunc gives ΔW itself, remove and random give 0 (the base). A k above m is an error.
Everything here is float64 numpy; the caller adds ΔW' to W0 in the model's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DeltaspecError

MODES = ("trunc", "remove", "random")


@dataclass
class Ablated:
    """ΔW' = left @ right (left: d_out × m, right: m × d_in), what was removed and how."""

    left: np.ndarray
    right: np.ndarray
    removed_energy: float  # ‖ΔW − ΔW'‖²_F
    scale: float  # c of the random control (1 for trunc/remove)

    def dense(self) -> np.ndarray:
        return self.left @ self.right


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise DeltaspecError(f"unknown ablation mode {mode!r}; choose from {', '.join(MODES)}")
    return mode


def random_frame(m: int, k: int, seed: int) -> np.ndarray:
    """An m × k Haar-random orthonormal frame (QR of a Gaussian, signs fixed by R's diagonal)."""
    g = np.random.default_rng(seed).standard_normal((m, k))
    q, r = np.linalg.qr(g)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def core(sigma: np.ndarray, mode: str, k: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(C, c): the m × m core of the ablated update (module docstring) and the control's scale c."""
    check_mode(mode)
    s = np.asarray(sigma, dtype=np.float64)
    m = len(s)
    if not 0 <= k <= m:
        raise DeltaspecError(f"k = {k} is larger than the update's rank {m}")
    if mode == "trunc":
        return np.diag(np.where(np.arange(m) < k, s, 0.0)), 1.0
    if mode == "remove":
        return np.diag(np.where(np.arange(m) < k, 0.0, s)), 1.0
    if k == 0:
        return np.diag(s), 1.0
    G = random_frame(m, k, seed)
    SG = s[:, None] * G  # Σ G: its energy is ‖ΔW Q‖²_F
    got, want = float((SG**2).sum()), float((s[:k] ** 2).sum())
    c = 0.0 if got == 0 else float(np.sqrt(want / got))
    return np.diag(s) - c * SG @ G.T, c


def ablate(sigma: np.ndarray, U: np.ndarray, V: np.ndarray, mode: str, k: int, seed: int = 0) -> Ablated:
    """ΔW' of the update with SVD (sigma, U, V) (U: d_out × m, V: d_in × m), in factored form."""
    s = np.asarray(sigma, dtype=np.float64)
    C, c = core(s, mode, k, seed)
    U, V = np.asarray(U, dtype=np.float64), np.asarray(V, dtype=np.float64)
    removed = np.diag(s) - C
    return Ablated(U @ C, V.T.copy(), float((removed**2).sum()), c)


def top_energy(sigma: np.ndarray, k: int) -> float:
    """Σ_{i≤k} σ_i²: what the top-k removal (and its random control) takes away."""
    s = np.asarray(sigma, dtype=np.float64)
    return float((s[:k] ** 2).sum())
