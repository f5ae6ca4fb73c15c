"""Accuracy and speed of torch's CUDA SVD drivers in float32 against a float64 reference (GPU machine).

    python benchmarks/cuda_drivers.py
"""
import time

import torch


def matrices(g):
    yield "flat 4096x4096 (random)", torch.randn(4096, 4096, generator=g, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(4096, 4096, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4096, 4096, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -6, 4096, dtype=torch.float64)
    yield "decaying 4096x4096 (1 .. 1e-6)", (U * s) @ V.T
    yield "flat 11008x4096 (random)", torch.randn(11008, 4096, generator=g, dtype=torch.float64)


def main():
    g = torch.Generator().manual_seed(0)
    for name, M64 in matrices(g):
        ref = torch.linalg.svdvals(M64.cuda(), driver="gesvd").cpu()
        M = M64.float().cuda()
        for drv in [None, "gesvd", "gesvdj", "gesvda"]:
            torch.linalg.svdvals(M, driver=drv)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            s = torch.linalg.svdvals(M, driver=drv)
            torch.cuda.synchronize()
            t = time.perf_counter() - t0
            err = float((s.double().cpu() - ref).abs().max() / ref[0])
            print(f"{name:32s} driver={str(drv):7s} {t:6.3f} s  max|err|/sigma_1 = {err:.2e}")
        t0 = time.perf_counter()
        s = torch.linalg.svdvals(M.cpu())
        err = float((s.double() - ref).abs().max() / ref[0])
        print(f"{name:32s} cpu float32     {time.perf_counter() - t0:6.3f} s  max|err|/sigma_1 = {err:.2e}")


if __name__ == "__main__":
    main()
