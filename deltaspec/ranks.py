"""Rank policies: how many singular directions of ΔW to keep, as pure functions of σ (numpy, float64).

Every policy takes the singular values σ (any order; a factored update passes only its rank-many
values, the rest are exactly zero and change nothing) and returns a rank k, 0 ≤ k ≤ #{σ_i > 0}.
A zero update gets k = 0 from every policy (it has no direction to keep). By Eckart–Young the
rank-k truncated SVD is the best rank-k approximation in Frobenius norm, with

    kept energy            E(k) = Σ_{i≤k} σ_i² / Σ σ_i²
    relative error         ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = sqrt(1 − E(k))

| policy           | parameter | k is                                                                 |
|------------------|-----------|----------------------------------------------------------------------|
| `rank`           | r         | min(r, #{σ_i > 0})                                                   |
| `energy`         | e ∈ (0,1] | the smallest k with E(k) ≥ e (gradience's "energy rank")             |
| `fro_error`      | ε ∈ [0,1) | the smallest k with sqrt(1 − E(k)) ≤ ε, i.e. `energy` at e = 1 − ε²  |
| `sv_ratio`       | ρ ≥ 1     | #{σ_i > σ_1 / ρ}, at least 1 (kohya's sv_ratio keeps one more)        |
| `knee`           | —         | the values before the knee of σ_i/σ_1 (max distance below the chord)  |
| `effective_rank` | —         | exp(spectral entropy) rounded to the nearest integer (Roy & Vetterli) |

kohya's dynamic methods (sd-scripts resize_lora.py) are `kohya_sv_ratio`, `kohya_sv_fro` and
`kohya_sv_cumulative` (deltaspec/kohya_ranks.py): kohya keeps one direction more than the index it
finds, so kohya's sv_ratio ρ is `sv_ratio` ρ plus one and its sv_fro t is `energy` t² plus one
(clamped to [2, n]; n = min(d_out, d_in), passed as `size`). Energy comparisons
allow a relative slack of 1e-12 so that e = 1 is reached despite rounding in the cumulative sum.

>>> s = [4.0, 2.0, 1.0, 1.0]          # energies 16, 4, 1, 1 of 22
>>> energy_rank(s, 0.7), energy_rank(s, 0.9), energy_rank(s, 1.0)
(1, 2, 4)
>>> fro_error_rank(s, 0.5), sv_ratio_rank(s, 3.0), knee_rank([10.0, 9.0, 8.0, 1.0, 1.0, 1.0])
(2, 2, 3)
>>> effective_rank_rank([3.0, 3.0, 3.0, 0.0]), fixed_rank(s, 16)
(3, 4)
>>> kept_energy(s, 2), round(relative_error(s, 2), 6)
(0.9090909090909091, 0.301511)
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import kohya_ranks as K
from .errors import DeltaspecError

SLACK = 1e-12


def _sigma(s) -> np.ndarray:
    """Descending non-negative float64 copy of σ, exact zeros dropped."""
    a = np.sort(np.abs(np.asarray(s, dtype=np.float64)).ravel())[::-1]
    return a[a > 0]


def _cumulative_energy(a: np.ndarray) -> np.ndarray:
    e = a**2
    return np.cumsum(e) / e.sum()


def fixed_rank(s, r: int) -> int:
    """min(r, number of nonzero σ)."""
    if r < 0:
        raise DeltaspecError(f"rank must be ≥ 0, got {r}")
    return min(int(r), len(_sigma(s)))


def energy_rank(s, share: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ share · Σ σ_i² (0 for a zero update)."""
    if not 0 < share <= 1:
        raise DeltaspecError(f"energy share must be in (0, 1], got {share}")
    a = _sigma(s)
    if not a.size:
        return 0
    c = _cumulative_energy(a)
    return min(int(np.searchsorted(c, share * (1 - SLACK), side="left")) + 1, a.size)


def fro_error_rank(s, err: float) -> int:
    """Smallest k whose truncation has relative Frobenius error ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F ≤ err."""
    if not 0 <= err < 1:
        raise DeltaspecError(f"relative Frobenius error must be in [0, 1), got {err}")
    return energy_rank(s, 1 - err**2)


def sv_ratio_rank(s, ratio: float) -> int:
    """#{σ_i > σ_1 / ratio} (at least 1): the directions within a factor `ratio` of the largest (kohya's sv_ratio)."""
    if not ratio >= 1:
        raise DeltaspecError(f"sv ratio must be ≥ 1, got {ratio}")
    a = _sigma(s)
    return max(int((a > a[0] / ratio).sum()), 1) if a.size else 0


def knee_rank(s) -> int:
    """Knee of the normalised spectrum (Kneedle on the curve σ_i/σ_1 vs i).

    With x_i = (i−1)/(n−1) and y_i = (σ_i − σ_n)/(σ_1 − σ_n), the knee is the point i* farthest below
    the chord from (0, 1) to (1, 0), i.e. argmax (1 − x_i − y_i); the rank is the number of values
    before it, i* − 1 (at least 1). A flat spectrum (no knee) keeps everything.
    """
    a = _sigma(s)
    n = a.size
    if n <= 2 or a[0] == a[-1]:
        return n
    x = np.arange(n) / (n - 1)
    y = (a - a[-1]) / (a[0] - a[-1])
    d = 1 - x - y
    if d.max() <= SLACK:  # the curve never drops below the chord (concave / linear): no knee
        return n
    return max(int(np.argmax(d)), 1)


def effective_rank_rank(s) -> int:
    """exp(−Σ p_i ln p_i), p_i = σ_i / Σ σ_j, rounded to the nearest integer (at least 1)."""
    a = _sigma(s)
    if not a.size:
        return 0
    p = a / a.sum()
    return max(int(round(math.exp(-(p * np.log(p)).sum()))), 1)


def kept_energy(s, k: int) -> float:
    """E(k) = Σ_{i≤k} σ_i² / Σ σ_i² (NaN for a zero update)."""
    a = _sigma(s)
    if not a.size:
        return math.nan
    return float((a[:k] ** 2).sum() / (a**2).sum())


def relative_error(s, k: int) -> float:
    """‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = sqrt(Σ_{i>k} σ_i² / Σ σ_i²) (NaN for a zero update)."""
    a = _sigma(s)
    if not a.size:
        return math.nan
    return float(math.sqrt((a[k:] ** 2).sum() / (a**2).sum()))


@dataclass(frozen=True)
class Policy:
    """A named policy with its parameter (None for parameter-free ones); `rank(σ)` applies it."""

    name: str
    value: Optional[float] = None

    def rank(self, s, max_rank: Optional[int] = None, size: Optional[int] = None) -> int:
        """k for singular values s; size: the full spectrum's length min(d_out, d_in) (kohya's rules
        clamp to it; default len(s))."""
        fn, needs = POLICIES[self.name]
        if self.name in KOHYA:
            k = fn(s, self.value, size)
        else:
            k = fn(s, self.value) if needs else fn(s)
        return min(k, max_rank) if max_rank is not None else k

    @property
    def label(self) -> str:
        """Short column name: `energy=0.9`, `knee`."""
        if self.value is None:
            return self.name
        v = int(self.value) if self.name == "rank" else self.value
        return f"{self.name}={v:g}"


# name -> (function, takes a parameter)
POLICIES: dict[str, tuple[Callable, bool]] = {
    "rank": (fixed_rank, True),
    "energy": (energy_rank, True),
    "fro_error": (fro_error_rank, True),
    "sv_ratio": (sv_ratio_rank, True),
    "knee": (knee_rank, False),
    "effective_rank": (effective_rank_rank, False),
    "kohya_sv_ratio": (K.sv_ratio_rank, True),
    "kohya_sv_fro": (K.sv_fro_rank, True),
    "kohya_sv_cumulative": (K.sv_cumulative_rank, True),
}
KOHYA = ("kohya_sv_ratio", "kohya_sv_fro", "kohya_sv_cumulative")
DEFAULTS = {"energy": 0.9, "fro_error": 0.1, "sv_ratio": 10.0, "kohya_sv_ratio": 10.0, "kohya_sv_fro": 0.9,
            "kohya_sv_cumulative": 0.9}


def policy(name: str, value: Optional[float] = None) -> Policy:
    """Policy by name (`-` or `_`), with its default parameter when none is given; validated."""
    key = name.replace("-", "_")
    if key not in POLICIES:
        raise DeltaspecError(f"unknown rank policy '{name}'; expected one of {', '.join(POLICIES)}")
    needs = POLICIES[key][1]
    if not needs:
        return Policy(key)
    if value is None:
        if key not in DEFAULTS:
            raise DeltaspecError(f"rank policy '{name}' needs a value")
        value = DEFAULTS[key]
    p = Policy(key, float(value))
    p.rank([1.0])  # validates the parameter (raises DeltaspecError)
    return p


def new_alpha(r_new: int, keep_scale: str, alpha: Optional[float], scale: Optional[float],
              common_rank: Optional[int] = None) -> float:
    """LoRA α for a layer whose rank becomes r_new, for a plain LoRA (ΔW = (α/r)·B A).

    keep_scale="ratio": keep the layer's scale s = α/r (α_new = s · r_new; s = 1 when the source has
    none, e.g. full fine-tuning). keep_scale="alpha": keep the source's α (when the source has none,
    one α for every layer: `common_rank`, the adapter's most common rank, else r_new). Either way the
    merged ΔW is the same; only how the factors carry the scale differs, which matters when the
    adapter is trained further (and for rank_pattern/alpha_pattern size).

    >>> new_alpha(8, "ratio", 32.0, 2.0), new_alpha(8, "alpha", 32.0, 2.0), new_alpha(8, "ratio", None, None)
    (16.0, 32.0, 8.0)
    """
    if keep_scale == "ratio":
        return float((scale if scale else 1.0) * r_new)
    if keep_scale == "alpha":
        return float(alpha) if alpha else float(common_rank or r_new)
    raise DeltaspecError(f"keep_scale must be 'ratio' or 'alpha', got {keep_scale!r}")


def layer_alphas(ranks: dict, keep_scale: str, scales: Optional[dict] = None) -> dict:
    """{layer: α} for {layer: new rank}; scales = {layer: (source α, source scale)} (see new_alpha)."""
    scales = scales or {}
    counts = Counter(k for k in ranks.values() if k > 0)
    common = max(counts, key=lambda k: (counts[k], k)) if counts else None
    return {n: new_alpha(max(k, 1), keep_scale, *scales.get(n, (None, None)), common_rank=common)
            for n, k in ranks.items()}
