"""kohya-ss sd-scripts' dynamic rank rules (networks/resize_lora.py), with kohya's exact meaning.

kohya takes the full SVD of the materialised ΔW (n = min(d_out, d_in) singular values σ, descending),
finds an index i with one of three rules, clamps it to [1, n − 1] and keeps i + 1 directions:

| method          | parameter t | index i                                                        |
|-----------------|-------------|----------------------------------------------------------------|
| `sv_ratio`      | ρ           | #{σ_j > σ_1 / ρ}                                                |
| `sv_fro`        | t ∈ (0, 1]  | first j (0-based) with Σ_{≤j} σ² / Σ σ² ≥ t²  (searchsorted, left) |
| `sv_cumulative` | t ∈ (0, 1]  | first j (0-based) with Σ_{≤j} σ / Σ σ ≥ t      (searchsorted, left) |

so the rank is max(1, min(i, n − 1)) + 1: one more than `ranks.sv_ratio_rank` (and than
`ranks.energy_rank` at t²) whenever the clamp does not bite. kohya then caps the rank at its
`--new_rank` (`--new_conv_rank` for conv layers): our `max_rank` / `conv_rank`.

Differences, all where kohya would keep a direction of σ = 0: a factored update has only its
rank-many nonzero σ (the others are exactly zero, kohya sees rounding noise there), and deltaspec
never keeps more directions than ΔW has (a truncation beyond its rank is ΔW itself); a zero update
(kohya: σ_1 ≤ 1e-6 → rank 1) gets rank 0 and is left out.

>>> s = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
>>> sv_ratio_rank(s, 4.0, 6), sv_fro_rank(s, 0.9, 6), sv_cumulative_rank(s, 0.9, 6)
(3, 2, 4)
"""
from __future__ import annotations

import numpy as np

from .errors import DeltaspecError

METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def _padded(s, n) -> tuple[np.ndarray, int]:
    """(σ descending, float64, exact zeros dropped; n = the full spectrum's length ≥ len(σ))."""
    a = np.sort(np.abs(np.asarray(s, dtype=np.float64)).ravel())[::-1]
    a = a[a > 0]
    return a, max(int(n) if n else a.size, a.size)


def _finish(index: int, a: np.ndarray, n: int) -> int:
    """kohya's clamp to [1, n − 1], plus one, and at most the number of nonzero σ (0 for a zero update)."""
    if not a.size:
        return 0
    return min(max(1, min(int(index), n - 1)) + 1, a.size)


def sv_ratio_rank(s, ratio: float, n=None) -> int:
    """kohya's sv_ratio: #{σ_j > σ_1 / ratio}, clamped to [1, n − 1], plus one."""
    if not ratio >= 1:
        raise DeltaspecError(f"sv_ratio must be ≥ 1, got {ratio}")
    a, n = _padded(s, n)
    return _finish(int((a > a[0] / ratio).sum()) if a.size else 0, a, n)


def _cumulative_index(c: np.ndarray, target: float, n: int) -> int:
    # torch.searchsorted on the full (zero-padded) cumulative: past the nonzero σ it stays at its last value
    i = int(np.searchsorted(c, target, side="left"))
    return i if i < c.size else n


def sv_fro_rank(s, t: float, n=None) -> int:
    """kohya's sv_fro: first j with cumulative σ² share ≥ t², clamped to [1, n − 1], plus one."""
    if not 0 < t <= 1:
        raise DeltaspecError(f"sv_fro must be in (0, 1], got {t}")
    a, n = _padded(s, n)
    if not a.size:
        return 0
    e = a**2
    return _finish(_cumulative_index(np.cumsum(e) / e.sum(), t**2, n), a, n)


def sv_cumulative_rank(s, t: float, n=None) -> int:
    """kohya's sv_cumulative: first j with cumulative σ (L1) share ≥ t, clamped to [1, n − 1], plus one."""
    if not 0 < t <= 1:
        raise DeltaspecError(f"sv_cumulative must be in (0, 1], got {t}")
    a, n = _padded(s, n)
    if not a.size:
        return 0
    return _finish(_cumulative_index(np.cumsum(a) / a.sum(), t, n), a, n)


def retained(s, k: int) -> dict:
    """kohya's verbose numbers for a rank-k truncation: sum(S) and Frobenius norm retained, σ_1/σ_k."""
    a = np.sort(np.abs(np.asarray(s, dtype=np.float64)).ravel())[::-1]
    if not a.size or a[0] == 0 or k < 1:
        return {"sum_retained": float("nan"), "fro_retained": float("nan"), "max_ratio": float("nan")}
    return {"sum_retained": float(a[:k].sum() / a.sum()),
            "fro_retained": float(np.sqrt((a[:k] ** 2).sum() / (a**2).sum())),
            "max_ratio": float(a[0] / a[min(k, a.size) - 1]) if a[min(k, a.size) - 1] > 0 else float("inf")}
