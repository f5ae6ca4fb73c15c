"""Randomized top-k singular values (deltaspec.truncated): the stated bounds hold, against numpy float64.

Matrices with known spectra U diag(s) Vᵀ: exact low rank, fast (geometric) decay, power-law decay,
slow decay, and a full-fine-tuning-like spike + bulk. For each, with σ from numpy's float64 SVD of
the very matrix passed in:  σ̃_i ≤ σ_i ≤ upper_i  (up to rounding), and the documented accuracy.
"""
import math

import numpy as np
import pytest
import torch

from deltaspec.truncated import topk_svdvals

M_ROWS, N_COLS, K = 300, 200, 16


def _orthonormal(rows, cols, g):
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64)).Q


def _spectrum(kind: str, n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    if kind == "lowrank":  # rank 6 < l = k + p
        return torch.where(i < 6, 6.0 - i, torch.zeros_like(i))
    if kind == "fast":
        return 0.7 ** i
    if kind == "power":
        return (1 + i) ** -2.0
    if kind == "slow":
        return (1 + i) ** -0.5
    if kind == "spike+bulk":  # a few large directions over a flat bulk, like full FT deltas
        return torch.where(i < 8, 10.0 / (1 + i), 0.05 * (1 - i / (2 * n)))
    raise ValueError(kind)


def _matrix(kind, dtype, m=M_ROWS, n=N_COLS, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    s = _spectrum(kind, r)
    M = (_orthonormal(m, r, g) * s) @ _orthonormal(n, r, g).T
    return M.to(dtype)


def _reference(M: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(M.double().numpy(), compute_uv=False)


TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # rounding slack, relative to σ_1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["lowrank", "fast", "power", "slow", "spike+bulk"])
def test_bounds_hold(kind, dtype):
    M = _matrix(kind, dtype)
    ref = _reference(M)[:K]
    r = topk_svdvals(M, K)
    s, up = r.sigma.double().numpy(), r.upper.numpy()
    slack = TOL[dtype] * ref[0]
    assert s.shape == (K,) and np.all(np.diff(s) <= slack)
    assert np.all(s <= ref + slack), "σ̃_i must not exceed σ_i"
    assert np.all(ref <= up + slack), "σ_i must not exceed sqrt(σ̃_i² + δ²)"
    nz = ref > 1e-8 * ref[0]
    rel = np.abs(ref - s)[nz] / ref[nz]
    assert np.all(rel <= r.relative_error_bound().numpy()[nz] + TOL[dtype] * ref[0] / ref[nz])
    # ‖M‖_F exact; the top-k energy share lies between the bounds
    fro = np.linalg.norm(M.double().numpy())
    assert r.frobenius.item() == pytest.approx(fro, rel=1e-6 if dtype == torch.float32 else 1e-12)
    all_sv = _reference(M)
    share = (all_sv[:K] ** 2).sum() / fro**2
    assert (s**2).sum() / fro**2 <= share + 1e-6 and share <= (up**2).sum() / fro**2 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_for_low_rank(dtype):
    M = _matrix("lowrank", dtype)
    r = topk_svdvals(M, 6)
    ref = _reference(M)[:6]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(r.sigma.double().numpy(), ref, rtol=tol)
    assert r.residual.item() <= tol * r.frobenius.item()
    assert r.energy_captured.item() == pytest.approx(1.0, abs=2 * tol)


def test_fast_decay_meets_1e4():
    """The documented accuracy: relative error ≤ 1e-4 on σ_1..σ_k for a fast-decaying spectrum, and
    the certified bound itself ≤ 1e-3 there."""
    M = _matrix("fast", torch.float32)
    ref = _reference(M)[:K]
    r = topk_svdvals(M, K)
    rel = np.abs(ref - r.sigma.double().numpy()) / ref
    assert rel.max() <= 1e-4
    assert r.relative_error_bound().max().item() <= 1e-3


def test_power_iterations_tighten_slow_decay():
    M = _matrix("slow", torch.float64)
    ref = _reference(M)[:K]
    errs = []
    for q in (0, 2, 6):
        r = topk_svdvals(M, K, power_iters=q)
        errs.append(np.max(np.abs(ref - r.sigma.numpy()) / ref))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01


def test_batched_wide_deterministic():
    Ms = torch.stack([_matrix("power", torch.float32, seed=s).T for s in range(3)])  # (3, 200, 300): wide
    r = topk_svdvals(Ms, 8, seed=7)
    assert r.sigma.shape == (3, 8) and r.upper.shape == (3, 8) and r.residual.shape == (3,)
    for b in range(3):
        one = topk_svdvals(Ms[b], 8, seed=7)
        torch.testing.assert_close(r.sigma[b], one.sigma, rtol=1e-5, atol=1e-7)
        ref = _reference(Ms[b])[:8]
        assert np.max(np.abs(ref - r.sigma[b].double().numpy()) / ref) <= 1e-4
    again = topk_svdvals(Ms, 8, seed=7)
    assert torch.equal(again.sigma, r.sigma)


def test_k_capped_zero_matrix_and_errors():
    M = _matrix("slow", torch.float64, m=20, n=12)
    r = topk_svdvals(M, 50)  # k > min(m, n): all singular values, exact
    np.testing.assert_allclose(r.sigma.numpy(), _reference(M), rtol=1e-12)
    assert r.residual.item() <= 1e-12 * r.frobenius.item()
    z = topk_svdvals(torch.zeros(30, 20), 4)
    assert torch.all(z.sigma == 0) and torch.all(z.upper == 0) and z.energy_captured.item() == 1.0
    assert torch.all(z.relative_error_bound() == 0)
    bf = topk_svdvals(_matrix("fast", torch.float32).bfloat16(), 4)  # half precision is upcast
    assert bf.sigma.dtype == torch.float32
    with pytest.raises(ValueError):
        topk_svdvals(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        topk_svdvals(M, 0)
    with pytest.raises(ValueError):
        topk_svdvals(M, 2, oversample=-1)


def test_bound_formula_matches_docstring():
    """upper = sqrt(σ̃² + δ²) and the relative bound ≤ δ²/(2σ̃²)."""
    M = _matrix("power", torch.float64)
    r = topk_svdvals(M, K, power_iters=0)
    s, d = r.sigma.numpy(), r.residual.item()
    np.testing.assert_allclose(r.upper.numpy(), np.sqrt(s**2 + d**2), rtol=1e-14)
    assert np.all(r.relative_error_bound().numpy() <= d**2 / (2 * s**2) + 1e-15)
    assert math.isclose(r.energy_captured.item(), 1 - d**2 / r.frobenius.item() ** 2, rel_tol=1e-12)


def test_defaults_on_finetuning_like_spectrum():
    """σ_i ∝ 1/i running into a flat bulk (the shape of full fine-tuning deltas, see benchmarks/README.md):
    with the defaults (p = k, q = 4) the top half of the k values is accurate to 1e-4, the values at
    the bulk edge are not (the bound says so), and everything stays inside the certified bounds."""
    n = N_COLS
    i = torch.arange(n, dtype=torch.float64)
    s = torch.maximum(1.0 / (1 + i), torch.full_like(i, 0.03) * (1 - i / (2 * n)))
    g = torch.Generator().manual_seed(5)
    M = ((_orthonormal(M_ROWS, n, g) * s) @ _orthonormal(n, n, g).T).float()
    ref = _reference(M)[:32]
    r = topk_svdvals(M, 32)
    rel = np.abs(ref - r.sigma.double().numpy()) / ref
    assert rel[:16].max() <= 1e-4
    assert np.all(ref <= r.upper.numpy() * (1 + 1e-5)) and np.all(r.sigma.double().numpy() <= ref * (1 + 1e-5))
