"""Rank policies (deltaspec/ranks.py) against hand-computed spectra and numpy float64 truncations."""
import doctest
import math

import numpy as np
import pytest

import deltaspec.ranks as R
from deltaspec.errors import DeltaspecError


def test_doctests():
    assert doctest.testmod(R).failed == 0


S = [3.0, 2.0, 1.0]  # energies 9, 4, 1 of 14: E(1) = 0.643, E(2) = 0.929, E(3) = 1


@pytest.mark.parametrize("share,k", [(0.5, 1), (9 / 14, 1), (0.65, 2), (0.9, 2), (13 / 14, 2), (0.95, 3), (1.0, 3)])
def test_energy_rank_by_hand(share, k):
    assert R.energy_rank(S, share) == k


@pytest.mark.parametrize("err,k", [(0.6, 1), (0.3, 2), (math.sqrt(1 / 14), 2), (0.25, 3), (0.0, 3)])
def test_fro_error_rank_by_hand(err, k):
    # relative errors of the truncations: k=1 sqrt(5/14) = 0.598, k=2 sqrt(1/14) = 0.267, k=3 0
    assert R.fro_error_rank(S, err) == k


@pytest.mark.parametrize("ratio,k", [(1.0, 1), (1.4, 1), (2.0, 2), (3.0, 2), (3.01, 3), (100, 3)])
def test_sv_ratio_rank_by_hand(ratio, k):
    assert R.sv_ratio_rank(S, ratio) == k  # σ_i > σ_1 / ratio, strictly (kohya)


def test_knee_by_hand():
    assert R.knee_rank([10, 9, 8, 1, 1, 1]) == 3  # three large values, then the flat tail
    assert R.knee_rank([10, 1, 1, 1, 1]) == 1
    assert R.knee_rank([5, 5, 5, 5]) == 4  # flat: no knee, keep all
    assert R.knee_rank([4, 3, 2, 1]) == 4  # linear: no point below the chord
    assert R.knee_rank([7.0]) == 1


def test_effective_rank_by_hand():
    assert R.effective_rank_rank([1, 1, 1, 1]) == 4
    p = np.array([2, 1]) / 3
    assert round(math.exp(-(p * np.log(p)).sum()), 3) == 1.890
    assert R.effective_rank_rank([2, 1]) == 2


def test_zero_update_and_zero_padding():
    for name in R.POLICIES:
        p = R.policy(name, 4 if name == "rank" else None)
        assert p.rank([0.0, 0.0]) == 0 and p.rank([]) == 0
        assert p.rank([3.0, 2.0, 1.0, 0.0, 0.0]) == p.rank([1.0, 3.0, 2.0])  # order and exact zeros do not matter
    assert math.isnan(R.kept_energy([0.0], 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eckart_young_against_numpy_truncation(seed):
    g = np.random.default_rng(seed)
    M = g.standard_normal((40, 25)) @ np.diag(np.geomspace(1, 1e-3, 25)) @ g.standard_normal((25, 25))
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    for k in (1, 5, 12, 25):
        Mk = (U[:, :k] * s[:k]) @ Vt[:k]
        assert R.relative_error(s, k) == pytest.approx(np.linalg.norm(M - Mk) / np.linalg.norm(M), rel=1e-9, abs=1e-12)
        assert R.kept_energy(s, k) == pytest.approx(np.linalg.norm(Mk) ** 2 / np.linalg.norm(M) ** 2, rel=1e-12)
    for err in (0.5, 0.1, 0.01):  # minimal k meeting the bound
        k = R.fro_error_rank(s, err)
        assert R.relative_error(s, k) <= err < R.relative_error(s, k - 1)
    for share in (0.5, 0.9, 0.999):
        k = R.energy_rank(s, share)
        assert R.kept_energy(s, k) >= share > R.kept_energy(s, k - 1)


def test_policy_parsing_and_validation():
    assert R.policy("fro-error") == R.Policy("fro_error", 0.1)
    assert R.policy("energy").label == "energy=0.9" and R.policy("rank", 8).label == "rank=8"
    assert R.policy("knee").value is None
    assert R.Policy("energy", 0.99).rank(S, max_rank=1) == 1
    for bad in [("energy", 0.0), ("energy", 1.5), ("fro_error", 1.0), ("sv_ratio", 0.5), ("rank", -1), ("nope", None)]:
        with pytest.raises(DeltaspecError):
            R.policy(*bad)
    with pytest.raises(DeltaspecError):
        R.policy("rank")  # needs a value


def test_new_alpha_and_layer_alphas():
    assert R.new_alpha(4, "ratio", 32.0, 2.0) == 8.0  # α/r = 2 kept
    assert R.new_alpha(4, "alpha", 32.0, 2.0) == 32.0
    assert R.new_alpha(4, "ratio", None, None) == 4.0  # no source scale: scale 1
    got = R.layer_alphas({"a": 4, "b": 4, "c": 2, "z": 0}, "alpha")  # no source α: one α, the common rank
    assert got == {"a": 4.0, "b": 4.0, "c": 4.0, "z": 4.0}
    with pytest.raises(DeltaspecError):
        R.new_alpha(4, "both", 1.0, 1.0)
