"""Null models for MultiLoRA's balance (issue 14 item 2): how much of its flatter spectrum is learned,
and how much comes with the random Kaiming-uniform B_i every head starts with?

    python sample_checkpoints/null_model.py RUN_DIR [--scalings-only OUT]

RUN_DIR is a trained MultiLoRA (`deltaspec train --method multilora`). Its initial A_i, B_i are rebuilt
exactly from the seed in its train_info.json (the trainer seeds, loads the base, then initialises the
adapters, in that order). For every k_proj / v_proj layer, with s_i the learned scalings:

  trained      ΔW      = (α/r) Σ diag(s_i) B_i A_i        what the checkpoint holds
  init factors ΔW_0    = (α/r) Σ diag(s_i) B_i⁰ A_i⁰      learned scalings on the INITIAL A, B
  learned part ΔW − ΔW_0                                    what moving A and B added
  random       (α/r) Σ B_i⁰ A_i⁰                           no learning at all (s_i = 1)

--scalings-only OUT also trains "MultiLoRA with 0 effective steps on A and B": the same config, data,
steps and seed, with A_i, B_i frozen at their init and only the scalings trained (at the same lr).
Metrics are computed here from a float64 numpy SVD; normalized_entropy uses n_ref = 128 = min(d_out, d_in).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from deltaspec.train.layers import adapters
from deltaspec.train.null_model import balance, initial_adapters, run_config
from deltaspec.train.null_model import multilora_delta as delta, train_scalings_only as _train
from deltaspec.train.save import save_run
from deltaspec.train.trainer import build, evaluate

MODULES = ("k_proj", "v_proj")


def config(run_dir: Path, base: str, out: str = "unused"):
    try:
        return run_config(run_dir, base=base, out=out)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩_F / (‖a‖ ‖b‖); NaN when either is zero."""
    n = np.linalg.norm(a) * np.linalg.norm(b)
    return float((a * b).sum() / n) if n > 0 else float("nan")


def decompose(run_dir: Path, base: str) -> dict:
    """Mean over k/v layers of each variant's balance metrics, plus how much of ΔW the initial factors carry."""
    init = initial_adapters(config(run_dir, base))
    sd = load_file(run_dir / "adapter_model.safetensors")
    rows: dict[str, list[dict]] = {k: [] for k in ("trained", "init factors", "learned part", "random")}
    moved = []  # how far each factor got from its init (all adapted modules)
    for name, layer in init.items():
        k = f"base_model.model.{name}"
        A, B, S = sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"], sd[f"{k}.lora_scaling"]
        moved.append({"mean |s|": float(S.abs().mean()), "max |s|": float(S.abs().max()),
                      "‖A−A⁰‖/‖A⁰‖": float((A - layer.lora_A.detach()).norm() / layer.lora_A.detach().norm()),
                      "‖B−B⁰‖/‖B⁰‖": float((B - layer.lora_B.detach()).norm() / layer.lora_B.detach().norm())})
        if name.rsplit(".", 1)[-1] not in MODULES:
            continue
        full, null = delta(layer.scaling, S, B, A), delta(layer.scaling, S, layer.lora_B, layer.lora_A)
        rand = delta(layer.scaling, torch.ones_like(S), layer.lora_B, layer.lora_A)
        share = float(np.linalg.norm(null) ** 2 / np.linalg.norm(full) ** 2)
        for key, d in (("trained", full), ("init factors", null), ("learned part", full - null), ("random", rand)):
            rows[key].append({**balance(d), "cos_with_trained": cosine(full, d), "init_cos": cosine(full, null),
                              "init_energy_share": share})
    out = {k: {m: statistics.fmean(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    out["factors"] = {m: statistics.fmean(r[m] for r in moved) for m in moved[0]}
    out["factors"]["max |s|"] = max(r["max |s|"] for r in moved)
    return out


def ablation_accuracy(run_dir: Path, base: str) -> dict:
    """Mean held-out accuracy with every adapted module's update replaced by a part of it: the trained ΔW
    (a check: equals train_info.json), ΔW − ΔW_0 (the init-factor part removed), ΔW_0 alone."""
    cfg = config(run_dir, base)
    sd = load_file(run_dir / "adapter_model.safetensors")
    out = {}
    for variant in ("trained", "without init factors", "init factors only"):
        model = build(cfg)[0]
        for name, layer in adapters(model).items():
            k = f"base_model.model.{name}"
            A, B, S = sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"], sd[f"{k}.lora_scaling"]
            full, null = delta(layer.scaling, S, B, A), delta(layer.scaling, S, layer.lora_B, layer.lora_A)
            d = {"trained": full, "without init factors": full - null, "init factors only": null}[variant]
            parent, _, child = name.rpartition(".")
            merged = torch.nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
            with torch.no_grad():
                merged.weight.copy_(layer.base.weight.double() + torch.from_numpy(d))
            setattr(model.get_submodule(parent), child, merged)
        acc = evaluate(model.eval(), cfg.seed, cfg.eval_per_task, model.config.max_len, torch.device("cpu"))
        out[variant] = {"accuracy": statistics.fmean(acc.values()), "per_task_accuracy": acc}
    return out


def train_scalings_only(run_dir: Path, base: str, out: str) -> dict:
    """The same run with A_i, B_i frozen at init: only the scalings learn. Saved like any MultiLoRA run."""
    cfg = config(run_dir, base, out)
    model, losses, acc = _train(cfg)
    info = {"method": "multilora", "variant": "scalings only (A, B frozen at init)", "seed": cfg.seed,
            "steps": cfg.steps, "rank": cfg.rank, "heads": cfg.heads, "lora_alpha": cfg.resolved_alpha(),
            "target_modules": list(cfg.target_modules), "lr": cfg.resolved_lr(), "scaling_lr_mult": cfg.scaling_lr_mult,
            "batch_size": cfg.batch_size, "per_task_accuracy": acc, "final_loss": sum(losses[-20:]) / 20, "base": base}
    save_run(model, cfg, info)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a trained MultiLoRA run directory")
    p.add_argument("--base", default=str(Path(__file__).resolve().parent / "base"))
    p.add_argument("--scalings-only", default=None, metavar="OUT", help="also train the scalings-only null model here")
    p.add_argument("--json", default=None, help="write the numbers to this JSON file")
    p.add_argument("--over-training", action="store_true",
                   help="also decompose every RUN/checkpoint-<step>/ (from --save-every)")
    a = p.parse_args()
    result = {"decomposition": decompose(a.run, a.base), "ablation": ablation_accuracy(a.run, a.base)}
    if a.over_training:
        ckpts = sorted(a.run.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
        result["over_training"] = {}
        print("| step | top-1 energy ΔW | top-1 energy ΔW_0 | init factors' share of ‖ΔW‖² |\n|---|---|---|---|")
        for c in [*ckpts, a.run]:
            d, step = decompose(c, a.base), json.loads((c / "train_info.json").read_text())["step"]
            result["over_training"][step] = d
            print(f"| {step} | {d['trained']['top1_energy']:.3f} | {d['init factors']['top1_energy']:.3f} | "
                  f"{d['trained']['init_energy_share']:.3f} |")
    if a.scalings_only:
        info = train_scalings_only(a.run, a.base, a.scalings_only)
        result["scalings_only"] = {**decompose(Path(a.scalings_only), a.base)["trained"],
                                   "accuracy": statistics.fmean(info["per_task_accuracy"].values()),
                                   "per_task_accuracy": info["per_task_accuracy"]}
    print("| k/v ΔW (mean over layers) | top-1 energy | normalized entropy | eff. rank | ‖·‖_F | cos with trained ΔW |")
    print("|---|---|---|---|---|---|")
    rows = {k: v for k, v in result["decomposition"].items() if k != "factors"}
    if "scalings_only" in result:
        rows["scalings-only training"] = result["scalings_only"]
    for k, v in rows.items():
        cos = f"{v['cos_with_trained']:.3f}" if k != "scalings-only training" else "—"
        print(f"| {k} | {v['top1_energy']:.3f} | {v['normalized_entropy']:.3f} | {v['effective_rank']:.1f} | "
              f"{v['frobenius_norm']:.3f} | {cos} |")
    d = result["decomposition"]["trained"]
    print("\nfactors: " + ", ".join(f"{k} {v:.3f}" for k, v in result["decomposition"]["factors"].items()))
    print(f"\ninit factors carry {d['init_energy_share']:.1%} of ‖ΔW‖² (cos {d['init_cos']:.3f})")
    for k, v in result["ablation"].items():
        print(f"accuracy, {k}: {v['accuracy']:.3f} {v['per_task_accuracy']}")
    if "scalings_only" in result:
        print(f"scalings-only accuracy {result['scalings_only']['accuracy']:.3f} {result['scalings_only']['per_task_accuracy']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
