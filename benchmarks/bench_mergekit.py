"""A LoRA extracted from a full fine-tune of a transformers LLM: `deltaspec extract` vs `mergekit-extract-lora`.

    python benchmarks/bench_mergekit.py --base BASE --tuned TUNED --rank 16 --json mk.json
    python benchmarks/bench_mergekit.py --synthetic-from BASE --rank 16     # TUNED = BASE + a made-up q/k/v/o ΔW
    python benchmarks/bench_mergekit.py --rank 16                             # a tiny llama pair built from a config

mergekit is not a dependency of deltaspec; the benchmark needs it installed next to it (`pip install mergekit`,
0.1.5 keeps torch 2.13 / transformers 5.x) and skips with a message when it is absent.

Both tools run as whole CLI processes (1 thread: OMP/MKL_NUM_THREADS=1), from the same files, at the same rank:
  deltaspec  `deltaspec extract --base B --tuned T --to peft --rank R -o DIR -q`
  mergekit   `mergekit-extract-lora --base-model B --model T --out-path DIR --max-rank R` (its defaults: every
             Linear gets a LoRA, also the unchanged ones; embeddings and norms are saved whole in modules_to_save)
Measured: wall and CPU time (rusage of the child: user + system) and peak RSS (ru_maxrss). Then, independently
of both tools, per layer whose ΔW is nonzero: ΔW = W_tuned − W_base in float64 (numpy), its SVD, the optimal
rank-R error ‖ΔW − ΔW_R‖_F (Eckart–Young) and each output's error ‖ΔW − s·B@A‖_F (s = α/r of its
adapter_config, with rank_pattern / alpha_pattern), and its distance to that truncation ‖s·B@A − ΔW_R‖_F / ‖ΔW_R‖_F
(float32 factors: ~1e-7 at best; where σ_R = σ_R+1 the truncation is not unique and this can be large). Last, PEFT loads each output onto the base
(`PeftModel.from_pretrained` + `merge_and_unload`) and every merged weight is compared with W_base + ΔW_R
(layers with a LoRA) or W_tuned (everything else): the largest ‖merged − expected‖_F / ‖ΔW_R‖_F is printed.
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

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def mergekit_cli() -> str | None:
    """The mergekit-extract-lora script of this environment, or None when mergekit is not installed."""
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-extract-lora")
    if os.path.exists(exe):
        return exe
    return shutil.which("mergekit-extract-lora")


def tiny_pair(d: str, seed=0) -> tuple[str, str]:
    """A tiny llama (4 layers, hidden 128, tied embeddings, like SmolLM2) and a copy with q/k/v/o changed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    base = os.path.join(d, "tiny_base")
    LlamaForCausalLM(cfg).save_pretrained(base)
    return base, perturbed_copy(base, os.path.join(d, "tiny_tuned"), seed)


def perturbed_copy(base: str, out: str, seed=0) -> str:
    """out = base with every q/k/v/o weight + (a rank-32 part with decaying scales + i.i.d. noise), as a full
    fine-tune of the attention projections would look; other files copied."""
    import torch
    from safetensors.torch import load_file, save_file

    os.makedirs(out, exist_ok=True)
    for f in os.listdir(base):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(base, f), out)
    g = torch.Generator().manual_seed(seed)
    for f in sorted(x for x in os.listdir(base) if x.endswith(".safetensors")):
        sd = load_file(os.path.join(base, f))
        for k, W in sd.items():
            if k.endswith(".weight") and any(p in k for p in PROJ):
                o, i = W.shape
                s = 1.0 / torch.arange(1, 33, dtype=torch.float32)
                dW = (torch.randn(o, 32, generator=g) * s) @ torch.randn(32, i, generator=g) * 2e-3 / i**0.5
                sd[k] = (W.float() + dW + torch.randn(o, i, generator=g) * 2e-4).to(W.dtype)
        save_file(sd, os.path.join(out, f), metadata={"format": "pt"})
    return out


def run_rusage(argv, env) -> dict:
    """Wall, CPU (user + system) seconds and peak RSS of a child process, from os.wait4's rusage."""
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc}):\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_bytes": ru.ru_maxrss * 1024}


def read_weights(path: str) -> dict:
    """name → float64 numpy array of every tensor in a model folder's safetensors files (small models only)."""
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(x for x in os.listdir(path) if x.endswith(".safetensors")):
        try:
            out.update({k: v.astype("float64") for k, v in load_file(os.path.join(path, f)).items()})
        except TypeError:  # bf16 has no numpy dtype: go through torch
            from safetensors.torch import load_file as load_pt

            out.update({k: v.double().numpy() for k, v in load_pt(os.path.join(path, f)).items()})
    return out


def adapter_deltas(out: str) -> dict:
    """module name → (float64 s·B@A, rank) from a PEFT LoRA folder, s from lora_alpha / r with its patterns."""
    import re

    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    sd = load_file(os.path.join(out, "adapter_model.safetensors"))
    res = {}
    for k, A in sd.items():
        if ".lora_A." not in k:
            continue
        name = k.split("base_model.model.", 1)[-1].split(".lora_A.")[0]
        B = sd[k.replace(".lora_A.", ".lora_B.")].astype("float64")
        r = A.shape[0]

        def pattern(p, default):
            for key, v in (cfg.get(p) or {}).items():
                if re.match(rf"(.*\.)?({key})$", name):
                    return v
            return default

        alpha = pattern("alpha_pattern", cfg["lora_alpha"])
        res[name] = (alpha / r * (B @ A.astype("float64")), r)
        assert np.isfinite(res[name][0]).all()
    return res


def accuracy(base: str, tuned: str, outs: dict, rank: int) -> dict:
    """Per nonzero layer: optimal rank-R error from a float64 numpy SVD and each output's error."""
    import numpy as np

    W0, W1 = read_weights(base), read_weights(tuned)
    got = {tool: adapter_deltas(d) for tool, d in outs.items()}
    rows, truncs = [], {}
    for k in sorted(W0):
        if k not in W1 or W0[k].ndim != 2 or not k.endswith(".weight"):
            continue
        dW = W1[k] - W0[k]
        if not dW.any():
            continue
        U, S, Vt = np.linalg.svd(dW, full_matrices=False)
        opt = float(np.sqrt((S[rank:] ** 2).sum()))
        truncs[k] = (U[:, :rank] * S[:rank]) @ Vt[:rank]
        row = {"name": k, "shape": list(dW.shape), "norm": float(np.linalg.norm(dW)), "optimal": opt}
        for tool, deltas in got.items():
            hit = deltas.get(k[: -len(".weight")])
            row[tool] = None if hit is None else float(np.linalg.norm(dW - hit[0]))
            row[tool + "_vs_truncation"] = None if hit is None else float(
                np.linalg.norm(hit[0] - truncs[k]) / np.linalg.norm(truncs[k]))
            row[tool + "_rank"] = None if hit is None else hit[1]
        rows.append(row)
    return {"rows": rows, "truncations": truncs, "W0": W0, "W1": W1}


def peft_merge_check(base: str, out: str, acc: dict) -> dict:
    """Load the adapter with PEFT onto the base, merge; compare every weight with W0 + ΔW_R (LoRA layers of a
    nonzero ΔW), W1 (anything else). Returns the largest relative errors and what PEFT said, or the error line."""
    import warnings

    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            merged = PeftModel.from_pretrained(model, out).merge_and_unload()
        sd = {k: v.detach().double().numpy() for k, v in merged.state_dict().items()}
    except Exception as e:  # noqa: BLE001 - the benchmark records what failed
        return {"loads": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    lora_err, other_err = 0.0, 0.0
    for k, W in sd.items():
        if k in acc["truncations"]:
            T = acc["truncations"][k]
            lora_err = max(lora_err, float(np.linalg.norm(W - acc["W0"][k] - T) / np.linalg.norm(T)))
        elif k in acc["W1"]:
            ref = acc["W1"][k]
            other_err = max(other_err, float(np.abs(W - ref).max()))
    missing = sorted(set(acc["truncations"]) - set(sd))
    return {"loads": True, "merge_vs_truncation_max_rel": lora_err, "other_weights_max_abs_diff": other_err,
            "missing": missing, "warnings": sorted({str(w.message).splitlines()[0][:160] for w in caught})[:5]}


def dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def adapter_summary(out: str) -> dict:
    from safetensors import safe_open

    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    with safe_open(os.path.join(out, "adapter_model.safetensors"), "np") as f:
        keys = list(f.keys())
    return {"bytes": dir_bytes(out), "lora_layers": sum(".lora_A." in k for k in keys),
            "full_tensors": [k for k in keys if ".lora_" not in k][:8], "n_full_tensors": sum(".lora_" not in k for k in keys),
            "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"), "modules_to_save": cfg.get("modules_to_save"),
            "target_modules": sorted(cfg.get("target_modules") or [])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="base model folder (transformers save_pretrained layout)")
    ap.add_argument("--tuned", help="fully fine-tuned model folder")
    ap.add_argument("--synthetic-from", help="base model folder; the tuned one is made from it (q/k/v/o changed)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--workdir", default=None, help="where outputs go (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    mk = mergekit_cli()
    if mk is None:
        print("skipped: mergekit is not installed in this environment (pip install mergekit; it is not a deltaspec "
              "dependency)")
        return
    from importlib.metadata import version

    print(f"# {harness.machine_line()}; mergekit {version('mergekit')}, deltaspec {version('deltaspec')}", flush=True)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_mergekit_")
    if a.synthetic_from:
        base, tuned = a.synthetic_from, perturbed_copy(a.synthetic_from, os.path.join(work, "synthetic_tuned"))
    elif a.base and a.tuned:
        base, tuned = a.base, a.tuned
    else:
        base, tuned = tiny_pair(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    ds_exe = os.path.join(os.path.dirname(sys.executable), "deltaspec")
    outs = {"deltaspec": os.path.join(work, "ds_lora"), "mergekit": os.path.join(work, "mk_lora")}
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)
    cmds = {"deltaspec": [ds_exe, "extract", "--base", base, "--tuned", tuned, "--to", "peft", "--rank", str(a.rank),
                          "-o", outs["deltaspec"], "-q", "--device", "cpu"],
            "mergekit": [mk, "--base-model", base, "--model", tuned, "--out-path", outs["mergekit"], "--max-rank",
                         str(a.rank)]}
    res = {"base": base, "tuned": tuned, "rank": a.rank, "commands": {k: " ".join(v) for k, v in cmds.items()}}
    for tool, argv in cmds.items():
        try:
            res[tool] = run_rusage(argv, env)
            res[tool].update(adapter_summary(outs[tool]))
        except Exception as e:  # noqa: BLE001
            res[tool] = {"error": str(e)[-2000:]}
            print(f"{tool}: failed\n{str(e)[-2000:]}", flush=True)
    ok = {t: d for t, d in outs.items() if "error" not in res[t]}
    acc = accuracy(base, tuned, ok, a.rank)
    rows = acc["rows"]
    res["layers"] = rows
    for t in ok:
        errs = [(r[t], r["optimal"], r["norm"]) for r in rows if r[t] is not None]
        res[t]["layers_with_lora_of_nonzero_dw"] = len(errs)
        res[t]["max_excess_over_optimal"] = max((e - o) / o for e, o, _ in errs) if errs else None
        res[t]["max_rel_error"] = max(e / n for e, _, n in errs) if errs else None
        res[t]["max_rel_optimal"] = max(o / n for _, o, n in errs) if errs else None
        res[t]["max_vs_truncation"] = max(r[t + "_vs_truncation"] for r in rows if r[t] is not None) if errs else None
        res[t]["peft"] = peft_merge_check(base, ok[t], acc)
    print(f"pair: {base} → {tuned}; {len(rows)} layers with nonzero ΔW; rank {a.rank}")
    for t in cmds:
        x = res[t]
        if "error" in x:
            print(f"  {t:<10} failed: {x['error'].strip().splitlines()[-1]}")
            continue
        p = x["peft"]
        merge = (f"PEFT merge vs W0+ΔW_R: {p['merge_vs_truncation_max_rel']:.1e} rel, other weights max |diff| "
                 f"{p['other_weights_max_abs_diff']:.1e}" if p["loads"] else f"PEFT: {p['error']}")
        print(f"  {t:<10} wall {x['wall_s']:7.2f} s  CPU {x['cpu_s']:7.2f} s  peak RSS {harness.mb(x['peak_rss_bytes'])}  "
              f"output {harness.mb(x['bytes'])} ({x['lora_layers']} LoRA layers, {x['n_full_tensors']} full tensors)")
        print(f"             error over the optimal (Eckart–Young), worst layer: {x['max_excess_over_optimal']:.1e} "
              f"(rel. error ≤ {x['max_rel_error']:.4f} vs optimal ≤ {x['max_rel_optimal']:.4f}); "
              f"‖s·B@A − ΔW_R‖/‖ΔW_R‖ ≤ {x['max_vs_truncation']:.1e}")
        print(f"             {merge}")
    harness.finish(a.json, res)


if __name__ == "__main__":
    main()
