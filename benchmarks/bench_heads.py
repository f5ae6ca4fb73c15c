"""`heads` vs `analyze` on a LLaMA-7B-shaped MultiLoRA (4 heads x r 8 on all 7 projections of 32 layers).

    python benchmarks/bench_heads.py --layers 32 --threads 1 --repeat 5 --json heads.json

Target (issue 19, item 5): the per-head anatomy costs at most 2x the spectral analysis of the same
file. Each measurement runs in a fresh interpreter (benchmarks/harness.py); `heads` and `analyze`
runs alternate, so a change in machine load hits both alike. Timed: `ds.heads(ds.load(p))` and
`ds.analyze(ds.load(p))` after `import deltaspec` (torch imported), page cache warm; best and median of
--repeat. Also printed: how far the float32 anatomy is from a float64 run of the same file (largest
absolute difference of shares, interference and overlaps; largest relative difference of the heads'
σ), the accuracy users get by default.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import synth  # noqa: E402

HERE = os.path.abspath(__file__)


def task_run(path, what, threads=None, device="cpu"):
    harness.set_threads(threads)
    import deltaspec as ds

    t0 = time.perf_counter()
    u = ds.load(path)
    res = ds.heads(u, device=device, progress=False) if what == "heads" else ds.analyze(u, device=device, progress=False)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "layers": len(res.layers)}


def task_precision(path, threads=None, device="cpu"):
    harness.set_threads(threads)
    import numpy as np

    import deltaspec as ds

    a, b = (ds.heads(path, device=device, dtype=dt, progress=False) for dt in ("float32", "float64"))
    diff = {"share": 0.0, "interference": 0.0, "overlap": 0.0, "sigma_rel": 0.0}
    for x, y in zip(a, b):
        diff["share"] = max(diff["share"], float(np.abs(x.shares - y.shares).max()))
        diff["interference"] = max(diff["interference"], abs(x.metrics["interference"] - y.metrics["interference"]))
        for k in ("overlap_col", "overlap_row", "cos_col", "cos_row"):
            diff["overlap"] = max(diff["overlap"], float(np.nanmax(np.abs(getattr(x, k) - getattr(y, k)))))
        rel = np.abs(x.singular_values - y.singular_values) / y.singular_values[:, :1]
        diff["sigma_rel"] = max(diff["sigma_rel"], float(rel.max()))
    m = [lay.metrics for lay in b]
    diff["summary"] = {k: [min(v[k] for v in m), statistics.mean(v[k] for v in m), max(v[k] for v in m)]
                       for k in ("effective_heads", "interference", "overlap_col", "overlap_row")}
    return diff


TASKS = {"run": task_run, "precision": task_precision}


def main():
    if harness.worker_main(TASKS):
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (7B: 32; 7 projections each)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8, help="rank of each head")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every measured process")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (best and median are reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=synth.WORKDIR)
    ap.add_argument("--json", default=None, help="also write all numbers here")
    a = ap.parse_args()
    print(f"# {harness.machine_line()}; measured processes use {a.threads or 'default'} torch thread(s)", flush=True)
    path = str(synth.build_multilora(a.workdir, a.layers, heads=a.heads, r=a.rank))
    size = synth.dir_bytes(path)
    kw = dict(path=path, threads=a.threads, device=a.device)
    harness.worker(HERE, "run", what="analyze", **kw)  # warm the page cache
    runs = {"heads": [], "analyze": []}
    for _ in range(a.repeat):  # alternate, so load changes hit both
        for what in runs:
            runs[what].append(harness.worker(HERE, "run", what=what, **kw))
    prec = harness.worker(HERE, "precision", **kw)
    t = {w: [r["seconds"] for r in rs] for w, rs in runs.items()}
    rss = {w: max(r["vmhwm_bytes"] for r in rs) for w, rs in runs.items()}
    n = runs["heads"][0]["layers"]
    print(f"== MultiLoRA {a.heads} heads x r {a.rank}, {a.layers} layers x 7 projections = {n} matrices, "
          f"file {harness.mb(size)}, device {a.device}")
    for w in runs:
        print(f"{w:<8} best {min(t[w]):.3f} s  median {statistics.median(t[w]):.3f} s  peak RSS {harness.mb(rss[w])}"
              f"  runs {[round(x, 3) for x in t[w]]}")
    ratio, ratio_med = min(t["heads"]) / min(t["analyze"]), statistics.median(t["heads"]) / statistics.median(t["analyze"])
    print(f"ratio heads/analyze = {ratio:.2f}x best, {ratio_med:.2f}x median (target <= 2x)")
    print(f"float32 vs float64: max |Δ share| {prec['share']:.1e}, |Δ interference| {prec['interference']:.1e}, "
          f"|Δ overlap/cos| {prec['overlap']:.1e}, max relative Δσ (to the head's σ_1) {prec['sigma_rel']:.1e}")
    print("anatomy (min / mean / max over matrices): " + "; ".join(
        f"{k} {v[0]:.3g} / {v[1]:.3g} / {v[2]:.3g}" for k, v in prec["summary"].items()))
    harness.finish(a.json, {"machine": harness.machine_line(), "args": vars(a), "runs": runs, "precision": prec, "ratio_best": ratio, "ratio_median": ratio_med})


if __name__ == "__main__":
    main()
