"""The SmolLM2 runs → small JSON files, all that figures/smollm2_figures.py and the README numbers need.

    python examples/smollm2/analyze.py runs/smollm2 [-o figures/smollm2_data]

For every finished run WORK/<method>_s<seed>/ (train_info.json present) it writes to the output folder:
  <method>_s<seed>.json     `deltaspec analyze` of the q/k/v/o projections (σ + metrics, compact; any
                            `deltaspec plot`/`compare` command reads it like a checkpoint)
  trajectory/<method>_s<seed>/checkpoint-<N>.json   k/v of each step checkpoint and of the final step
                            (`deltaspec plot trajectory trajectory/lora_s0/*.json …` reads them)
  summary.json              per run: accuracy, loss, seconds per step, per-module metric means, and the
                            W0-based results: intruder dimensions (Shuttleworth et al.: top-10 left
                            singular vectors of W0 + ΔW with max |cos| < 0.5 against all of W0's),
                            amplification factor at r = 16, ‖ΔW‖_F / ‖W0‖_F; and a control: the
                            intruders that noise of the size of the Q4_1 rounding error alone creates.
W0 is the base directory (--model, default WORK/base: the dequantized GGUF). CPU, a few minutes for nine runs.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

import deltaspec as ds
from deltaspec.subspace import amplification_factor, intruder_dimensions, left_vectors, reconstruct

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
KV = ["k_proj", "v_proj"]
METRICS = ["top1_energy", "normalized_entropy", "effective_rank", "stable_rank", "frobenius_norm"]
INTRUDER_K, EPS, AMP_R = 10, 0.5, 16


def compact(res: ds.AnalysisResult, **source) -> dict:
    """The analysis as a dict, σ and metrics at float32 precision (7 digits), U/V dropped."""
    d = res.to_dict()
    d["source"].update(source)
    for layer in d["layers"]:
        layer["singular_values"] = [float(f"{x:.7g}") for x in layer["singular_values"]]
        layer["metrics"] = {k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in layer["metrics"].items()}
    return d


def write(path: Path, d: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, separators=(",", ":")) + "\n")


def analyse(run: Path, base: Path, modules, vectors=False) -> ds.AnalysisResult:
    full = (run / "model.safetensors").exists()
    updates = ds.load(str(run), base=str(base) if full else None)
    return ds.analyze(updates, device="cpu", modules=modules, vectors=vectors, progress=False)


class Base:
    """W0 per layer from the base directory, and its left singular vectors (computed once per layer)."""

    def __init__(self, base: Path):
        self.f, self.U0 = safe_open(str(base / "model.safetensors"), "pt"), {}

    def w(self, name: str) -> torch.Tensor:
        return self.f.get_tensor(name + ".weight").double()

    def u0(self, name: str) -> torch.Tensor:
        if name not in self.U0:
            self.U0[name] = left_vectors(self.w(name))[0]
        return self.U0[name]


def means(res: ds.AnalysisResult, per_layer: dict | None = None) -> dict:
    """Per module type (and 'kv', 'attn'): the mean of each metric (and of per_layer extras) over layers."""
    out = {}
    for group, mods in [*((m, [m]) for m in res.modules()), ("kv", KV), ("attn", ATTN)]:
        rows = [r for r in res.layers if r.module in mods]
        if not rows:
            continue
        vals = {k: float(np.mean([r.metrics[k] for r in rows])) for k in METRICS}
        for key, by_layer in (per_layer or {}).items():
            vals[key] = float(np.mean([by_layer[r.name] for r in rows]))
        out[group] = vals
    return out


def w0_results(res: ds.AnalysisResult, base: Base) -> dict:
    """Intruder count, amplification factor and relative norm per layer, against the real W0."""
    intr, amp, rel = {}, {}, {}
    for r in res.layers:
        W0 = base.w(r.name)
        delta = reconstruct(r.U, r.singular_values, r.V)
        intr[r.name] = intruder_dimensions(W0, W0 + delta, INTRUDER_K, EPS, U0=base.u0(r.name)).count
        amp[r.name] = amplification_factor(r.U, r.V, r.singular_values, W0, min(AMP_R, len(r.singular_values))).factor
        rel[r.name] = float(delta.norm() / W0.norm())
    return {"intruders": intr, "amplification": amp, "relative_norm": rel}


def quantization_control(base: Base, names: list[str], noise: dict, seed: int = 0) -> dict:
    """Intruder dimensions that rounding noise alone would create: W0 + E with E iid uniform, scaled to the
    GGUF's estimated rounding error of that tensor kind (‖E‖_F = relative_frobenius · ‖W0‖_F)."""
    kinds = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    g, out = torch.Generator().manual_seed(seed), {}
    for name in names:
        W0 = base.w(name)
        E = torch.rand(W0.shape, generator=g, dtype=torch.float64) - 0.5
        E *= noise[kinds[name.rsplit(".", 1)[1]]]["relative_frobenius"] * W0.norm() / E.norm()
        out[name] = intruder_dimensions(W0, W0 + E, INTRUDER_K, EPS, U0=base.u0(name)).count
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", help="the folder examples/smollm2/run.py trained into (base/, <method>_s<seed>/)")
    p.add_argument("--model", default=None, help="the base model directory [default: WORK/base]")
    p.add_argument("-o", "--out", default=str(Path(__file__).resolve().parents[2] / "figures" / "smollm2_data"))
    a = p.parse_args()
    work, out = Path(a.work), Path(a.out)
    model = Path(a.model) if a.model else work / "base"
    base = Base(model)
    gguf = json.loads((model / "gguf_source.json").read_text())
    summary = {"base": {k: gguf.get(k) for k in ("gguf_sha256", "rounding_noise")},
               "settings": {"intruder_k": INTRUDER_K, "eps": EPS, "amp_r": AMP_R, "n_ref": "shape"}, "runs": []}
    for run in sorted(r for r in work.iterdir() if re.fullmatch(r"(lora|multilora|full)_s\d+", r.name)
                      and (r / "train_info.json").exists()):
        info = json.loads((run / "train_info.json").read_text())
        print(f"analysing {run.name}", flush=True)
        res = analyse(run, model, ATTN, vectors=True)
        w0 = w0_results(res, base)
        for layer in res.layers:
            layer.U = layer.V = None
        write(out / f"{run.name}.json", compact(res, run=run.name, step=info["steps"]))
        acc = info["per_task_accuracy"]
        summary["runs"].append({
            "run": run.name, "method": info["method"], "seed": info["seed"], "steps": info["steps"],
            "batch_size": info["batch_size"], "lr": info["lr"], "lora_alpha": info["lora_alpha"],
            "scaling_lr_mult": info["scaling_lr_mult"], "trainable_parameters": info["trainable_parameters"],
            "per_task_accuracy": acc, "mean_accuracy": float(np.mean(list(acc.values()))),
            "final_loss": info["final_loss"], "train_seconds": info["train_seconds"],
            "seconds_per_step": info["train_seconds"] / info["steps"], "means": means(res, w0),
            "trajectory": trajectory(run, model, out, res, info["steps"])})
    names = [k[: -len(".weight")] for k in base.f.keys() if k.endswith(tuple(f"self_attn.{m}.weight" for m in ATTN))]
    control = quantization_control(base, names, gguf["rounding_noise"])
    summary["quantization_control"] = {m: float(np.mean([v for k, v in control.items() if k.endswith(m)])) for m in ATTN}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")


def trajectory(run: Path, base: Path, out: Path, final: ds.AnalysisResult, steps: int) -> list[dict]:
    """k/v metric means per step checkpoint (and the final step); each step's analysis written as JSON."""
    points = []
    ckpts = sorted((int(c.name.split("-")[1]), c) for c in run.glob("checkpoint-*")
                   if c.name.split("-")[1].isdigit() and int(c.name.split("-")[1]) > 0)  # step 0: ΔW = 0 (the init)
    if not ckpts:
        return points
    for step, path in [*ckpts, (steps, None)]:
        res = analyse(path, base, KV) if path else ds.AnalysisResult([r for r in final.layers if r.module in KV],
                                                                       final.source, final.settings)
        write(out / "trajectory" / run.name / f"checkpoint-{step}.json", compact(res, run=run.name, step=step))
        points.append({"step": step, **means(res)["kv"]})
    return points


if __name__ == "__main__":
    main()
