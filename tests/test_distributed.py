"""Layers shared across 2 gloo processes give the same result as one process (issue 04 §3)."""
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import deltaspec as ds
from deltaspec import distributed
from deltaspec.updates import Dense, LayerUpdate, LowRank, Updates


def synthetic_updates() -> Updates:
    """Deterministic mix of dense and low-rank layers of different sizes (so the balancer has work)."""
    layers = []
    for i in range(3):
        for m, (d, k) in {"q_proj": (32, 32), "k_proj": (16, 32), "down_proj": (32, 48)}.items():
            seed = 100 * i + len(m)
            if m == "down_proj":
                load = lambda d=d, k=k, s=seed: Dense(torch.randn(d, k, generator=torch.Generator().manual_seed(s)))
                layers.append(LayerUpdate(f"model.layers.{i}.{m}", (d, k), "dense", min(d, k), load))
            else:
                def load(d=d, k=k, s=seed):
                    g = torch.Generator().manual_seed(s)
                    return LowRank(torch.randn(d, 4, generator=g), torch.randn(4, k, generator=g), 2.0)
                layers.append(LayerUpdate(f"model.layers.{i}.{m}", (d, k), "lowrank", 4, load))
    return Updates(layers, "synthetic", "test")


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        assert distributed.active()
        n_mine = len(distributed.my_share(list(synthetic_updates())))
        res = ds.analyze(synthetic_updates(), device="cpu")
        if rank == 0:
            with open(out, "w") as f:
                f.write(res.to_json())
        with open(f"{out}.{rank}", "w") as f:
            f.write(str(n_mine))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_assignment_balances_cost_and_covers_every_layer():
    layers = list(synthetic_updates())
    owner = distributed.assignment(layers, 2)
    assert sorted(set(owner)) == [0, 1]
    dense_owners = {owner[i] for i, u in enumerate(layers) if u.kind == "dense"}
    assert dense_owners == {0, 1}  # the three expensive layers are split, not all on one rank


def test_two_gloo_processes_match_single_process(tmp_path):
    out = str(tmp_path / "dist.json")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    shares = [int(open(f"{out}.{r}").read()) for r in range(2)]
    assert sum(shares) == 9 and min(shares) >= 1
    single = ds.analyze(synthetic_updates(), device="cpu")
    multi = ds.AnalysisResult.from_json(out)
    assert [r.name for r in multi.layers] == [r.name for r in single.layers]
    for a, b in zip(multi.layers, single.layers):
        np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-6)
        assert a.metrics.keys() == b.metrics.keys()
