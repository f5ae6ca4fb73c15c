"""Metrics on hand-computable spectra, invariances, and numpy cross-checks (DESIGN §3)."""
import doctest
import math

import numpy as np
import pytest

import deltaspec.metrics as M


def test_doctests():
    assert doctest.testmod(M).failed == 0


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_equal_singular_values(n):
    s = np.full(n, 2.5)
    assert M.effective_rank(s) == pytest.approx(n)
    assert M.stable_rank(s) == pytest.approx(n)
    assert M.participation_ratio(s) == pytest.approx(n)
    assert M.spectral_entropy(s) == pytest.approx(math.log(n))
    assert M.energy_entropy(s) == pytest.approx(math.log(n))
    assert M.top_k_energy(s, 1) == pytest.approx(1 / n)
    if n > 1:
        assert M.normalized_entropy(s, n) == pytest.approx(1.0)
    assert M.condition_number(s, 1e-6) == pytest.approx(1.0)
    assert M.numerical_rank(s, 1e-6) == n


def test_single_nonzero_value():
    s = [0.0, 5.0, 0.0, 0.0]
    assert M.effective_rank(s) == 1.0
    assert M.normalized_entropy(s, 4) == 0.0
    assert M.top_k_energy(s, 1) == 1.0
    assert M.stable_rank(s) == 1.0 and M.participation_ratio(s) == 1.0
    assert M.numerical_rank(s, 1e-6) == 1 and M.condition_number(s, 1e-6) == 1.0
    assert (M.frobenius_norm(s), M.spectral_norm(s), M.nuclear_norm(s)) == (5.0, 5.0, 5.0)


def test_hand_computed_values():
    s = [3.0, 1.0]  # p = (3/4, 1/4); energy (9/10, 1/10)
    H = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert M.spectral_entropy(s) == pytest.approx(H)
    assert M.effective_rank(s) == pytest.approx(math.exp(H))
    assert M.normalized_entropy(s, 8) == pytest.approx(H / math.log(8))
    assert M.energy_entropy(s) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert M.top_k_energy(s, 1) == pytest.approx(0.9)
    assert M.stable_rank(s) == pytest.approx(10 / 9)
    assert M.participation_ratio(s) == pytest.approx(100 / 82)
    assert M.frobenius_norm(s) == pytest.approx(math.sqrt(10))
    assert M.nuclear_norm(s) == 4.0 and M.condition_number(s, 1e-6) == 3.0


def test_scale_and_order_and_padding_invariance():
    rng = np.random.default_rng(0)
    s = rng.random(12)
    shape_metrics = [M.spectral_entropy, M.effective_rank, M.energy_entropy, M.stable_rank, M.participation_ratio,
                     lambda x: M.top_k_energy(x, 3), lambda x: M.normalized_entropy(x, 100)]
    for f in shape_metrics:
        assert f(s * 17.0) == pytest.approx(f(s))
        assert f(s[::-1]) == pytest.approx(f(s))
        assert f(np.concatenate([s, np.zeros(30)])) == pytest.approx(f(s))
    assert M.frobenius_norm(3 * s) == pytest.approx(3 * M.frobenius_norm(s))


def test_norms_match_numpy():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((9, 6))
    s = np.linalg.svd(A, compute_uv=False)
    assert M.frobenius_norm(s) == pytest.approx(np.linalg.norm(A, "fro"))
    assert M.spectral_norm(s) == pytest.approx(np.linalg.norm(A, 2))
    assert M.nuclear_norm(s) == pytest.approx(np.linalg.norm(A, "nuc"))
    assert M.condition_number(s, 1e-12) == pytest.approx(np.linalg.cond(A))


def test_numerical_rank_matches_numpy_default():
    rng = np.random.default_rng(2)
    A = (rng.standard_normal((40, 5)) @ rng.standard_normal((5, 30))).astype(np.float32)
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    tol = M.default_rtol(A.shape, np.finfo(np.float32).eps)
    assert M.numerical_rank(np.linalg.svd(A, compute_uv=False), tol) == np.linalg.matrix_rank(A) == 5
    assert M.numerical_rank(s, tol) == 5


def test_zero_update_is_nan_not_zero():
    z = np.zeros(5)
    for f in [M.spectral_entropy, M.effective_rank, M.energy_entropy, M.stable_rank, M.participation_ratio,
              lambda x: M.top_k_energy(x, 1), lambda x: M.normalized_entropy(x, 5), lambda x: M.condition_number(x, 1e-6)]:
        assert math.isnan(f(z))
    assert M.numerical_rank(z, 1e-6) == 0 and M.frobenius_norm(z) == 0.0


def test_all_metrics_names_and_topk():
    out = M.all_metrics([3.0, 2.0, 1.0], shape=(10, 8), eps=1e-7, n_ref=8, top_k=(1, 2))
    assert {"top1_energy", "top2_energy", "normalized_entropy", "condition_number"} <= set(out)
    assert out["normalized_entropy"] == pytest.approx(M.spectral_entropy([3, 2, 1]) / math.log(8))
