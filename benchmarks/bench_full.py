"""Full fine-tuning deltas at LLaMA-7B shapes (bf16, sharded): deltaspec vs the naive loop, peak memory,
and the truncated (--top-k) mode.

    python benchmarks/bench_full.py --layers 2 --naive-layers 2 --threads 1 --top-k 32 --json out.json

Every measurement runs in a fresh interpreter; peak memory is read there: VmHWM (all resident pages,
file-backed mmap pages included) and the peak of RssAnon (private memory, sampled every 5 ms).
  ds_api     ds.analyze(ds.load(ft, base=base)): exact singular values of every projection
  ds_cli     `deltaspec analyze FT --base BASE --format json -o FILE -q` (with --cli)
  naive      what a user would write: per weight, safe_open both shards, dW = ft.float() - base.float(),
             torch.linalg.svdvals(dW), one at a time; its pure SVD time is summed separately
  topk       the truncated mode, ds.analyze(..., svd_top_k=K) (CLI --top-k K); for non-default
             oversample/power_iters, the same reader + loader with deltaspec.truncated.topk_svdvals;
             its σ̃ are compared with ds_api's exact σ (and its certified bound reported)
  exact      ds_api's σ vs numpy float64 SVD of the same dW (one matrix, --check-module of layer 0)
  float64    `--dtype float64` (ds.analyze(dtype="float64")) on one matrix (--float64-module of layer 0) vs
             numpy.linalg.svd(compute_uv=False) and torch.linalg.svdvals in float64 on the same ΔW, same
             process, LAPACK threads = --threads (OMP/MKL/OPENBLAS_NUM_THREADS)
Memory target (issue 04): peak ≤ 3 layers' worth in float32 = 3 x 11008 x 4096 x 4 B = 541 MB, reported as
the peak minus that of a process that only imports torch + deltaspec; --mem-layers checks it does not
grow with the model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import synth  # noqa: E402

HERE = os.path.abspath(__file__)
TARGET_BYTES = 3 * synth.F32_LAYER_BYTES


# --------------------------------------------------------------------------- worker side

AnonPeak = harness.AnonPeak


def _setup(threads):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch


def _timed(fn):
    mon = AnonPeak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    res = {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    res["anon_peak_bytes"] = mon.stop()
    return out, res


def task_baseline(threads=None):
    _setup(threads)
    import deltaspec  # noqa: F401
    import safetensors.torch  # noqa: F401

    mon = AnonPeak()
    time.sleep(0.05)
    return {"anon_peak_bytes": mon.stop()}


def task_ds_api(ft, base, threads=None, out=None):
    _setup(threads)
    import deltaspec as ds

    res, m = _timed(lambda: ds.analyze(ds.load(ft, base=base), progress=False))
    if out:
        with open(out, "w") as fh:
            json.dump({L.name: [float(x) for x in L.singular_values] for L in res.layers}, fh)
    m["layers"] = len(res.layers)
    return m


def _weights(ft):
    idx = json.load(open(os.path.join(ft, "model.safetensors.index.json")))["weight_map"]
    return [(k, v) for k, v in idx.items() if ".layers." in k and k.endswith("_proj.weight")]


def task_naive(ft, base, naive_layers, threads=None):
    torch = _setup(threads)
    from safetensors import safe_open

    todo = [(k, s) for k, s in _weights(ft) if int(k.split(".")[2]) < naive_layers]
    t_load = t_svd = 0.0
    per_layer: dict[int, float] = {}

    def run():
        nonlocal t_load, t_svd
        for k, shard in todo:
            a = time.perf_counter()
            with safe_open(os.path.join(ft, shard), "pt") as f, safe_open(os.path.join(base, shard), "pt") as g:
                dW = f.get_tensor(k).float() - g.get_tensor(k).float()
            b = time.perf_counter()
            torch.linalg.svdvals(dW)
            c = time.perf_counter()
            t_load += b - a
            t_svd += c - b
            layer = int(k.split(".")[2])
            per_layer[layer] = per_layer.get(layer, 0.0) + c - a

    _, m = _timed(run)
    m.update(load_s=t_load, svd_s=t_svd, matrices=len(todo), per_layer_s=[per_layer[i] for i in sorted(per_layer)])
    return m


def task_topk(ft, base, k, oversample=None, power_iters=4, threads=None, out=None):
    """Truncated mode. With topk_svdvals's defaults this is the public API, ds.analyze(svd_top_k=k); other
    (oversample, power_iters) go through the same reader and loader with topk_svdvals called directly."""
    torch = _setup(threads)
    import deltaspec as ds
    from deltaspec.analysis import _loaded
    from deltaspec.truncated import topk_svdvals

    def run():
        if oversample is None and power_iters == 4:
            res = ds.analyze(ds.load(ft, base=base), svd_top_k=k, progress=False)
            return {L.name: {"sigma": [float(x) for x in L.singular_values], "upper": [float(x) for x in L.upper],
                             "energy_captured": None, "frobenius": L.metrics["frobenius_norm"]} for L in res.layers}
        layers = list(ds.load(ft, base=base))
        got = {}
        for i, upd in _loaded(layers, torch.device("cpu")):
            r = topk_svdvals(upd.delta, k, oversample=oversample, power_iters=power_iters)
            got[layers[i].name] = {"sigma": r.sigma.double().tolist(), "upper": r.upper.tolist(),
                                   "energy_captured": float(r.energy_captured), "frobenius": float(r.frobenius)}
        return got

    got, m = _timed(run)
    if out:
        with open(out, "w") as fh:
            json.dump(got, fh)
    m["layers"] = len(got)
    return m


def task_exact(ft, base, module, sigma_json, threads=None):
    _setup(threads)
    import numpy as np
    from safetensors import safe_open

    key = next(k for k, _ in _weights(ft) if k.startswith("model.layers.0.") and f".{module}." in k)
    shard = dict(_weights(ft))[key]
    with safe_open(os.path.join(ft, shard), "pt") as f, safe_open(os.path.join(base, shard), "pt") as g:
        dW = f.get_tensor(key).double().numpy() - g.get_tensor(key).double().numpy()
    t0 = time.perf_counter()
    ref = np.linalg.svd(dW, compute_uv=False)
    t_ref = time.perf_counter() - t0
    s = np.asarray(json.load(open(sigma_json))[key[: -len(".weight")]])
    err = np.abs(s - ref)
    big = ref >= 1e-3 * ref[0]
    return {"name": key, "ref_svd_s": t_ref, "max_err_over_sigma1": float(err.max() / ref[0]),
            "max_rel_err_top": float(np.max(err[:32] / ref[:32])),
            "max_rel_err_above_1e-3_sigma1": float(np.max(err[big] / ref[big])),
            "n": len(ref), "sigma1": float(ref[0]), "sigma_min_over_sigma1": float(ref[-1] / ref[0])}


def task_float64(ft, base, module, threads=None, repeat=1):
    """`--dtype float64` on one matrix (layer 0's `module`) against numpy's LAPACK path and torch's float64
    svdvals on the same ΔW, in one process (OpenBLAS/MKL threads from the environment: see _env)."""
    torch = _setup(threads)
    import numpy as np
    from safetensors import safe_open

    import deltaspec as ds

    k, shard = next((k, s) for k, s in _weights(ft) if k.startswith("model.layers.0.") and f".{module}." in k)
    with safe_open(os.path.join(ft, shard), "pt") as f, safe_open(os.path.join(base, shard), "pt") as g:
        dW = f.get_tensor(k).double() - g.get_tensor(k).double()
    u = ds.load(ft, base=base).select([module], [0])
    from deltaspec.spectra import spectrum
    from deltaspec.updates import Dense

    spectrum(Dense(torch.randn(8, 8, dtype=torch.float64)), "cpu", "float64")  # warm-up: lazy imports (scipy.linalg)
    runs = {"ds": lambda: ds.analyze(u, dtype="float64", progress=False).layers[0].singular_values,
            "numpy": lambda: np.linalg.svd(dW.numpy(), compute_uv=False),
            "torch": lambda: torch.linalg.svdvals(dW).numpy()}
    best, out = {}, {}
    for _ in range(repeat):  # interleaved, best of `repeat` each: a burst of load hits all three
        for name, fn in runs.items():
            out[name], t = _timed(fn)
            best[name] = min(best.get(name, t), t, key=lambda x: x["seconds"])
    s, ref, tt = out["ds"], out["numpy"], out["torch"]
    m, mn, mt = best["ds"], best["numpy"], best["torch"]
    return {"name": k, "shape": list(dW.shape), "ds_s": m["seconds"], "numpy_s": mn["seconds"], "torch_s": mt["seconds"],
            "ds_cpu_s": m["cpu_s"], "numpy_cpu_s": mn["cpu_s"], "torch_cpu_s": mt["cpu_s"], "repeat": repeat,
            "ds_max_err_over_sigma1": float(np.max(np.abs(s - ref)) / ref[0]),
            "torch_max_err_over_sigma1": float(np.max(np.abs(tt - ref)) / ref[0])}


TASKS = {"baseline": task_baseline, "ds_api": task_ds_api, "naive": task_naive, "topk": task_topk, "exact": task_exact,
         "float64": task_float64}


# --------------------------------------------------------------------------- driver

def _env(threads):
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return env


def topk_errors(exact_json, topk_json) -> dict:
    import numpy as np

    ex, tk = json.load(open(exact_json)), json.load(open(topk_json))
    rel, bound, lower_ok, upper_ok, energy, half = [], [], True, True, [], []
    for name, r in tk.items():
        s = np.asarray(ex[name])[: len(r["sigma"])]
        t, up = np.asarray(r["sigma"]), np.asarray(r["upper"])
        rel.append(float(np.max(np.abs(s - t) / s)))
        half.append(float(np.max((np.abs(s - t) / s)[: max(1, len(s) // 2)])))
        bound.append(float(np.max(1 - t / up)))
        lower_ok &= bool(np.all(t <= s * (1 + 1e-5)))
        upper_ok &= bool(np.all(s <= up * (1 + 1e-5)))
        if r["energy_captured"] is None:  # the public API does not return it: 1 - δ²/‖M‖_F² from the bound
            d2 = up[0] ** 2 - t[0] ** 2
            r["energy_captured"] = 1 - d2 / r["frobenius"] ** 2
        energy.append(r["energy_captured"])
    return {"max_rel_err": max(rel), "median_rel_err": statistics.median(rel), "max_rel_err_top_half": max(half),
            "max_rel_bound": max(bound),
            "median_rel_bound": statistics.median(bound), "lower_ok": lower_ok, "upper_ok": upper_ok,
            "energy_captured_min": min(energy)}


def main():
    if harness.worker_main(TASKS):
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the synthetic model (7B: 32)")
    ap.add_argument("--naive-layers", type=int, default=None, help="layers the naive loop runs (default: --layers)")
    ap.add_argument("--mem-layers", default="", help="also run ds_api on these model sizes, e.g. '1,4' (memory vs size)")
    ap.add_argument("--top-k", default="32", help="truncated mode runs, each k[:oversample[:power_iters]], e.g. "
                    "'16,64:64:4' ('' to skip)")
    ap.add_argument("--oversample", type=int, default=None, help="default: topk_svdvals's, max(10, k)")
    ap.add_argument("--power-iters", type=int, default=4)
    ap.add_argument("--check-module", default="q_proj", help="matrix of layer 0 checked against numpy float64 ('' to skip)")
    ap.add_argument("--float64-module", default="q_proj", help="--dtype float64 on this matrix of layer 0 vs numpy's "
                    "and torch's float64 SVD ('' to skip)")
    ap.add_argument("--float64-repeat", type=int, default=1, help="best of this many runs of each float64 row")
    ap.add_argument("--cli", action="store_true", help="also time the deltaspec CLI end to end")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every measured process")
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (development only)")
    ap.add_argument("--workdir", default=synth.WORKDIR)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    th = a.threads
    nl = a.layers if a.naive_layers is None else a.naive_layers
    print(f"# {harness.machine_line()}; measured processes use {th or 'default'} torch thread(s)", flush=True)
    base_m = harness.worker(HERE, "baseline", threads=th)
    base_anon, base_hwm = base_m["anon_peak_bytes"], base_m["vmhwm_bytes"]
    print(f"# import-only process: VmHWM {harness.mb(base_hwm)}, RssAnon {harness.mb(base_anon)}; "
          f"target: peak - import <= 3 x float32 11008x4096 = {harness.mb(TARGET_BYTES)}", flush=True)
    b, f = synth.build_full(a.workdir, a.layers, scale=a.scale)
    out = {"machine": harness.machine_line(), "args": vars(a), "baseline": base_m,
           "model_bytes": synth.dir_bytes(f)}
    td = tempfile.mkdtemp(prefix="bench_full_")
    exact_json = os.path.join(td, "exact.json")

    def mem(m):
        return (f"VmHWM {harness.mb(m['vmhwm_bytes'])} (-import {harness.mb(m['vmhwm_bytes'] - base_hwm)}), "
                f"RssAnon peak {harness.mb(m['anon_peak_bytes'])} (-import {harness.mb(m['anon_peak_bytes'] - base_anon)})")

    print(f"== full FT, {a.layers} layers x 7 projections, bf16 sharded, {harness.mb(out['model_bytes'])} per model",
          flush=True)
    m = harness.worker(HERE, "ds_api", ft=str(f), base=str(b), threads=th, out=exact_json)
    out["ds_api"] = m
    print(f"deltaspec API     {m['seconds']:8.1f} s  cpu {m['cpu_s']:7.1f} s  {mem(m)}", flush=True)
    if a.cli:
        wall, rss = harness.run_measured(["deltaspec", "analyze", str(f), "--base", str(b), "--format", "json", "-o",
                                        os.path.join(td, "cli.json"), "-q"], env=_env(th))
        out["ds_cli"] = {"seconds": wall, "vmhwm_bytes": rss}
        print(f"deltaspec CLI     {wall:8.1f} s  VmHWM {harness.mb(rss)}", flush=True)
    if nl > 0:
        nv = harness.worker(HERE, "naive", ft=str(f), base=str(b), naive_layers=nl, threads=th)
        out["naive"] = nv
        per = statistics.mean(nv["per_layer_s"])
        svd_per = nv["svd_s"] / nl
        print(f"naive loop        {nv['seconds']:8.1f} s  ({nl} layer(s): load+subtract {nv['load_s']:.1f} s, "
              f"pure svdvals {nv['svd_s']:.1f} s)  {mem(nv)}", flush=True)
        svd_same = svd_per * a.layers
        out["ratios"] = {"ds_over_naive_svd": m["seconds"] / svd_same, "ds_over_naive_total": m["seconds"] / (per * a.layers)}
        print(f"ratio deltaspec / naive pure-SVD time = {out['ratios']['ds_over_naive_svd']:.2f} (target <= 1)"
              f"{'' if nl == a.layers else f' [naive extrapolated from {nl} to {a.layers} layers]'}; "
              f"deltaspec / naive total = {out['ratios']['ds_over_naive_total']:.2f}", flush=True)
    for spec in [x for x in a.top_k.split(",") if x]:
        k, p, q = (list(map(int, spec.split(":"))) + [a.oversample, a.power_iters])[:3]
        tj = os.path.join(td, f"topk{k}-{p}-{q}.json")
        mt = harness.worker(HERE, "topk", ft=str(f), base=str(b), k=k, oversample=p, power_iters=q, threads=th, out=tj)
        mt["errors"] = topk_errors(exact_json, tj)
        p = max(10, k) if p is None else p
        mt.update(k=k, oversample=p, power_iters=q)
        out.setdefault("topk", {})[f"{k}:{p}:{q}"] = mt
        e = mt["errors"]
        print(f"top-{k:<3} (p={p}, q={q}) {mt['seconds']:6.1f} s  cpu {mt['cpu_s']:6.1f} s  "
              f"({m['seconds'] / mt['seconds']:.1f}x faster than exact)  {mem(mt)}\n"
              f"          max rel err of σ_1..σ_{k} {e['max_rel_err']:.1e} (median over matrices "
              f"{e['median_rel_err']:.1e}), of σ_1..σ_{max(1, k // 2)} {e['max_rel_err_top_half']:.1e}; certified bound: max {e['max_rel_bound']:.1e}, median "
              f"{e['median_rel_bound']:.1e}; σ̃ ≤ σ: {e['lower_ok']}, σ ≤ upper: {e['upper_ok']}; "
              f"sketch energy ≥ {e['energy_captured_min']:.3f}", flush=True)
    if a.check_module:
        ce = harness.worker(HERE, "exact", ft=str(f), base=str(b), module=a.check_module, sigma_json=exact_json,
                          threads=th)
        out["exact"] = ce
        print(f"exactness {ce['name']}: max|σ-σ64|/σ1 {ce['max_err_over_sigma1']:.1e}; max rel err on σ_1..σ_32 "
              f"{ce['max_rel_err_top']:.1e}; on all σ ≥ 1e-3σ1 {ce['max_rel_err_above_1e-3_sigma1']:.1e} "
              f"(σ_min/σ1 = {ce['sigma_min_over_sigma1']:.1e}; numpy float64 took {ce['ref_svd_s']:.0f} s)", flush=True)
    if a.float64_module:
        f64 = harness.worker(HERE, "float64", env=_env(th), ft=str(f), base=str(b), module=a.float64_module, threads=th,
                             repeat=a.float64_repeat)
        out["float64"] = f64
        print(f"float64 {f64['name']} {f64['shape']}: deltaspec --dtype float64 {f64['ds_s']:.1f} s (load + SVD), numpy "
              f"svd(compute_uv=False) {f64['numpy_s']:.1f} s, torch svdvals {f64['torch_s']:.1f} s (best of "
              f"{f64['repeat']}); deltaspec / numpy = "
              f"{f64['ds_s'] / f64['numpy_s']:.2f} (target <= 1), torch / numpy = {f64['torch_s'] / f64['numpy_s']:.2f}; "
              f"max|σ-σ_numpy|/σ1: deltaspec {f64['ds_max_err_over_sigma1']:.1e}, torch "
              f"{f64['torch_max_err_over_sigma1']:.1e}", flush=True)
    for L in [int(x) for x in a.mem_layers.split(",") if x]:
        bL, fL = synth.build_full(a.workdir, L, scale=a.scale)
        mL = harness.worker(HERE, "ds_api", ft=str(fL), base=str(bL), threads=th)
        out.setdefault("mem_layers", {})[L] = mL
        print(f"memory vs size: {L} layer(s) ({harness.mb(synth.dir_bytes(fL))}/model): {mL['seconds']:.1f} s, {mem(mL)}",
              flush=True)
    harness.finish(a.json, out)


if __name__ == "__main__":
    main()
