"""Null models for MultiLoRA's balance (issue 14 item 2): how much of its flatter spectrum is learned,
and how much comes with the random Kaiming-uniform B_i every head starts with?

    python sample_checkpoints/null_model.py RUN_DIR [--scalings-only OUT]

RUN_DIR is a trained MultiLoRA (`deltaspec train --method multilora`). Its initial A_i, B_i are read from
RUN/checkpoint-0/ (which the trainer writes), or rebuilt from the seed in its train_info.json (exact on
the same torch build). For every k_proj / v_proj layer, with s_i the learned scalings:

  trained      ΔW      = (α/r) Σ diag(s_i) B_i A_i        what the checkpoint holds
  init factors ΔW_0    = (α/r) Σ diag(s_i) B_i⁰ A_i⁰      learned scalings on the INITIAL A, B
  learned part ΔW − ΔW_0                                    what moving A and B added
  random       (α/r) Σ B_i⁰ A_i⁰                           no learning at all (s_i = 1)

--scalings-only OUT also trains "MultiLoRA with 0 effective steps on A and B": the same config, data,
steps and seed, with A_i, B_i frozen at their init and only the scalings trained (at the same lr).
Everything is factored (deltaspec/init_split.py, `deltaspec analyze RUN --initial RUN/checkpoint-0` reports
the same init share); spectra are exact float64; normalized_entropy uses n_ref = 128 = min(d_out, d_in).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import deltaspec as ds
from deltaspec.init_split import init_split, initial_part, learned_part
from deltaspec.train.layers import adapters
from deltaspec.train.null_model import balance, cosine, initial_dir, run_config
from deltaspec.train.null_model import train_scalings_only as _train
from deltaspec.train.save import save_run
from deltaspec.train.trainer import build, evaluate
from deltaspec.updates import SumOfLowRank

MODULES = ("k_proj", "v_proj")


def config(run_dir: Path, base: str, out: str = "unused"):
    try:
        return run_config(run_dir, base=base, out=out)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def pairs(run_dir: Path, base: str, initial=None) -> dict:
    """Layer name → (LayerUpdate, trained update, initial update): the run read with its initial adapter
    (`initial`, else RUN/checkpoint-0, else rebuilt from the seed when the run has none)."""
    u = ds.load(run_dir, initial=initial or initial_dir(run_dir, base=base))
    return {x.name: (x, x.load(), x.initial()) for x in u}


def decompose(run_dir: Path, base: str, initial=None) -> dict:
    """Mean over k/v layers of each variant's balance metrics, plus how much of ΔW the initial factors carry."""
    rows: dict[str, list[dict]] = {k: [] for k in ("trained", "init factors", "learned part", "random")}
    moved = []  # how far each factor got from its init (all adapted modules)
    for name, (u, trained, init) in pairs(run_dir, base, initial).items():
        S = torch.stack([s for s, _, _ in trained.terms]) / u.meta["scale"]  # the learned s_i (c = α/r divided out)
        sp = init_split(trained, init)
        moved.append({"mean |s|": float(S.abs().mean()), "max |s|": float(S.abs().max()),
                      "‖A−A⁰‖/‖A⁰‖": sp.moveA, "‖B−B⁰‖/‖B⁰‖": sp.moveB})
        if u.module not in MODULES:
            continue
        variants = {"trained": trained, "init factors": initial_part(trained, init),
                    "learned part": learned_part(trained, init),
                    "random": SumOfLowRank([(u.meta["scale"], B0, A0) for _, B0, A0 in init.terms])}
        for key, d in variants.items():
            rows[key].append({**balance(d, min(u.shape)), "cos_with_trained": cosine(trained, d),
                              "init_cos": sp.init_cos, "init_energy_share": sp.init_share})
    out = {k: {m: statistics.fmean(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    out["factors"] = {m: statistics.fmean(r[m] for r in moved) for m in moved[0]}
    out["factors"]["max |s|"] = max(r["max |s|"] for r in moved)
    return out


def ablation_accuracy(run_dir: Path, base: str) -> dict:
    """Mean held-out accuracy with every adapted module's update replaced by a part of it: the trained ΔW
    (a check: equals train_info.json), ΔW − ΔW_0 (the init-factor part removed), ΔW_0 alone."""
    cfg = config(run_dir, base)
    split = pairs(run_dir, base)
    out = {}
    for variant in ("trained", "without init factors", "init factors only"):
        model = build(cfg)[0]
        for name, layer in adapters(model).items():
            _, trained, init = split[name]
            part = {"trained": trained, "without init factors": learned_part(trained, init),
                    "init factors only": initial_part(trained, init)}[variant]
            parent, _, child = name.rpartition(".")
            merged = torch.nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
            with torch.no_grad():  # merging into a weight is the one place the matrix is formed
                merged.weight.copy_(layer.base.weight.double() + part.materialize().double())
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
    init = initial_dir(a.run, base=a.base)  # RUN/checkpoint-0, else rebuilt from the seed
    result = {"decomposition": decompose(a.run, a.base, init), "ablation": ablation_accuracy(a.run, a.base)}
    if a.over_training:
        ckpts = sorted((c for c in a.run.glob("checkpoint-*") if int(c.name.split("-")[1]) > 0),
                       key=lambda c: int(c.name.split("-")[1]))  # step 0 is the initial adapter: ΔW = 0
        result["over_training"] = {}
        print("| step | top-1 energy ΔW | top-1 energy ΔW_0 | init factors' share of ‖ΔW‖² |\n|---|---|---|---|")
        for c in [*ckpts, a.run]:
            d, step = decompose(c, a.base, init), json.loads((c / "train_info.json").read_text())["step"]
            result["over_training"][step] = d
            print(f"| {step} | {d['trained']['top1_energy']:.3f} | {d['init factors']['top1_energy']:.3f} | "
                  f"{d['trained']['init_energy_share']:.3f} |")
    if a.scalings_only:
        info = train_scalings_only(a.run, a.base, a.scalings_only)
        result["scalings_only"] = {**decompose(Path(a.scalings_only), a.base, init)["trained"],
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
