"""Adapters at LLaMA-7B shapes: deltaspec vs just reading the file vs the naive loop (vs gradience).

    python benchmarks/bench_adapters.py --layers 32 --naive-layers 1 --threads 1 --json out.json

For a rank-16 PEFT LoRA adapter on all 7 projections and a deltaspec MultiLoRA adapter with 4 heads
x rank 4 (same total rank), each measurement in a fresh interpreter (peak RSS = its VmHWM):
  read_raw   open() + read() of adapter_model.safetensors (warm page cache)
  read_st    safetensors.safe_open + get_tensor of every tensor
  ds_api     ds.analyze(ds.load(path)) (after `import deltaspec`)
  ds_cli     `deltaspec analyze PATH --format json -o FILE -q` in a subprocess: interpreter + torch
             import + everything (wall time of the whole command)
  naive      what a user would write: load_file, then per module materialise dW = s*B@A in float32 and
             torch.linalg.svdvals it, one at a time; run on --naive-layers layers and extrapolated
             linearly to --layers (load_file time is measured on the whole file and added once)
  gradience  gradience 0.11 `audit_lora_peft_dir` (Python API, factored float64 Gram eigensolver) and
             the `gradience audit --json --no-udr` CLI, if installed (PEFT LoRA only)
  exact      deltaspec σ vs numpy float64 SVD of dW built independently (float64, from the file) on
             --check-layers layers x --check-modules modules: max relative error over the nonzero σ
Targets (issue 04): ds_api >= 100x faster than naive, ds_api <= 2x read time, relative error <= 1e-4.
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


# --------------------------------------------------------------------------- worker tasks (fresh process)

_setup = harness.set_threads  # the worker's torch, with its thread count set


def task_baseline(threads=None):
    _setup(threads)
    import deltaspec  # noqa: F401
    import safetensors.torch  # noqa: F401

    return {}


def task_read_raw(path, threads=None):
    _setup(threads)
    f = os.path.join(path, "adapter_model.safetensors")
    t0 = time.perf_counter()
    with open(f, "rb") as fh:
        n = len(fh.read())
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def task_read_st(path, threads=None, touch=False):
    torch = _setup(threads)
    from safetensors import safe_open

    f = os.path.join(path, "adapter_model.safetensors")
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with safe_open(f, "pt") as fh:
        for k in fh.keys():
            t = fh.get_tensor(k)
            if touch:  # bring every byte in (get_tensor alone may leave mmapped pages untouched)
                torch.isfinite(t.sum())
            n += t.numel()
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "numel": n}


def task_ds_api(path, threads=None, out=None):
    _setup(threads)
    import deltaspec as ds

    t0, c0 = time.perf_counter(), time.process_time()
    u = ds.load(path)
    t1 = time.perf_counter()
    res = ds.analyze(u, progress=False)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    if out:
        with open(out, "w") as fh:
            json.dump({L.name: [float(x) for x in L.singular_values] for L in res.layers}, fh)
    return {"seconds": t2 - t0, "cpu_s": cpu, "load_s": t1 - t0, "analyze_s": t2 - t1, "layers": len(res.layers)}


def _naive_delta(torch, sd, prefix, kind, cfg):
    if kind == "lora":
        A = sd[prefix + ".lora_A.weight"].float()
        B = sd[prefix + ".lora_B.weight"].float()
        return (cfg["lora_alpha"] / cfg["r"]) * (B @ A)
    A = sd[prefix + ".lora_A.weight"].float()  # (n, r, in)
    B = sd[prefix + ".lora_B.weight"].float()  # (n, out, r)
    S = sd[prefix + ".lora_scaling"].float()  # (n, out)
    c = cfg["lora_alpha"] / cfg["r"]
    return sum(c * S[i][:, None] * (B[i] @ A[i]) for i in range(A.shape[0]))


def task_naive(path, kind, naive_layers, threads=None):
    torch = _setup(threads)
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    t0 = time.perf_counter()
    sd = load_file(os.path.join(path, "adapter_model.safetensors"))
    t_load = time.perf_counter() - t0
    per_layer, t_mat, t_svd = [], 0.0, 0.0
    for i in range(naive_layers):
        tl = time.perf_counter()
        for name, _ in list(synth.module_names(i + 1))[-7:]:
            a = time.perf_counter()
            dW = _naive_delta(torch, sd, "base_model.model." + name, kind, cfg)
            b = time.perf_counter()
            torch.linalg.svdvals(dW)
            c = time.perf_counter()
            t_mat += b - a
            t_svd += c - b
        per_layer.append(time.perf_counter() - tl)
    return {"load_s": t_load, "per_layer_s": per_layer, "materialize_s": t_mat, "svd_s": t_svd}


def task_gradience(path, threads=None):
    _setup(threads)
    import contextlib
    import io

    from gradience.vnext.audit.lora_audit import audit_lora_peft_dir

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        res = audit_lora_peft_dir(path, compute_udr=False)
    return {"seconds": time.perf_counter() - t0, "layers": res.n_layers}


def task_exact(path, kind, check_layers, check_modules, threads=None):
    """deltaspec σ vs numpy float64 SVD of an independently materialised float64 dW."""
    _setup(threads)
    import numpy as np
    from safetensors import safe_open

    import deltaspec as ds

    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    res = ds.analyze(ds.load(path), modules=check_modules, layers=list(range(check_layers)), progress=False)
    f = safe_open(os.path.join(path, "adapter_model.safetensors"), "pt")

    def get(k):
        return f.get_tensor(k).double().numpy()

    rows = []
    for L in res.layers:
        p = "base_model.model." + L.name
        if kind == "lora":
            dW = (cfg["lora_alpha"] / cfg["r"]) * (get(p + ".lora_B.weight") @ get(p + ".lora_A.weight"))
        else:
            A, B, S = get(p + ".lora_A.weight"), get(p + ".lora_B.weight"), get(p + ".lora_scaling")
            dW = (cfg["lora_alpha"] / cfg["r"]) * sum(S[i][:, None] * (B[i] @ A[i]) for i in range(A.shape[0]))
        t0 = time.perf_counter()
        ref = np.linalg.svd(dW, compute_uv=False)
        t_ref = time.perf_counter() - t0
        s = np.asarray(L.singular_values)
        r = len(s)
        rows.append({"name": L.name, "rank": r, "ref_svd_s": t_ref,
                     "max_rel_err": float(np.max(np.abs(s - ref[:r]) / ref[:r])),
                     "max_err_over_sigma1": float(np.max(np.abs(s - ref[:r])) / ref[0]),
                     "ref_tail_over_sigma1": float(ref[r] / ref[0]) if len(ref) > r else 0.0})
    return {"rows": rows}


TASKS = {"baseline": task_baseline, "read_raw": task_read_raw, "read_st": task_read_st, "ds_api": task_ds_api,
         "naive": task_naive, "gradience": task_gradience, "exact": task_exact}


# --------------------------------------------------------------------------- driver

def _best(script, task, repeat, **kw):
    runs = [harness.worker(script, task, **kw) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_s"] = [round(r["seconds"], 4) for r in runs]
    best["median_s"] = statistics.median(r["seconds"] for r in runs)
    best["vmhwm_bytes"] = max(r["vmhwm_bytes"] for r in runs)
    return best


def _env(threads):
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def bench_one(kind, path, a, baseline_rss) -> dict:
    out = {"kind": kind, "path": str(path), "file_bytes": os.path.getsize(os.path.join(path, "adapter_model.safetensors"))}
    th = a.threads
    out["read_raw"] = _best(HERE, "read_raw", a.repeat, path=str(path), threads=th)
    out["read_st"] = _best(HERE, "read_st", a.repeat, path=str(path), threads=th)
    out["read_touch"] = _best(HERE, "read_st", a.repeat, path=str(path), threads=th, touch=True)
    td0 = tempfile.mkdtemp(prefix="bench_adapters_")
    ref_json = os.path.join(td0, "ds.json")
    out["ds_api"] = _best(HERE, "ds_api", a.repeat, path=str(path), threads=th, out=ref_json)
    with tempfile.TemporaryDirectory() as td:
        cli = []
        for _ in range(a.repeat):
            wall, rss = harness.run_measured(["deltaspec", "analyze", str(path), "--format", "json", "-o",
                                            os.path.join(td, "r.json"), "-q"], env=_env(th))
            cli.append((wall, rss))
        out["ds_cli"] = {"seconds": min(w for w, _ in cli), "all_s": [round(w, 3) for w, _ in cli],
                         "vmhwm_bytes": max(r for _, r in cli)}
        start = [harness.run_measured([sys.executable, "-c", "import torch, deltaspec, deltaspec_cli.main"], env=_env(th))[0]
                 for _ in range(a.repeat)]
        out["startup_s"] = min(start)
    if a.naive_layers > 0:
        nv = harness.worker(HERE, "naive", path=str(path), kind=kind, naive_layers=a.naive_layers, threads=th)
        per = statistics.mean(nv["per_layer_s"])
        nv["extrapolated_s"] = nv["load_s"] + per * a.layers
        nv["measured_layers"] = a.naive_layers
        out["naive"] = nv
    if kind == "lora" and not a.no_gradience:
        try:
            out["gradience_api"] = _best(HERE, "gradience", a.repeat, path=str(path), threads=th)
            g = []
            for _ in range(a.repeat):
                g.append(harness.run_measured(["gradience", "audit", "--peft-dir", str(path), "--json", "--no-udr"],
                                            env=_env(th)))
            out["gradience_cli"] = {"seconds": min(w for w, _ in g), "vmhwm_bytes": max(r for _, r in g)}
        except Exception as e:  # not installed, or it fails: say so
            out["gradience_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
    if a.check_layers > 0:
        out["exact"] = harness.worker(HERE, "exact", path=str(path), kind=kind, check_layers=a.check_layers,
                                    check_modules=a.check_modules.split(","), threads=th)["rows"]
    out["baseline_rss"] = baseline_rss
    return out


def report(r: dict, layers: int) -> str:
    t_api, t_read, t_raw = r["ds_api"]["seconds"], r["read_touch"]["seconds"], r["read_raw"]["seconds"]
    base = r["baseline_rss"]
    lines = [f"== {r['kind']}: {layers} layers x 7 projections = {r['ds_api']['layers']} updates, "
             f"file {harness.mb(r['file_bytes'])}",
             f"{'measurement':<34}{'time':>10}{'peak RSS':>12}{'RSS - import':>14}   notes"]

    def row(name, t, rss, note=""):
        extra = "" if rss is None or rss < 0 else harness.mb(rss - base)
        lines.append(f"{name:<34}{t:>9.3f}s{'' if rss is None else harness.mb(rss):>12}{extra:>14}   {note}")

    row("read: raw file read", t_raw, r["read_raw"]["vmhwm_bytes"])
    row("read: safe_open+get_tensor all", r["read_st"]["seconds"], r["read_st"]["vmhwm_bytes"],
        "lazy: mmapped pages not touched")
    row("read: get_tensor + touch all", t_read, r["read_touch"]["vmhwm_bytes"], "every byte read once")
    row("deltaspec API load+analyze", t_api, r["ds_api"]["vmhwm_bytes"],
        f"load {r['ds_api']['load_s']:.3f}s analyze {r['ds_api']['analyze_s']:.3f}s cpu {r['ds_api']['cpu_s']:.3f}s;"
        f" runs {r['ds_api']['all_s']}")
    row("deltaspec CLI (whole process)", r["ds_cli"]["seconds"], r["ds_cli"]["vmhwm_bytes"],
        f"of which interpreter+imports {r['startup_s']:.2f}s")
    if "naive" in r:
        nv = r["naive"]
        row("naive loop (extrapolated)", nv["extrapolated_s"], None,
            f"measured {nv['measured_layers']} layer(s): {statistics.mean(nv['per_layer_s']):.1f}s/layer "
            f"(svdvals {nv['svd_s'] / nv['measured_layers']:.1f}s) + load_file {nv['load_s']:.2f}s")
    if "gradience_api" in r:
        row("gradience audit (API)", r["gradience_api"]["seconds"], r["gradience_api"]["vmhwm_bytes"])
        row("gradience audit (CLI process)", r["gradience_cli"]["seconds"], r["gradience_cli"]["vmhwm_bytes"])
    if "gradience_error" in r:
        lines.append(f"gradience: {r['gradience_error']}")
    lines.append(f"ratios: naive/deltaspec = {r['naive']['extrapolated_s'] / t_api:,.0f}x (target >= 100x)"
                 if "naive" in r else "ratios:")
    lines.append(f"        deltaspec/read(get_tensor+touch) = {t_api / t_read:.2f}x, deltaspec/read(raw) = "
                 f"{t_api / t_raw:.2f}x (target <= 2x)")
    if "gradience_api" in r:
        lines.append(f"        gradience/deltaspec (API) = {r['gradience_api']['seconds'] / t_api:.2f}x")
    for e in r.get("exact", []):
        lines.append(f"exact: {e['name']}: max rel err {e['max_rel_err']:.1e} over {e['rank']} nonzero sigma "
                     f"(max err/sigma1 {e['max_err_over_sigma1']:.1e}; float64 sigma_{e['rank'] + 1}/sigma1 "
                     f"{e['ref_tail_over_sigma1']:.1e}; numpy ref took {e['ref_svd_s']:.1f}s)")
    return "\n".join(lines)


def main():
    if harness.worker_main(TASKS):
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers in the synthetic adapters (7B: 32)")
    ap.add_argument("--naive-layers", type=int, default=1, help="layers the naive loop really runs (then extrapolated)")
    ap.add_argument("--check-layers", type=int, default=1, help="layers checked against numpy float64 (0: skip)")
    ap.add_argument("--check-modules", default="q_proj,down_proj")
    ap.add_argument("--kinds", default="lora,multilora")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="adapter tensor dtype")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every measured process")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing (best is reported)")
    ap.add_argument("--no-gradience", action="store_true")
    ap.add_argument("--workdir", default=synth.WORKDIR)
    ap.add_argument("--json", default=None, help="also write all numbers here")
    a = ap.parse_args()
    print(f"# {harness.machine_line()}; measured processes use {a.threads or 'default'} torch thread(s); "
          f"times are best of {a.repeat} (page cache warm)", flush=True)
    baseline_rss = harness.worker(HERE, "baseline", threads=a.threads)["vmhwm_bytes"]
    print(f"# peak RSS of a process that only imports torch + deltaspec + safetensors: {harness.mb(baseline_rss)}")
    results = []
    for kind in a.kinds.split(","):
        path = synth.build_lora(a.workdir, a.layers, dtype=a.dtype) if kind == "lora" else \
            synth.build_multilora(a.workdir, a.layers, dtype=a.dtype)
        harness.worker(HERE, "read_raw", path=str(path))  # warm the page cache
        r = bench_one(kind, path, a, baseline_rss)
        results.append(r)
        print(report(r, a.layers), flush=True)
    harness.finish(a.json, {"machine": harness.machine_line(), "args": vars(a), "results": results})


if __name__ == "__main__":
    main()
