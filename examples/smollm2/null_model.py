"""How much of MultiLoRA's flat k/v spectrum on SmolLM2 is learned, and how much is its random init?
(The question of issue 14 item 2, asked of the real model; sample_checkpoints/null_model.py asks it of
the samples.)

    python examples/smollm2/null_model.py runs/smollm2 [--model DIR] [--scalings-only 0] [-o figures/smollm2_data]

Every MultiLoRA head starts with Kaiming-uniform A_i⁰ AND B_i⁰; only the zero scalings keep ΔW = 0 at
step 0. For each run WORK/multilora_s<seed> (and its step checkpoints) the initial factors are read from
RUN/checkpoint-0/ (written by the trainer), or rebuilt from the seed for older runs (exact on the same
torch build), and for every k/v layer, with s_i the learned scalings (factored, deltaspec/init_split.py):
  ΔW   = (α/r) Σ diag(s_i) B_i A_i        trained        ΔW_0 = (α/r) Σ diag(s_i) B_i⁰ A_i⁰   init factors
  init share = ‖ΔW_0‖² / ‖ΔW‖² (0 for LoRA, whose B starts at 0), and the spectra of ΔW_0 and ΔW − ΔW_0.
--scalings-only SEED also trains that seed's MultiLoRA with A_i, B_i frozen at init (only the scalings
learn): the "0 effective steps" null model, with its accuracy (trained once into WORK/scalings_only_s<SEED>,
then reused). Writes OUT/null_model.json; a few CPU-minutes, plus ~7 for the scalings-only run.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import deltaspec as ds
from deltaspec.init_split import init_split, initial_part, learned_part
from deltaspec.train.null_model import balance, initial_dir, run_config, train_scalings_only
from deltaspec.train.save import save_run

KV = ("k_proj", "v_proj")


def config(run: Path, model: Path, out: str = "unused"):
    return run_config(run, hf_model=str(model), out=out)


def decompose(run: Path, init: Path) -> dict:
    """k/v means: the balance of ΔW, ΔW_0 and ΔW − ΔW_0, the init share, and how far A, B moved
    (factored: deltaspec/init_split.py; `init` is the run's initial adapter folder)."""
    rows = {"trained": [], "init factors": [], "learned part": []}
    share, moved = [], []
    for u in ds.load(run, initial=init).select(list(KV)):
        trained, init0 = u.load(), u.initial()
        for key, d in (("trained", trained), ("init factors", initial_part(trained, init0)),
                       ("learned part", learned_part(trained, init0))):
            rows[key].append(balance(d, min(u.shape)))
        sp = init_split(trained, init0)
        share.append(sp.init_share)
        moved.append((sp.moveA + sp.moveB) / 2)
    out = {key: {m: statistics.fmean(r[m] for r in v) for m in v[0]} for key, v in rows.items()}
    return {**out, "init_share": statistics.fmean(share), "factor_change": statistics.fmean(moved)}


def scalings_only(run: Path, model: Path, out: Path) -> dict:
    """The same run (config, data, steps, seed) with A_i, B_i frozen at init; saved like any MultiLoRA run."""
    cfg = config(run, model, str(out))
    m, losses, acc = train_scalings_only(cfg)
    info = {"method": "multilora", "variant": "scalings only (A, B frozen at init)", "seed": cfg.seed,
            "steps": cfg.steps, "per_task_accuracy": acc, "mean_accuracy": statistics.fmean(acc.values()),
            "final_loss": sum(losses[-20:]) / 20, "base": str(model)}
    save_run(m, cfg, info)
    return info


def finite(x):
    """NaN (the metrics of an all-zero learned part, scalings-only training) → None: valid JSON."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and x != x else x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="the folder examples/smollm2/run.py trained into")
    p.add_argument("--model", type=Path, default=None, help="the base model directory [default: WORK/base]")
    p.add_argument("--scalings-only", type=int, default=None, metavar="SEED", help="also train that null model")
    p.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parents[2] / "figures" / "smollm2_data")
    a = p.parse_args()
    model = a.model or a.work / "base"
    result = {}
    for run in sorted(a.work.glob("multilora_s*")):
        if not (run / "train_info.json").exists():
            continue
        print(f"decomposing {run.name}", flush=True)
        init = initial_dir(run, hf_model=str(model))  # RUN/checkpoint-0, else rebuilt from the seed
        ckpts = sorted((c for c in run.glob("checkpoint-*") if int(c.name.split("-")[1]) > 0),
                       key=lambda c: int(c.name.split("-")[1]))
        steps = {json.loads((c / "train_info.json").read_text())["step"]: c for c in [*ckpts, run]}
        result[run.name] = {"final": decompose(run, init),
                            "over_training": {s: decompose(c, init) for s, c in steps.items()} if ckpts else {}}
    if a.scalings_only is not None:
        run, out = a.work / f"multilora_s{a.scalings_only}", a.work / f"scalings_only_s{a.scalings_only}"
        done = out / "train_info.json"
        print(f"{'reading' if done.exists() else 'training'} {out.name}", flush=True)
        info = json.loads(done.read_text()) if done.exists() else scalings_only(run, model, out)
        init = initial_dir(run, hf_model=str(model))
        result[out.name] = {"final": decompose(out, init), **{k: info[k] for k in ("per_task_accuracy",
                                                                                    "mean_accuracy", "final_loss")}}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "null_model.json").write_text(json.dumps(finite(result), indent=1, allow_nan=False) + "\n")
    for name, r in result.items():
        f = r["final"]
        print(f"{name}: init share {f['init_share']:.3f}, factor change {f['factor_change']:.3f}; top-1 energy "
              f"trained {f['trained']['top1_energy']:.3f}, init factors {f['init factors']['top1_energy']:.3f}, "
              f"learned part {f['learned part']['top1_energy']:.3f}" + (f"; accuracy {r['mean_accuracy']:.3f}"
                                                                         if "mean_accuracy" in r else ""))


if __name__ == "__main__":
    main()
