"""deltaspec.ablation against float64 numpy on the materialised ΔW: rank-k truncation, top-k removal
and the random control, from the exact SVD deltaspec computes (factored for adapters, dense for FT)."""
import numpy as np
import pytest
import torch

from deltaspec import ablation as A
from deltaspec.errors import DeltaspecError
from deltaspec.spectra import spectrum
from deltaspec.updates import Dense, LowRank, SumOfLowRank

TOL = 1e-5  # relative to σ_1 (float32 factors; the SVD itself is float64)


def _updates():
    g = torch.Generator().manual_seed(3)
    B, Aa = torch.randn(48, 6, generator=g), torch.randn(6, 40, generator=g)
    Bs, As = torch.randn(3, 48, 2, generator=g), torch.randn(3, 2, 40, generator=g)
    S = torch.randn(3, 48, generator=g)
    return {"lora": LowRank(B, Aa, 0.5), "multilora": SumOfLowRank([(S[i], Bs[i], As[i]) for i in range(3)]),
            "dense": Dense(torch.randn(48, 40, generator=g) @ torch.diag(torch.linspace(2, 0.1, 40)))}


def _m64(u):
    """ΔW in float64 from the stored float32 factors (materialize() would round the product to float32)."""
    if isinstance(u, Dense):
        return u.delta.double().numpy()
    L, R = u.factors()
    return L.double().numpy() @ R.double().numpy()


def _numpy_svd(M):
    U, s, Vt = np.linalg.svd(M)
    return U, s, Vt


@pytest.mark.parametrize("kind", ["lora", "multilora", "dense"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_trunc_and_remove_match_numpy(kind, k):
    u = _updates()[kind]
    M = _m64(u)
    spec = spectrum(u, device="cpu", dtype="float64", vectors=True)
    U, s, Vt = _numpy_svd(M)
    ref = (U[:, :k] * s[:k]) @ Vt[:k]
    got = A.ablate(spec.sigma, spec.U.numpy(), spec.V.numpy(), "trunc", k).dense()
    assert np.abs(got - ref).max() <= TOL * s[0]
    rem = A.ablate(spec.sigma, spec.U.numpy(), spec.V.numpy(), "remove", k)
    assert np.abs(rem.dense() - (M - ref)).max() <= TOL * s[0]
    assert rem.removed_energy == pytest.approx((s[:k] ** 2).sum(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", ["lora", "multilora", "dense"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_random_control_removes_top_k_energy_in_row_space(kind, k):
    u = _updates()[kind]
    M = _m64(u)
    spec = spectrum(u, device="cpu", dtype="float64", vectors=True)
    U, s, Vt = _numpy_svd(M)
    a = A.ablate(spec.sigma, spec.U.numpy(), spec.V.numpy(), "random", k, seed=7)
    E = M - a.dense()  # what the control removed
    assert (E**2).sum() == pytest.approx((s[:k] ** 2).sum(), rel=1e-6)  # same energy as the top k
    assert a.removed_energy == pytest.approx((E**2).sum(), rel=1e-6)
    es = np.linalg.svd(E, compute_uv=False)
    assert (es[k:] <= 1e-9 * s[0]).all() and es[k - 1] > 1e-6 * s[0]  # rank k
    r = int((s > 1e-10 * s[0]).sum())
    P = Vt[:r].T @ Vt[:r]  # projector on ΔW's row space
    assert np.abs(E @ P - E).max() <= 1e-9 * s[0]
    assert a.scale >= 1.0
    # it is not the top-k removal (random directions), and the same seed gives the same matrix
    assert np.abs(a.dense() - (M - (U[:, :k] * s[:k]) @ Vt[:k])).max() > 1e-3 * s[0]
    b = A.ablate(spec.sigma, spec.U.numpy(), spec.V.numpy(), "random", k, seed=7)
    assert np.array_equal(a.dense(), b.dense())


def test_full_rank_ends():
    u = _updates()["lora"]
    spec = spectrum(u, device="cpu", dtype="float64", vectors=True)
    M = _m64(u)
    m = len(spec.sigma)
    args = (spec.sigma, spec.U.numpy(), spec.V.numpy())
    assert np.abs(A.ablate(*args, "trunc", m).dense() - M).max() <= TOL * spec.sigma[0]
    for mode in ("remove", "random"):
        assert np.abs(A.ablate(*args, mode, m).dense()).max() <= TOL * spec.sigma[0]


def test_random_frame_is_orthonormal_and_seeded():
    G = A.random_frame(9, 4, 1)
    assert np.allclose(G.T @ G, np.eye(4), atol=1e-12)
    assert np.array_equal(G, A.random_frame(9, 4, 1)) and not np.array_equal(G, A.random_frame(9, 4, 2))


def test_bad_k_and_mode():
    s = np.array([3.0, 2.0, 1.0])
    with pytest.raises(DeltaspecError, match="larger than the update's rank 3"):
        A.core(s, "trunc", 4)
    with pytest.raises(DeltaspecError, match="unknown ablation mode"):
        A.core(s, "keep", 1)
    C, c = A.core(np.zeros(3), "random", 2)  # a zero update stays zero
    assert c == 0.0 and not C.any()
