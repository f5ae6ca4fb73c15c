"""Resizing a LLaMA-7B-shaped LoRA: deltaspec (exact factored SVD) vs kohya's approach (materialise + SVD).

    python benchmarks/bench_resize.py --layers 32 --rank 8 --threads 1 --json resize.json

For a rank-16 PEFT LoRA on all 7 projections of 32 decoder layers (synth.py), resized to rank 8,
each measurement in a fresh interpreter (harness.py):
  ds_api   `deltaspec.resize.resize(ds.load(p), rank 8)` + `write_lora_adapter` (the whole job:
           read, factored SVD with vectors, new factors, write the PEFT adapter)
  ds_cli   `deltaspec resize p --rank 8 -o OUT -q`, the whole process (interpreter + imports included)
  kohya    what networks/resize_lora.py in kohya-ss/sd-scripts does per module (re-implemented here from
           its description, not copied): ΔW = up @ down in float32, SVD of ΔW, U[:, :k]·diag(S[:k]) and
           Vh[:k] as the new up/down. Charitably with full_matrices=False (kohya's call uses torch's
           default, full matrices, which for 11008x4096 also forms an 11008x11008 U). It is run on
           the three distinct shapes of one decoder layer (q_proj 4096x4096, gate_proj 11008x4096,
           down_proj 4096x11008) and extrapolated: per layer 4·t(q) + 2·t(gate) + t(down), times
           --layers, plus its load_file time (a full 32-layer run would take hours on one core).
  exact    deltaspec's merged rank-k ΔW vs numpy float64 truncated SVD of ΔW built independently in
           float64 from the file, and the same for the kohya-style float32 result (layer 0, --check-modules).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import synth  # noqa: E402

HERE = os.path.abspath(__file__)
SHAPES = {"q_proj": 4, "gate_proj": 2, "down_proj": 1}  # measured module -> modules of its shape per layer


_setup = harness.set_threads  # the worker's torch, with its thread count set


def task_baseline(threads=None):
    _setup(threads)
    import deltaspec  # noqa: F401
    import deltaspec.resize  # noqa: F401  (what the measured tasks import)

    return {}


def task_ds_api(path, rank, out, threads=None):
    _setup(threads)
    import deltaspec as ds
    from deltaspec import ranks as R
    from deltaspec.io.write.peft import write_lora_adapter
    from deltaspec.resize import resize

    t0, c0 = time.perf_counter(), time.process_time()
    res = resize(ds.load(path), R.policy("rank", rank))
    t1 = time.perf_counter()
    write_lora_adapter(out, res.factors())
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "cpu_s": time.process_time() - c0, "resize_s": t1 - t0, "write_s": t2 - t1,
            "layers": len(res.layers)}


def _kohya_module(torch, sd, prefix, scale, rank):
    """kohya-style: materialise ΔW, full SVD, keep the top `rank` (up = U·S, down = Vh)."""
    dW = scale * (sd[prefix + ".lora_B.weight"].float() @ sd[prefix + ".lora_A.weight"].float())
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    return (U[:, :rank] @ torch.diag(S[:rank])).contiguous(), Vh[:rank].contiguous()


def task_kohya(path, rank, threads=None):
    torch = _setup(threads)
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    scale = cfg["lora_alpha"] / cfg["r"]
    t0 = time.perf_counter()
    sd = load_file(os.path.join(path, "adapter_model.safetensors"))
    t_load = time.perf_counter() - t0
    times, cpu = {}, {}
    for name, _ in synth.module_names(1):
        mod = name.rsplit(".", 1)[-1]
        if mod in SHAPES:
            a, c = time.perf_counter(), time.process_time()
            _kohya_module(torch, sd, "base_model.model." + name, scale, rank)
            times[mod], cpu[mod] = time.perf_counter() - a, time.process_time() - c
    return {"load_s": t_load, "module_s": times, "module_cpu_s": cpu}


def task_exact(path, out, rank, check_modules, threads=None):
    """Relative Frobenius error of deltaspec's and kohya's rank-k ΔW against the float64 truncation."""
    torch = _setup(threads)
    import numpy as np
    from safetensors import safe_open

    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    ocfg = json.load(open(os.path.join(out, "adapter_config.json")))
    src = safe_open(os.path.join(path, "adapter_model.safetensors"), "pt")
    new = safe_open(os.path.join(out, "adapter_model.safetensors"), "pt")
    sd = {k: src.get_tensor(k) for k in src.keys() if ".layers.0." in k}
    rows = []
    for m in check_modules:
        name = next(n for n, _ in synth.module_names(1) if n.endswith("." + m))
        p = "base_model.model." + name
        dW = (cfg["lora_alpha"] / cfg["r"]) * (src.get_tensor(p + ".lora_B.weight").double().numpy()
                                              @ src.get_tensor(p + ".lora_A.weight").double().numpy())
        U, s, Vt = np.linalg.svd(dW, full_matrices=False)
        ref = (U[:, :rank] * s[:rank]) @ Vt[:rank]
        ours = (ocfg["lora_alpha"] / ocfg["r"]) * (new.get_tensor(p + ".lora_B.weight").double().numpy()
                                                  @ new.get_tensor(p + ".lora_A.weight").double().numpy())
        up, down = _kohya_module(torch, sd, p, cfg["lora_alpha"] / cfg["r"], rank)
        kohya = up.double().numpy() @ down.double().numpy()
        n = np.linalg.norm(ref)
        rows.append({"name": name, "deltaspec_rel_err": float(np.linalg.norm(ours - ref) / n),
                     "kohya_rel_err": float(np.linalg.norm(kohya - ref) / n),
                     "truncation_rel_err": float(np.sqrt((s[rank:] ** 2).sum() / (s**2).sum()))})
    return {"rows": rows}


TASKS = {"baseline": task_baseline, "ds_api": task_ds_api, "kohya": task_kohya, "exact": task_exact}


def _env(threads):
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def main():
    if harness.worker_main(TASKS):
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers of the synthetic adapter (7B: 32)")
    ap.add_argument("--rank", type=int, default=8, help="new rank (the adapter has r=16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every measured process")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the deltaspec timings (best is reported)")
    ap.add_argument("--no-kohya", action="store_true", help="skip the kohya-style baseline (minutes)")
    ap.add_argument("--check-modules", default="q_proj", help="layer-0 modules checked against numpy float64")
    ap.add_argument("--workdir", default=synth.WORKDIR)
    ap.add_argument("--json", default=None, help="also write all numbers here")
    a = ap.parse_args()
    th = a.threads
    if th:  # numpy (the float64 reference) and torch in every child process
        os.environ.update(OMP_NUM_THREADS=str(th), MKL_NUM_THREADS=str(th), OPENBLAS_NUM_THREADS=str(th))
    print(f"# {harness.machine_line()}; measured processes use {th or 'default'} torch thread(s)", flush=True)
    path = str(synth.build_lora(a.workdir, a.layers))
    harness.worker(HERE, "baseline", threads=th)  # warm imports and page cache
    td = tempfile.mkdtemp(prefix="bench_resize_")
    r = {"path": path, "layers": a.layers, "rank": a.rank,
         "file_bytes": os.path.getsize(os.path.join(path, "adapter_model.safetensors"))}
    runs = []
    for i in range(a.repeat):
        out = os.path.join(td, f"api{i}")
        runs.append(harness.worker(HERE, "ds_api", path=path, rank=a.rank, out=out, threads=th))
    r["ds_api"] = min(runs, key=lambda x: x["seconds"])
    r["ds_api"]["all_s"] = [round(x["seconds"], 3) for x in runs]
    cli = []
    for i in range(a.repeat):
        out = os.path.join(td, f"cli{i}")
        cli.append(harness.run_measured(["deltaspec", "resize", path, "--rank", str(a.rank), "-o", out, "-q"],
                                        env=_env(th)))
    r["ds_cli"] = {"seconds": min(w for w, _ in cli), "vmhwm_bytes": max(m for _, m in cli)}
    r["out_bytes"] = os.path.getsize(os.path.join(td, "api0", "adapter_model.safetensors"))
    if not a.no_kohya:
        k = harness.worker(HERE, "kohya", path=path, rank=a.rank, threads=th)
        per_layer = sum(SHAPES[m] * t for m, t in k["module_s"].items())
        k["per_layer_s"] = per_layer
        k["extrapolated_s"] = k["load_s"] + per_layer * a.layers
        k["extrapolated_cpu_s"] = sum(SHAPES[m] * t for m, t in k["module_cpu_s"].items()) * a.layers
        r["kohya"] = k
    r["exact"] = harness.worker(HERE, "exact", path=path, out=os.path.join(td, "api0"), rank=a.rank,
                                check_modules=a.check_modules.split(","), threads=th)["rows"]
    shutil.rmtree(td, ignore_errors=True)
    api = r["ds_api"]
    print(f"== LoRA r=16, {a.layers} layers x 7 projections ({api['layers']} updates, {harness.mb(r['file_bytes'])}) "
          f"-> rank {a.rank} ({harness.mb(r['out_bytes'])})")
    print(f"deltaspec API   {api['seconds']:9.3f} s  (CPU {api['cpu_s']:.3f} s; resize {api['resize_s']:.3f} s, write "
          f"{api['write_s']:.3f} s; runs {api['all_s']}; peak RSS {harness.mb(api['vmhwm_bytes'])})")
    print(f"deltaspec CLI   {r['ds_cli']['seconds']:9.3f} s  (whole process; peak RSS {harness.mb(r['ds_cli']['vmhwm_bytes'])})")
    if "kohya" in r:
        k = r["kohya"]
        ms = ", ".join(f"{m} {t:.1f} s" for m, t in k["module_s"].items())
        print(f"kohya-style     {k['extrapolated_s']:9.1f} s  (CPU {k['extrapolated_cpu_s']:.1f} s; extrapolated: "
              f"{k['per_layer_s']:.1f} s/layer from {ms}; load_file {k['load_s']:.2f} s)")
        print(f"ratio kohya-style / deltaspec API = {k['extrapolated_s'] / api['seconds']:,.0f}x wall, "
              f"{k['extrapolated_cpu_s'] / api['cpu_s']:,.0f}x CPU; / deltaspec CLI = "
              f"{k['extrapolated_s'] / r['ds_cli']['seconds']:,.0f}x wall")
    for e in r["exact"]:
        print(f"exact: {e['name']}: rel. Frobenius error vs float64 truncation: deltaspec {e['deltaspec_rel_err']:.1e}, "
              f"kohya-style {e['kohya_rel_err']:.1e} (the truncation itself drops {e['truncation_rel_err']:.3f})")
    harness.finish(a.json, {"machine": harness.machine_line(), "args": vars(a), "results": r})


if __name__ == "__main__":
    main()
