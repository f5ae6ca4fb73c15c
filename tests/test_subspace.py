"""subspace.py against hand-built cases: φ of identical/orthogonal subspaces, a known amplified
direction of W0, a planted intruder dimension (and none for a tiny update)."""
import numpy as np
import pytest
import torch

import deltaspec as ds
from deltaspec.spectra import spectrum
from deltaspec.subspace import (amplification_factor, intruder_dimensions, layer_subspace, similarity_grid,
                                subspace_similarity)
from deltaspec.updates import LayerUpdate, LowRank, Updates


def orth(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:, :k]


def test_similarity_identical_orthogonal_partial():
    Q = orth(20, 10, 0)
    assert subspace_similarity(Q, Q, 6, 6) == pytest.approx(1.0)
    assert subspace_similarity(Q[:, :4], Q[:, 4:8], 4, 4) == pytest.approx(0.0, abs=1e-12)
    # same subspace, another basis (rotation inside it): still 1
    R = orth(5, 5, 1)
    assert subspace_similarity(Q[:, :5], Q[:, :5] @ R, 5, 5) == pytest.approx(1.0)
    # span(e1, e2) vs span(e1, e3): half shared
    E = torch.eye(6)
    assert subspace_similarity(E[:, [0, 1]], E[:, [0, 2]], 2, 2) == pytest.approx(0.5)
    assert subspace_similarity(E[:, [0, 1]], E[:, [0, 2]], 1, 1) == pytest.approx(1.0)


def test_grid_matches_direct_definition():
    A, B = orth(16, 6, 2), orth(16, 5, 3)
    G = similarity_grid(A, B)
    assert G.shape == (6, 5)
    for i, j in [(1, 1), (3, 2), (6, 5), (2, 5)]:
        assert G[i - 1, j - 1] == pytest.approx(subspace_similarity(A, B, i, j))
    assert similarity_grid(A, B, 3, 2).shape == (3, 2)
    assert ((G >= -1e-12) & (G <= 1 + 1e-12)).all()
    with pytest.raises(ValueError):
        subspace_similarity(A, orth(8, 3, 4), 1, 1)


def base_weight(n=24, seed=5):
    U0, V0 = orth(n, n, seed), orth(n, n, seed + 1)
    s0 = torch.linspace(10, 1, n, dtype=torch.float64)  # gaps of ~0.4: stable singular vectors
    return (U0 * s0) @ V0.T, U0, V0, s0


def test_amplification_of_a_known_direction():
    W0, U0, V0, s0 = base_weight()
    # ΔW = 3 · u_weakest v_weakestᵀ amplifies W0's weakest direction (σ = 1): factor 3 / 1
    weak = spectrum(LowRank(3 * U0[:, -1:], V0[:, -1:].T), dtype="float64", vectors=True)
    a = amplification_factor(weak.U, weak.V, weak.sigma, W0)
    assert a.r == 1 and a.factor == pytest.approx(3.0) and a.projected_norm == pytest.approx(1.0)
    assert a.delta_norm == pytest.approx(3.0) and a.base_norm == pytest.approx(float(torch.linalg.norm(W0)))
    # along the strongest direction (σ = 10): 3 / 10, much less amplification
    strong = spectrum(LowRank(3 * U0[:, :1], V0[:, :1].T), dtype="float64", vectors=True)
    assert amplification_factor(strong.U, strong.V, strong.sigma, W0).factor == pytest.approx(0.3)
    # rank 2 over W0's two weakest directions: ‖ΔW‖_F / ‖diag(σ_{n-1}, σ_n)‖_F
    two = spectrum(LowRank(U0[:, -2:] * torch.tensor([4.0, 2.0], dtype=torch.float64), V0[:, -2:].T),
                   dtype="float64", vectors=True)
    want = np.sqrt(16 + 4) / float(torch.linalg.norm(s0[-2:]))
    assert amplification_factor(two.U, two.V, two.sigma, W0).factor == pytest.approx(want)
    with pytest.raises(ValueError, match="shape"):
        amplification_factor(two.U, two.V, two.sigma, W0[:, :5])


def test_planted_intruder_found_none_for_tiny_update():
    W0, U0, V0, _ = base_weight()
    x = U0[:, :8].sum(1) / np.sqrt(8)  # |cos| = 0.354 with 8 of W0's vectors, 0 with the rest
    y = V0[:, -1]  # W0 y = 1 · u_last, orthogonal to x: ΔW adds a direction W0 does not have
    found = intruder_dimensions(W0, W0 + 100 * torch.outer(x, y), k=10, eps=0.5)
    assert found.count == 1 and list(found.indices) == [0]
    assert found.intruder_similarity[0] < 0.5 and found.intruder_sigma[0] > 90
    assert found.max_similarity.shape == (10,) and found.n_base == 24
    tiny = 1e-4 * torch.randn(24, 24, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    none = intruder_dimensions(W0, W0 + tiny, k=10, eps=0.5)
    assert none.count == 0 and (none.max_similarity > 0.99).all()


def test_layer_subspace_from_analysis():
    W0, U0, V0, _ = base_weight()
    g = torch.Generator().manual_seed(11)
    B, A = torch.randn(24, 4, generator=g, dtype=torch.float64), torch.randn(4, 24, generator=g, dtype=torch.float64)
    mk = lambda u, n: Updates([LayerUpdate("model.layers.0.self_attn.k_proj", (24, 24), "lowrank", n, lambda: u)], "x", "peft")
    same = [ds.analyze(mk(LowRank(B, A, s), 4), device="cpu", dtype="float64", vectors=True, progress=False)[0]
            for s in (1.0, 2.0)]
    rep = layer_subspace("k", ["a", "b"], same, W0, grid=4)
    assert rep.similarity["b"][3, 3] == pytest.approx(1.0) and rep.similarity["b"].shape == (4, 4)
    assert rep.amplification[1].factor == pytest.approx(2 * rep.amplification[0].factor)  # linear in ‖ΔW‖
    assert rep.intruders[0].k == 10
    assert layer_subspace("k", ["a", "b"], same, None).amplification == [None, None]
