"""CUDA path check and timings (run on a GPU machine): dense SVD drivers and batching at LLaMA-7B
shapes, and deltaspec end to end on a synthetic bf16 full fine-tune (2 layers) on cuda vs cpu.

    python benchmarks/cuda_probe.py [--layers 2] [--workdir /tmp/deltaspec-cuda]
"""
import argparse
import os
import time

import numpy as np
import torch
from safetensors.torch import save_file

import deltaspec as ds

SHAPES = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
          "gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    return min(t)


def drivers():
    print("== torch.linalg.svdvals on", torch.cuda.get_device_name(), "torch", torch.__version__)
    for shape in [(4096, 4096), (11008, 4096)]:
        M = torch.randn(*shape, device="cuda")
        for drv in [None, "gesvd", "gesvdj", "gesvda"]:
            try:
                t = timed(lambda: torch.linalg.svdvals(M, driver=drv))
                print(f"{shape} driver={drv}: {t:.3f} s")
            except Exception as e:  # noqa: BLE001
                print(f"{shape} driver={drv}: failed {type(e).__name__}: {str(e)[:80]}")
    B = torch.randn(4, 4096, 4096, device="cuda")
    print(f"batch of 4 4096^2: {timed(lambda: torch.linalg.svdvals(B)):.3f} s;"
          f" 4 singles: {timed(lambda: [torch.linalg.svdvals(B[i]) for i in range(4)]):.3f} s")
    C = torch.randn(4096, 4096)
    t0 = time.perf_counter(); torch.linalg.svdvals(C); print(f"cpu 4096^2 ({torch.get_num_threads()} threads): {time.perf_counter() - t0:.3f} s")
    Cb = C.bfloat16()
    t = timed(lambda: Cb.to("cuda", non_blocking=False).float())
    print(f"H2D copy of one bf16 4096^2 (pageable): {t * 1e3:.1f} ms")


def synth_full(workdir, layers):
    base, ft = os.path.join(workdir, "base"), os.path.join(workdir, "ft")
    if os.path.exists(os.path.join(ft, "model.safetensors")):
        return base, ft
    os.makedirs(base, exist_ok=True), os.makedirs(ft, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sb, sf = {}, {}
    for i in range(layers):
        for m, (o, k) in SHAPES.items():
            part = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"model.layers.{i}.{part}.{m}.weight"
            w = torch.randn(o, k, generator=g) * 0.02
            sb[key] = w.bfloat16()
            sf[key] = (w + 1e-3 * torch.randn(o, k, generator=g)).bfloat16()
    save_file(sb, os.path.join(base, "model.safetensors"))
    save_file(sf, os.path.join(ft, "model.safetensors"))
    return base, ft


def naive_gpu(base, ft):
    """What a user would write on a GPU: per weight, load both, subtract on the GPU, default svdvals."""
    from safetensors import safe_open
    t_svd, t0 = 0.0, time.perf_counter()
    with safe_open(os.path.join(base, "model.safetensors"), "pt") as fb, safe_open(os.path.join(ft, "model.safetensors"), "pt") as ff:
        for k in ff.keys():
            d = ff.get_tensor(k).cuda().float() - fb.get_tensor(k).cuda().float()
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            torch.linalg.svdvals(d).cpu()
            t_svd += time.perf_counter() - t1
    return time.perf_counter() - t0, t_svd


def end_to_end(workdir, layers):
    base, ft = synth_full(workdir, layers)
    total, svd = naive_gpu(base, ft)
    print(f"naive GPU loop (torch default driver), {layers} layers x 7: {total:.2f} s total, {svd:.2f} s in svdvals")
    out = {}
    for dev in ["cuda", "cpu"]:
        t0 = time.perf_counter()
        res = ds.analyze(ds.load(ft, base=base), device=dev)
        out[dev] = (time.perf_counter() - t0, res)
        print(f"full FT {layers} layers x 7 matrices, bf16, device={dev}: {out[dev][0]:.2f} s")
    err = max(np.max(np.abs(a.singular_values - b.singular_values)) / b.singular_values[0]
              for a, b in zip(out["cuda"][1].layers, out["cpu"][1].layers))
    print(f"max |sigma_cuda - sigma_cpu| / sigma_1 = {err:.2e}")
    # adapters: 224 rank-16 factored updates, in memory, cuda vs cpu
    g = torch.Generator().manual_seed(1)
    from deltaspec.updates import LayerUpdate, LowRank, Updates
    lay = []
    for i in range(32):
        for m, (o, k) in SHAPES.items():
            u = LowRank(torch.randn(o, 16, generator=g), torch.randn(16, k, generator=g), 2.0)
            lay.append(LayerUpdate(f"model.layers.{i}.{m}", (o, k), "lowrank", 16, lambda u=u: u))
    for dev in ["cuda", "cpu"]:
        ds.analyze(Updates(lay[:7], "mem", "peft"), device=dev)
        t0 = time.perf_counter()
        ds.analyze(Updates(lay, "mem", "peft"), device=dev)
        print(f"224 rank-16 factored updates (in memory), device={dev}: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/deltaspec-cuda")
    a = ap.parse_args()
    drivers()
    end_to_end(a.workdir, a.layers)
