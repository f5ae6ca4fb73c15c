"""Share layers across processes launched by `torchrun` (PyTorch's own distributed engine).

Each rank analyses a cost-balanced share of the layers on its own device; `gather` collects every
rank's results in the original layer order, so all ranks end with the same result as a single-process
run, and the CLI lets rank 0 write it. Without torch.distributed initialised, everything is a no-op.

    torchrun --nproc_per_node=4 -m deltaspec_cli.main analyze CKPT -o spectra.json
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes in the environment; return this rank's device.

    NCCL when every rank has a GPU (each takes cuda:LOCAL_RANK), gloo on CPU.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def is_main() -> bool:
    return not active() or dist.get_rank() == 0


def _cost(u) -> float:
    d, k = u.shape
    if u.kind == "dense":
        return float(d) * k * min(d, k)
    return float(d + k) * u.rank_bound**2


def assignment(layers: Sequence, world: int) -> list[int]:
    """Rank of each layer: longest-processing-time-first greedy on an SVD cost model (deterministic)."""
    load = [0.0] * world
    owner = [0] * len(layers)
    for i in sorted(range(len(layers)), key=lambda i: (-_cost(layers[i]), i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += _cost(layers[i])
    return owner


def my_share(layers: Sequence) -> list:
    """The layers this rank analyses (all of them when not distributed)."""
    if not active():
        return list(layers)
    owner, rank = assignment(layers, dist.get_world_size()), dist.get_rank()
    return [u for u, r in zip(layers, owner) if r == rank]


def gather(results: list, layers: Sequence) -> list:
    """Every rank's results, reassembled in the order of `layers` (identity when not distributed)."""
    if not active():
        return results
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {r.name: r for r in results})
    merged = {}
    for p in parts:
        merged.update(p)
    return [merged[u.name] for u in layers]


def finish() -> None:
    """Wait for every rank, then leave the process group cleanly (an abandoned gloo group can abort
    the process at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
