"""How multiplicative adapters merge into the base weight W0: pure tensor functions, no I/O.

Used by the LyCORIS and PEFT-tuner readers for the updates that depend on W0 (dense, need --base).
All inputs are float64 (the readers upcast), W0 in the layer's stored shape (out, in[, kh, kw]).

  DoRA (LyCORIS)   W' = m · V / (‖V‖ + eps), V = W0 + ΔW_lora, norm per output row (m of shape (out, 1, …))
                   or per input column (m of shape (1, in, …)); ΔW = W' − W0
  IA3              ΔW = W0 ⊙ (l − 1) with l broadcast along the rows (output) or the columns (input)
  Cayley           cayley(Q) = (I + Q)(I − Q)⁻¹ for skew-symmetric Q: orthogonal
  Neumann          I + 2Q + 2Q² + … + 2Q^{t−2} + Q^{t−1}: PEFT OFT's truncated series for (I + Q)(I − Q)⁻¹
  butterfly        PEFT BOFT: M = Π_i P_i · blockdiag(R_i) · P_iᵀ (later stages on the left), P_i permutations
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions: importing deltaspec.io stays torch-free
    import torch


def dora(W0: torch.Tensor, dW: torch.Tensor, m: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """ΔW = m·V/(‖V‖ + eps) − W0, V = W0 + dW. The norm runs over every axis but the one m spans:
    m (out, 1, …) → per output row; m (1, in, …) → per input channel (over out and the kernel)."""
    V = W0 + dW
    if m.shape[0] == V.shape[0] and m.numel() == V.shape[0]:  # per output row
        norm = V.reshape(V.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (V.dim() - 1))
    else:  # per input column
        norm = V.transpose(0, 1).reshape(V.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (V.dim() - 2))
    return m.reshape(norm.shape) * V / (norm + eps) - W0


def ia3(W0: torch.Tensor, scaling: torch.Tensor, on_input: bool) -> torch.Tensor:
    """ΔW = W0 ⊙ (l − 1): l scales the input columns (on_input) or the output rows of W0."""
    shape = [1] * W0.dim()
    shape[1 if on_input else 0] = -1
    return W0 * (scaling.reshape(shape) - 1)


def skew_from_upper(vec: torch.Tensor, b: int) -> torch.Tensor:
    """(n, b(b−1)/2) upper-triangle entries (row-major, diagonal excluded) → (n, b, b) skew matrices Q − Qᵀ."""
    import torch

    rows, cols = torch.triu_indices(b, b, 1)
    Q = torch.zeros(vec.shape[0], b, b, dtype=vec.dtype)
    Q[:, rows, cols] = vec
    return Q - Q.transpose(-1, -2)


def cayley(Q: torch.Tensor) -> torch.Tensor:
    """(I + Q)(I − Q)⁻¹ for a batch of skew-symmetric Q (..., b, b); orthogonal."""
    import torch

    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand_as(Q)
    return torch.linalg.solve((eye - Q).transpose(-1, -2), (eye + Q).transpose(-1, -2)).transpose(-1, -2)


def neumann(Q: torch.Tensor, terms: int) -> torch.Tensor:
    """PEFT OFT's Neumann approximation of (I + Q)(I − Q)⁻¹ with `terms` terms:
    I, + 2Q (terms > 1), + 2Q² (terms > 2), + 2Q^k for 3 ≤ k ≤ terms − 2, + Q^{max(terms − 1, 3)} (terms > 2)."""
    import torch

    R = torch.eye(Q.shape[-1], dtype=Q.dtype).expand_as(Q).clone()
    if terms <= 1:
        return R
    R = R + 2 * Q
    if terms <= 2:
        return R
    P = Q @ Q
    R = R + 2 * P
    for _ in range(3, terms - 1):
        P = P @ Q
        R = R + 2 * P
    return R + P @ Q


def block_diag(blocks: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """(k, b, b) blocks → (k·b, k·b) block-diagonal matrix; with n, the single block repeated n times."""
    import torch

    bs = [blocks[0]] * n if n is not None else list(blocks)
    return torch.block_diag(*bs)


def butterfly_perm(n: int, b: int, r: int, n_factor: int) -> torch.Tensor:
    """PEFT BOFT's block butterfly permutation of n indices into b blocks of base size r: inside each
    chunk of n/b indices, the r-sized runs at even positions come first, then those at odd positions."""
    import torch

    if n_factor == 0:
        return torch.arange(n)
    size = n // b
    runs = size // r
    order = [run for run in range(0, runs, 2)] + [run for run in range(1, runs, 2)]
    within = torch.cat([torch.arange(run * r, run * r + r) for run in order])
    return torch.cat([start + within for start in range(0, n, size)])


def butterfly_matrix(R: torch.Tensor) -> torch.Tensor:
    """PEFT BOFT's rotation M (in × in) from per-stage orthogonal blocks R (N, D, H, H):
    M = M_{N−1} ⋯ M_0 with M_i = P_i blockdiag(R_i) P_iᵀ, P_i the permutation matrix (P x)[j] = x[π_i[j]]."""
    import torch

    N, D, H, _ = R.shape
    n = D * H
    M = None
    for i in range(N):
        perm = butterfly_perm(n, D // 2 ** i, H // 2, N - 1)
        P = torch.zeros(n, n, dtype=R.dtype)
        P[torch.arange(n), perm] = 1
        Mi = P @ block_diag(R[i]) @ P.T
        M = Mi if M is None else Mi @ M
    return M


def lycoris_butterfly(W0: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """LyCORIS BOFT: stage i (R (m, n, b, b)) pairs output rows 2^i·b/2 apart, rotates each group of b
    rows by R[i, g] (rows ← R·rows), and restores the order; returns T W0 for the product T of stages."""
    import torch

    m, _, b, _ = R.shape
    out = W0
    rest = W0.shape[1:]
    for i in range(m):
        k = 2 ** i * (b // 2)
        x = out.reshape(-1, 2, k, *rest).transpose(1, 2).reshape(-1, b, *rest)  # groups of b rows
        x = torch.einsum("gij,gj...->gi...", R[i], x)
        out = x.reshape(-1, k, 2, *rest).transpose(1, 2).reshape(W0.shape)
    return out
