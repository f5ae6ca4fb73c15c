"""Balance metrics of a spectrum: pure functions of the singular values (DESIGN §3).

Every function takes σ (any order, non-negative; a factored update passes only its rank-many values,
the rest are zero and change nothing except where a reference size `n` is stated). Computation is in
float64 numpy. A zero update has no direction, so its shape metrics are NaN (JSON null), not 0.

>>> s = [3.0, 3.0, 3.0, 3.0]
>>> round(effective_rank(s), 6), round(normalized_entropy(s, n_ref=4), 6), stable_rank(s)
(4.0, 1.0, 4.0)
>>> top_k_energy([2.0, 1.0, 1.0, 0.0], k=1)
0.6666666666666666
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

DEFAULT_TOP_K = (1, 4, 16)


class _Sorted(np.ndarray):
    """σ that `_sigma` already prepared: lets `all_metrics` sort once for a dozen metrics."""


def _sigma(s) -> np.ndarray:
    """Descending float64 copy of σ."""
    if type(s) is _Sorted:
        return s.view(np.ndarray)
    return np.sort(np.abs(np.asarray(s, dtype=np.float64)).ravel())[::-1]


def frobenius_norm(s) -> float:
    """‖ΔW‖_F = sqrt(Σ σ_i²)."""
    return float(np.sqrt(np.sum(_sigma(s) ** 2)))


def spectral_norm(s) -> float:
    """‖ΔW‖_2 = σ_1 (0 for an empty or zero spectrum)."""
    a = _sigma(s)
    return float(a[0]) if a.size else 0.0


def nuclear_norm(s) -> float:
    """‖ΔW‖_* = Σ σ_i."""
    return float(np.sum(_sigma(s)))


def top_k_energy(s, k: int) -> float:
    """Energy share of the top k directions: Σ_{i≤k} σ_i² / Σ σ_i². 1 means k directions hold it all.

    The MultiLoRA paper's "dominated by a few top singular vectors" is a top-1 / top-4 energy near 1.
    """
    e = _sigma(s) ** 2
    total = e.sum()
    return float(e[:k].sum() / total) if total > 0 else math.nan


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def spectral_entropy(s) -> float:
    """H = −Σ p_i ln p_i with p_i = σ_i / Σ σ_j (L1 normalisation, Roy & Vetterli 2007). Nats."""
    a = _sigma(s)
    total = a.sum()
    return _entropy(a / total) if total > 0 else math.nan


def effective_rank(s) -> float:
    """exp(spectral_entropy): in [1, rank]; r equal singular values give exactly r."""
    return float(math.exp(spectral_entropy(s)))


def normalized_entropy(s, n_ref: int) -> float:
    """spectral_entropy / ln(n_ref), in [0, 1] when n_ref ≥ the number of nonzero σ.

    n_ref is the reference size: min(d_out, d_in) by default in deltaspec (so a LoRA, a MultiLoRA
    and a full fine-tune of the same layer are measured on the same scale). Always report it.
    """
    if n_ref < 2:
        return math.nan
    return spectral_entropy(s) / math.log(n_ref)


def energy_entropy(s) -> float:
    """Entropy with energy weights p_i = σ_i² / Σ σ_j² (some papers use this; named apart). Nats."""
    e = _sigma(s) ** 2
    total = e.sum()
    return _entropy(e / total) if total > 0 else math.nan


def stable_rank(s) -> float:
    """Σ σ_i² / σ_1²: how many directions at full strength the energy is worth."""
    e = _sigma(s) ** 2
    return float(e.sum() / e[0]) if e.size and e[0] > 0 else math.nan


def participation_ratio(s) -> float:
    """(Σ σ_i²)² / Σ σ_i⁴."""
    e = _sigma(s) ** 2
    q = (e**2).sum()
    return float(e.sum() ** 2 / q) if q > 0 else math.nan


def default_rtol(shape: Sequence[int], eps: float) -> float:
    """numpy.linalg.matrix_rank's default relative tolerance: max(d_out, d_in) · eps."""
    return max(shape) * eps


def numerical_rank(s, rtol: float) -> int:
    """#{σ_i > rtol · σ_1}; use `default_rtol(shape, eps)` of the compute dtype for numpy's default."""
    a = _sigma(s)
    if not a.size or a[0] == 0:
        return 0
    return int((a > rtol * a[0]).sum())


def condition_number(s, rtol: float) -> float:
    """σ_1 / σ_r, σ_r the smallest singular value above the numerical-rank threshold rtol·σ_1.

    DESIGN §3 says "over nonzero σ"; in floating point nothing is exactly zero, so deltaspec uses
    the same threshold as `numerical_rank` (otherwise rounding noise would set the answer).
    """
    a = _sigma(s)
    r = numerical_rank(a, rtol)
    return float(a[0] / a[r - 1]) if r > 0 else math.nan


def all_metrics(s, shape: Sequence[int], eps: float, n_ref: int, top_k: Iterable[int] = DEFAULT_TOP_K) -> dict:
    """Every metric above for one spectrum, keyed by its API name (top-k energies as `top{k}_energy`)."""
    rtol = default_rtol(shape, eps)
    s = _sigma(s).view(_Sorted)
    out = {
        "frobenius_norm": frobenius_norm(s),
        "spectral_norm": spectral_norm(s),
        "nuclear_norm": nuclear_norm(s),
    }
    for k in top_k:
        out[f"top{k}_energy"] = top_k_energy(s, k)
    out.update(
        spectral_entropy=spectral_entropy(s),
        effective_rank=effective_rank(s),
        normalized_entropy=normalized_entropy(s, n_ref),
        energy_entropy=energy_entropy(s),
        stable_rank=stable_rank(s),
        participation_ratio=participation_ratio(s),
        numerical_rank=numerical_rank(s, rtol),
        condition_number=condition_number(s, rtol),
    )
    return out


def truncated_metrics(sigma, frobenius: float, k_computed: int, top_k: Iterable[int] = DEFAULT_TOP_K) -> dict:
    """What the top-k (truncated) mode can state: the norms, top-k energies for k ≤ k_computed with the
    exact ‖ΔW‖_F² as denominator (lower bounds, as σ̃_i ≤ σ_i), and stable_rank = ‖ΔW‖_F²/σ̃_1² (an
    upper bound). Metrics that need the whole spectrum (entropies, ranks, nuclear norm) are NaN."""
    a = _sigma(sigma)
    total = frobenius**2
    out = {"frobenius_norm": float(frobenius), "spectral_norm": spectral_norm(a), "nuclear_norm": math.nan}
    for k in top_k:
        out[f"top{k}_energy"] = float((a[:k] ** 2).sum() / total) if k <= k_computed and total > 0 else math.nan
    nan = dict.fromkeys(["spectral_entropy", "effective_rank", "normalized_entropy", "energy_entropy"], math.nan)
    out.update(nan, stable_rank=float(total / a[0] ** 2) if a.size and a[0] > 0 else math.nan,
               participation_ratio=math.nan, numerical_rank=math.nan, condition_number=math.nan)
    return out


METRIC_NAMES = (
    "frobenius_norm", "spectral_norm", "nuclear_norm", "top_k_energy", "spectral_entropy", "effective_rank",
    "normalized_entropy", "energy_entropy", "stable_rank", "participation_ratio", "numerical_rank",
    "condition_number",
)


def metric_names(top_k: Iterable[int] = DEFAULT_TOP_K) -> list[str]:
    """The metric names `analyze` computes with these `top{k}_energy` k's, in its order (known before any SVD)."""
    return list(all_metrics(np.array([1.0, 0.5]), (2, 2), 1e-7, 2, top_k))


def check_metric_names(chosen: Iterable[str], available: Iterable[str], problem: str = "unknown metric") -> list[str]:
    """`chosen` if every name is in `available`, else a DeltaspecError naming the unknown ones, the closest
    known name (did you mean …) and the list."""
    from .errors import DeltaspecError, did_you_mean

    chosen, available = list(chosen), list(available)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise DeltaspecError(f"{problem}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                             f"{did_you_mean(unknown[0], available)}; available: {', '.join(available)}")
    return chosen
