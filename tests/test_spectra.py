"""Spectra against independent ground truth: numpy.linalg.svd in float64 on the materialised ΔW.

Tolerance: max |σ − σ_ref| / σ_ref[0] ≤ 1e-4 in float32 mode, ≤ 1e-5 in float64 mode (observed
≈1e-7 and ≈1e-15), and every σ ≥ 1e-3·σ_1 also within that relative error of its own value.
"""
import numpy as np
import pytest
import torch

from deltaspec.errors import DeltaspecError
from deltaspec.spectra import factored_svd, gram_svdvals, pick_device, spectra_of, spectrum
from deltaspec.updates import Dense, LowRank, SumOfLowRank

TOL = {"float32": 1e-4, "float64": 1e-5}


def reference(update):
    """Float64 numpy singular values of the materialised update."""
    return np.linalg.svd(update.materialize().double().numpy(), compute_uv=False)


def assert_close(sigma, ref, tol):
    ref = ref[: len(sigma)]
    assert len(sigma) == len(ref)
    assert np.all(np.diff(sigma) <= 1e-12 * max(1.0, sigma[0]))  # descending
    assert np.max(np.abs(sigma - ref)) <= tol * ref[0]
    big = ref > 1e-3 * ref[0]
    assert np.all(np.abs(sigma[big] - ref[big]) <= tol * ref[big] * 10)


def lowrank(rng, d, k, r, scale=0.5, dtype=torch.float64):
    return LowRank(torch.randn(d, r, generator=rng, dtype=dtype), torch.randn(r, k, generator=rng, dtype=dtype), scale)


def multilora(rng, d, k, n, r, vector=True, dtype=torch.float64):
    terms = []
    for _ in range(n):
        s = torch.randn(d, generator=rng, dtype=dtype) if vector else float(torch.randn(1, generator=rng))
        terms.append((s, torch.randn(d, r, generator=rng, dtype=dtype), torch.randn(r, k, generator=rng, dtype=dtype)))
    return SumOfLowRank(terms)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (8, 100), (100, 8)])
def test_lowrank_matches_numpy(rng, dtype, shape):
    u = lowrank(rng, *shape, r=16)
    s = spectrum(u, dtype=dtype).sigma
    assert len(s) == min(16, *shape)  # rank-many values for a factored update
    assert_close(s, reference(u), TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("vector", [True, False])
def test_sum_of_lowrank_matches_numpy(rng, dtype, vector):
    u = multilora(rng, 72, 40, n=4, r=4, vector=vector)
    s = spectrum(u, dtype=dtype).sigma
    assert len(s) == 16
    assert_close(s, reference(u), TOL[dtype])


def test_rank_deficient_factors_give_zero_tail(rng):
    B = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    u = LowRank(torch.cat([B, B], 1), torch.randn(4, 30, generator=rng, dtype=torch.float64))
    s = spectrum(u, dtype="float64").sigma
    assert_close(s, reference(u), 1e-10)
    assert s[2] < 1e-10 * s[0] and s[3] < 1e-10 * s[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_batches_by_shape_and_keeps_keys(rng, dtype):
    mats = [torch.randn(*sh, generator=rng, dtype=torch.float64) for sh in [(20, 30), (30, 20), (20, 30), (5, 7), (20, 30)]]
    items = [(f"k{i}", Dense(m)) for i, m in enumerate(mats)]
    # A budget of two 20×30 matrices forces one full chunk and one leftover flush.
    out = dict(spectra_of(items, dtype=dtype, budget_bytes=2 * 20 * 30 * (4 if dtype == "float32" else 8)))
    assert sorted(out) == [f"k{i}" for i in range(5)]
    for key, update in items:
        assert_close(out[key].sigma, reference(update), TOL[dtype])


def test_mixed_stream_and_progress_callback(rng):
    items = [("a", lowrank(rng, 30, 20, 4)), ("b", Dense(torch.randn(30, 20, generator=rng, dtype=torch.float64))),
             ("c", multilora(rng, 30, 20, 2, 3))]
    seen = []
    out = dict(spectra_of(items, dtype="float64", on_done=seen.append))
    assert sorted(seen) == ["a", "b", "c"] and set(out) == {"a", "b", "c"}
    for key, u in items:
        assert_close(out[key].sigma, reference(u), 1e-10)


@pytest.mark.parametrize("make", [lambda g: lowrank(g, 40, 25, 6), lambda g: multilora(g, 40, 25, 3, 2),
                                  lambda g: Dense(torch.randn(40, 25, generator=g, dtype=torch.float64))])
def test_singular_vectors_reconstruct_update(rng, make):
    u = make(rng)
    spec = spectrum(u, dtype="float64", vectors=True)
    U, V, S = spec.U, spec.V, torch.as_tensor(spec.sigma)
    assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=U.dtype), atol=1e-10)
    assert torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=V.dtype), atol=1e-10)
    assert torch.allclose((U * S) @ V.T, u.materialize(), atol=1e-9 * float(S[0]))


def test_vectors_are_off_by_default(rng):
    spec = spectrum(lowrank(rng, 10, 10, 2))
    assert spec.U is None and spec.V is None


def test_factored_svd_is_batched(rng):
    L = torch.randn(3, 20, 4, generator=rng, dtype=torch.float64)
    R = torch.randn(3, 4, 15, generator=rng, dtype=torch.float64)
    S, _, _ = factored_svd(L, R)
    for i in range(3):
        ref = np.linalg.svd((L[i] @ R[i]).numpy(), compute_uv=False)[:4]
        np.testing.assert_allclose(S[i].numpy(), ref, rtol=1e-10)


def test_float32_mode_upcasts_half_inputs(rng):
    u = LowRank(torch.randn(30, 4, generator=rng).bfloat16(), torch.randn(4, 20, generator=rng).bfloat16())
    s = spectrum(u, dtype="float32").sigma
    assert_close(s, reference(LowRank(u.B.double(), u.A.double())), 1e-4)


def with_spectrum(rng, m, n, sigma):
    """An m×n float64 matrix with exactly these singular values (random singular vectors)."""
    U, _ = torch.linalg.qr(torch.randn(m, len(sigma), generator=rng, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=rng, dtype=torch.float64))
    return (U * torch.as_tensor(sigma, dtype=torch.float64)) @ V.T


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256)])
def test_gram_eigensolver_beats_float32_lapack(rng, shape):
    """The CPU float32 path (σ from the float64 Gram) on spectra spanning 6 decades, exactly low rank,
    and flat: within 1e-6 of every σ ≥ 1e-4·σ_1 (float32 LAPACK: up to ~1e-4), zeros within 1e-6·σ_1."""
    n = min(shape)
    for sigma in (np.logspace(0, -6, n), np.r_[np.logspace(0, -2, 10), np.zeros(n - 10)], np.ones(n)):
        M = with_spectrum(rng, *shape, sigma).float()
        ref = np.linalg.svd(M.double().numpy(), compute_uv=False)
        got = gram_svdvals(M).double().numpy()
        big = ref >= 1e-4 * ref[0]
        assert np.max(np.abs(got - ref)) <= 1e-6 * ref[0]
        assert np.max(np.abs(got - ref)[big] / ref[big]) <= 1e-6
        out = spectrum(Dense(M), device="cpu", dtype="float32").sigma  # the path spectra_of takes
        np.testing.assert_array_equal(out, got)


def test_gram_eigensolver_batched_and_zero(rng):
    M = torch.randn(3, 40, 70, generator=rng)
    got = gram_svdvals(M)
    assert got.shape == (3, 40) and got.dtype == torch.float32
    for i in range(3):
        ref = np.linalg.svd(M[i].double().numpy(), compute_uv=False)
        assert np.max(np.abs(got[i].double().numpy() - ref)) <= 1e-6 * ref[0]
    assert torch.equal(gram_svdvals(torch.zeros(5, 4)), torch.zeros(4))


def test_device_selection(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(DeltaspecError, match="no CUDA device"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda:1") == torch.device("cuda:1")


def test_bad_dtype_is_refused(rng):
    with pytest.raises(DeltaspecError, match="dtype='float16': expected 'float32' or 'float64'"):
        spectrum(lowrank(rng, 4, 4, 1), dtype="float16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng):
    items = [("a", lowrank(rng, 300, 200, 16)), ("b", Dense(torch.randn(300, 200, generator=rng, dtype=torch.float64)))]
    cpu = dict(spectra_of(items, device="cpu", dtype="float64"))
    gpu = dict(spectra_of(items, device="cuda", dtype="float64"))
    for k in cpu:
        np.testing.assert_allclose(gpu[k].sigma, cpu[k].sigma, rtol=1e-9, atol=1e-12 * cpu[k].sigma[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (64, 64), (520, 2048), (2048, 520)])
def test_cuda_dense_float32_within_tolerance(rng, shape):
    """The cuSOLVER driver deltaspec picks (gesvda) keeps float32 within 1e-4·σ_1, batched, both orientations."""
    mats = [Dense(torch.randn(*shape, generator=rng, dtype=torch.float64)) for _ in range(3)]
    out = dict(spectra_of(list(enumerate(mats)), device="cuda", dtype="float32"))
    for i, u in enumerate(mats):
        assert_close(out[i].sigma, reference(u), 1e-4)
    spec = spectrum(mats[0], device="cuda", dtype="float32", vectors=True)
    rebuilt = (spec.U.double() * torch.as_tensor(spec.sigma)) @ spec.V.double().T
    assert torch.allclose(rebuilt, mats[0].delta, atol=1e-4 * float(spec.sigma[0]))


def test_float64_dense_values_use_lapack_and_match_numpy(rng, monkeypatch):
    """--dtype float64 without vectors: scipy's LAPACK gesdd (faster than torch's float64 svdvals, see
    benchmarks/bench_full.py), batched by shape, to float64 accuracy (1e-13·σ_1), inputs untouched."""
    import deltaspec.spectra as S

    calls = []
    real = S.lapack_svdvals
    monkeypatch.setattr(S, "lapack_svdvals", lambda M: calls.append(tuple(M.shape)) or real(M))
    mats = [torch.randn(*sh, generator=rng, dtype=torch.float64) for sh in [(40, 25), (25, 40), (40, 25)]]
    mats[0][:, :3] *= 1e4  # a wide spread of singular values
    kept = [m.clone() for m in mats]
    out = dict(spectra_of([(i, Dense(m)) for i, m in enumerate(mats)], "cpu", "float64"))
    for i, m in enumerate(kept):
        ref = np.linalg.svd(m.numpy(), compute_uv=False)
        assert np.max(np.abs(out[i].sigma - ref)) <= 1e-13 * ref[0]
        assert torch.equal(mats[i], m)
    assert sorted(calls) == [(1, 25, 40), (2, 40, 25)]  # one batch per shape
