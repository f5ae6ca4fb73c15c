"""Per-head anatomy of a MultiLoRA update ΔW = Σ_i ΔW_i, ΔW_i = c·diag(s_i)·B_i·A_i (pure torch, exact).

Which heads carry the update, do they add up or cancel, do they point in different directions?
Everything comes from the stacked factors L = [L_1 | … | L_n] (d_out, n·r), L_i = c·diag(s_i)·B_i,
and R = [R_1; …; R_n] (n·r, d_in), R_i = A_i; nothing d_out × d_in is ever formed (DESIGN §8).
One thin QR per side, as the factored SVD of ΔW itself (spectra.factored_svd): L = Q T, Rᵀ = P S.
Head i's columns are L_i = Q T_i and R_iᵀ = P S_i (T_i, S_i: its n·r × r block columns), so
    ΔW_i = Q C_i Pᵀ  with the small core  C_i = T_i S_iᵀ  (n·r × n·r, rank ≤ r),
and because Q and P have orthonormal columns, everything is a property of the cores:
- head i's singular values are those of C_i, its column (row) space is Q U_i (P V_i) with
  C_i = U_i Σ_i V_iᵀ;
- Frobenius inner products ⟨ΔW_i, ΔW_j⟩ = tr(C_iᵀ C_j): ‖ΔW_i‖² on the diagonal, ‖ΔW‖² = their sum;
- overlaps of two heads' column spaces: (Q U_i)ᵀ (Q U_j) = U_iᵀ U_j, so ‖U_iᵀ U_j‖²_F / min(r_i, r_j)
  and the largest principal cosine σ_1(U_iᵀ U_j) need no d_out-sized product (rows: V_i, V_j).
The cost is that of the spectrum of ΔW (two QRs of the stacked factors) plus n SVDs of n·r × n·r
cores. Batched over layers: L (b, d_out, n·r), R (b, n·r, d_in).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from .updates import SumOfLowRank

# |s| at most this fraction of the layer's largest |s| counts as "near 0" (frac_s_small).
ZERO_TOL = 0.01


def head_factors(update: "SumOfLowRank") -> tuple["Tensor", "Tensor", int]:
    """(L, R, r): the stacked factors L (d_out, n·r), R (n·r, d_in) of `SumOfLowRank.factors`, head i
    in block i of r columns (rows). Heads of different rank are zero-padded to the largest r (a zero
    column adds nothing to ΔW_i, its spectrum or its spaces)."""
    import torch

    from .updates import SumOfLowRank

    ranks = [A.shape[0] for _, _, A in update.terms]
    r = max(ranks)
    if min(ranks) == r:
        L, R = update.factors()
        return L, R, r
    d_out, d_in = update.shape
    parts = [SumOfLowRank([t]).factors() for t in update.terms]
    L = torch.zeros(d_out, len(parts) * r, dtype=parts[0][0].dtype)
    R = torch.zeros(len(parts) * r, d_in, dtype=parts[0][1].dtype)
    for i, (Lf, Rf) in enumerate(parts):
        L[:, i * r:i * r + Lf.shape[1]] = Lf
        R[i * r:i * r + Rf.shape[0]] = Rf
    return L, R, r


@dataclass
class HeadStats:
    """Anatomy of a batch of b layers with n heads each (float64 numpy).

    sigma (b, n, m): each head's singular values, descending (m = min(r, d_out, d_in));
    inner (b, n, n): ⟨ΔW_i, ΔW_j⟩_F; ranks (b, n): numerical rank of each head (see `anatomy`);
    overlap_col / overlap_row (b, n, n): ‖U_iᵀ U_j‖²_F / min(rank_i, rank_j) of the column / row
    spaces (1 on the diagonal; NaN when a head is 0); cos_col / cos_row (b, n, n): the largest
    principal cosine between the two spaces (cosine of the smallest principal angle).
    """

    sigma: np.ndarray
    inner: np.ndarray
    ranks: np.ndarray
    overlap_col: np.ndarray
    overlap_row: np.ndarray
    cos_col: np.ndarray
    cos_row: np.ndarray


def anatomy(L: "Tensor", R: "Tensor", r: int, rtol: float) -> HeadStats:
    """Per-head spectra, inner products and subspace overlaps of layers with stacked factors
    L (b, d, n·r), R (b, n·r, k), r the rank of each head.

    rtol: directions with σ ≤ rtol·(the largest σ_1 of the layer's heads) are rounding noise and are
    left out of a head's space (`metrics.default_rtol` of the compute dtype: numpy's matrix_rank
    default); a head below that altogether (e.g. zero scalings) has rank 0 and no space.
    """
    import torch

    b, _, nr = L.shape
    n = nr // r
    T = torch.linalg.qr(L, mode="r").R  # (b, m1, n·r): L = Q T, Q never formed
    S = torch.linalg.qr(R.mT, mode="r").R  # (b, m2, n·r): Rᵀ = P S
    Ti = T.reshape(b, -1, n, r).permute(0, 2, 1, 3)  # (b, n, m1, r): head i's block columns
    Si = S.reshape(b, -1, n, r).permute(0, 2, 1, 3)  # (b, n, m2, r)
    C = Ti @ Si.mT  # (b, n, m1, m2): ΔW_i = Q C_i Pᵀ
    inner = torch.einsum("bixy,bjxy->bij", C, C)  # tr(C_iᵀ C_j)
    U, sig, Vh = torch.linalg.svd(C, full_matrices=False)
    m = min(r, sig.shape[-1])  # rank C_i ≤ r: the rest is rounding
    sig, U, V = sig[..., :m], U[..., :m], Vh.mT[..., :m]
    # (b, n, m): rounding of the shared QR is relative to the layer's largest head, so is the cut
    keep = sig > rtol * sig[..., :1].amax(dim=1, keepdim=True)
    col, cos_c = _overlaps(U, keep)
    row, cos_r = _overlaps(V, keep)
    return HeadStats(_np(sig), _np(inner), _np(keep.sum(-1)), col, row, cos_c, cos_r)


def _overlaps(U: "Tensor", keep: "Tensor") -> tuple[np.ndarray, np.ndarray]:
    """(mean squared cosine, largest principal cosine) of every pair of head spaces: (b, n, n) each.

    U (b, n, p, m): orthonormal columns (in the coordinates of Q or P); keep (b, n, m): which columns
    span the head's space."""
    import torch

    Uk = U * keep.unsqueeze(-2).to(U.dtype)  # dropped directions become zero columns
    G = Uk.mT.unsqueeze(2) @ Uk.unsqueeze(1)  # blocks U_iᵀ U_j: (b, n, n, m, m)
    rank = keep.sum(-1).to(torch.float64)  # (b, n)
    denom = torch.minimum(rank[:, :, None], rank[:, None, :])
    sq = (G.double() ** 2).sum((-1, -2)) / denom  # NaN (0/0) where a head is zero
    cos = torch.linalg.svdvals(G)[..., 0].double().clamp(max=1.0)
    cos = torch.where(denom > 0, cos, torch.full_like(cos, math.nan))
    return _np(sq), _np(cos)


def _np(t: "Tensor") -> np.ndarray:
    t = t.detach().cpu()
    return t.double().numpy() if t.is_floating_point() else t.numpy()


def scaling_stats(S: Optional["Tensor"], n: int, zero_tol: float = ZERO_TOL) -> tuple[np.ndarray, np.ndarray]:
    """(mean |s_i|, fraction of s_i near 0) per head, from the stored scalings S (n,) or (n, d_out).

    "Near 0": |s| ≤ zero_tol · (the largest |s| of the layer, over all heads); scale-free, so it does
    not depend on α/r or the learning rate. All zero (an untrained adapter): every entry is near 0.
    Unknown scalings (S None): NaN.
    """
    if S is None:
        return np.full(n, math.nan), np.full(n, math.nan)
    a = S.detach().reshape(n, -1).abs().double().cpu().numpy()
    top = a.max() if a.size else 0.0
    return a.mean(axis=1), (a <= zero_tol * top).mean(axis=1)


def layer_metrics(inner: np.ndarray, overlap_col: np.ndarray, overlap_row: np.ndarray, cos_col: np.ndarray,
                  cos_row: np.ndarray, mean_abs_s: np.ndarray, frac_s_small: np.ndarray) -> dict:
    """The per-layer summary (names are part of the API, see docs/METRICS.md "Heads"):

    head_share_i = ‖ΔW_i‖² / Σ_j ‖ΔW_j‖²; effective_heads = exp(−Σ p ln p) over the shares, in [1, n];
    top_head_share = max share, top_head its index; interference = (‖ΔW‖² − Σ ‖ΔW_i‖²) / ‖ΔW‖²
    (0: the heads are orthogonal in Frobenius inner product; < 0: they partly cancel); overlap_col/row:
    mean over head pairs i < j; max_cos_col/row: max over pairs; mean_abs_s, frac_s_small: over all
    heads. An all-zero update has NaN ratios.
    """
    n = inner.shape[0]
    own = np.clip(np.diag(inner), 0.0, None)
    total = float(inner.sum())
    shares = shares_of(inner)
    p = shares[shares > 0]
    iu = np.triu_indices(n, 1)
    return {
        "heads": n,
        "effective_heads": float(np.exp(-(p * np.log(p)).sum())) if own.sum() > 0 else math.nan,
        "top_head_share": float(np.nanmax(shares)) if own.sum() > 0 else math.nan,
        "top_head": int(np.argmax(own)) if own.sum() > 0 else None,
        "interference": (total - float(own.sum())) / total if total > 0 else math.nan,
        "overlap_col": _mean(overlap_col[iu]), "overlap_row": _mean(overlap_row[iu]),
        "max_cos_col": _max(cos_col[iu]), "max_cos_row": _max(cos_row[iu]),
        "mean_abs_s": _mean(mean_abs_s), "frac_s_small": _mean(frac_s_small),
        "frobenius_norm": math.sqrt(max(total, 0.0)),
    }


def shares_of(inner: np.ndarray) -> np.ndarray:
    """Energy share of each head: ‖ΔW_i‖² / Σ_j ‖ΔW_j‖² (NaN for an all-zero update)."""
    own = np.clip(np.diag(inner), 0.0, None)  # ‖ΔW_i‖² ≥ 0 (rounding cannot make it negative)
    return own / own.sum() if own.sum() > 0 else np.full(len(own), math.nan)


def _mean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _max(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else math.nan
