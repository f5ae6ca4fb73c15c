"""Kronecker (LoKr) and face-splitting LoHa forms against numpy float64 SVD of the materialised ΔW.

Tolerances as in test_spectra.py: max |σ − σ_ref| ≤ 1e-4·σ_1 (float32), ≤ 1e-5·σ_1 (float64); vectors
reconstruct ΔW and are orthonormal.
"""
import numpy as np
import pytest
import torch

from deltaspec.spectra import spectra_of, spectrum
from deltaspec.updates import Dense, Kronecker, LowRank, hadamard_lowrank, is_factored

TOL = {"float32": 1e-4, "float64": 1e-5}


def rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def ref_sigma(M):
    return np.linalg.svd(M.double().numpy(), compute_uv=False)


def check(update, dtype, M=None):
    M = update.materialize() if M is None else M
    ref = ref_sigma(M)
    sp = spectrum(update, dtype=dtype, vectors=True)
    k = len(sp.sigma)
    assert np.all(np.diff(sp.sigma) <= 1e-12 * sp.sigma[0])
    assert np.max(np.abs(sp.sigma - ref[:k])) <= TOL[dtype] * ref[0]
    assert np.all(ref[k:] <= TOL[dtype] * ref[0])  # every value left out is zero
    U, V = sp.U.double(), sp.V.double()
    R = U @ torch.diag(torch.from_numpy(sp.sigma)) @ V.T
    assert float((R - M.double()).abs().max()) <= 10 * TOL[dtype] * ref[0]
    big = torch.from_numpy(sp.sigma > 1e-6 * sp.sigma[0])
    Ub, Vb = U[:, big], V[:, big]
    assert torch.allclose(Ub.T @ Ub, torch.eye(Ub.shape[1], dtype=torch.float64), atol=10 * TOL[dtype])
    assert torch.allclose(Vb.T @ Vb, torch.eye(Vb.shape[1], dtype=torch.float64), atol=10 * TOL[dtype])
    return sp


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kronecker_of_dense_and_lowrank(dtype):
    g = torch.Generator().manual_seed(0)
    k = Kronecker(rand(g, 4, 6), LowRank(rand(g, 8, 3), rand(g, 3, 5), 0.7), -1.5)
    M = -1.5 * torch.kron(k.W1.materialize(), 0.7 * k.W2.B @ k.W2.A)  # the formula, written out
    assert torch.allclose(k.materialize(), M)
    sp = check(k, dtype, M)
    assert k.shape == (32, 30) and len(sp.sigma) == 4 * 3 == k.rank_bound
    assert not is_factored(k)


def test_kronecker_sigma_is_all_products():
    g = torch.Generator().manual_seed(1)
    W1, W2 = rand(g, 3, 3), rand(g, 5, 2)
    s = spectrum(Kronecker(W1, W2, 2.0), dtype="float64").sigma
    want = np.sort(2.0 * np.outer(ref_sigma(W1), ref_sigma(W2)).ravel())[::-1]
    assert np.allclose(s, want, rtol=1e-12)


def test_kronecker_in_a_mixed_stream():
    g = torch.Generator().manual_seed(2)
    items = [("d", Dense(rand(g, 12, 10))), ("k", Kronecker(rand(g, 3, 2), rand(g, 4, 5))), ("l", LowRank(rand(g, 12, 2), rand(g, 2, 10)))]
    out = dict(spectra_of(items, dtype="float64"))
    for key, u in items:
        ref = ref_sigma(u.materialize())
        assert np.allclose(out[key].sigma, ref[: len(out[key].sigma)], atol=1e-10 * ref[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hadamard_lowrank_is_the_elementwise_product(dtype):
    g = torch.Generator().manual_seed(3)
    B1, A1, B2, A2 = rand(g, 20, 3), rand(g, 3, 14), rand(g, 20, 2), rand(g, 2, 14)
    u = hadamard_lowrank(B1, A1, B2, A2, 0.25)
    M = torch.empty(20, 14, dtype=torch.float64)
    for i in range(20):  # entry by entry
        for j in range(14):
            M[i, j] = 0.25 * float(B1[i] @ A1[:, j]) * float(B2[i] @ A2[:, j])
    assert torch.allclose(u.materialize(), M, atol=1e-12)
    assert isinstance(u, LowRank) and u.rank_bound == 6 and is_factored(u)
    check(u, dtype, M)


def test_hadamard_rank_beyond_the_shape():
    """r1·r2 > min(d_out, d_in): still exact (the factored SVD handles wide factors)."""
    g = torch.Generator().manual_seed(4)
    u = hadamard_lowrank(rand(g, 6, 4), rand(g, 4, 9), rand(g, 6, 4), rand(g, 4, 9))
    assert u.rank_bound == 6
    check(u, "float64")


def test_hadamard_shape_errors():
    g = torch.Generator().manual_seed(5)
    with pytest.raises(ValueError, match="hadamard_lowrank needs"):
        hadamard_lowrank(rand(g, 6, 4), rand(g, 4, 9), rand(g, 5, 4), rand(g, 4, 9))
