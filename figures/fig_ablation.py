"""Dependence on top directions of the samples (seeds 0, 1, 2 in figures/ablation.json): held-out accuracy and loss of LoRA / MultiLoRA /
FT with every q/k/v/o_proj ΔW truncated to its top k directions, stripped of them, or of k random
directions of the same energy (`deltaspec ablate`; mean over seeds, band = lowest to highest seed).

    python figures/fig_ablation.py                       # redraw figures/ablation.png from figures/ablation.json
    python figures/fig_ablation.py --merge A.json B.json # combine `deltaspec ablate -o` outputs into it first
    python figures/fig_ablation.py --table               # the per-seed numbers of docs/TRAINING.md

The JSON comes from (about 2 CPU-minutes per run on an idle core):
    deltaspec ablate runs/samples/seed{0,1,2}/{lora,multilora,full} \\
        --labels LoRA,MultiLoRA,FT,LoRA,MultiLoRA,FT,LoRA,MultiLoRA,FT -o figures/ablation.json
(seed 0 = sample_checkpoints/; seeds 1 and 2 from `bash sample_checkpoints/make.sh --seeds 1,2`).
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

import deltaspec.plots as dp  # noqa: E402
from deltaspec.plots.ablation import ablation  # noqa: E402

HERE = Path(__file__).resolve().parent
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--data", default=str(HERE / "ablation.json"))
p.add_argument("--merge", nargs="+", default=None, help="`deltaspec ablate -o` JSON files to combine into --data")
p.add_argument("--table", action="store_true", help="print per-seed top-1 numbers and exit")
p.add_argument("-o", "--out", default=str(HERE / "ablation.png"))
p.add_argument("--dpi", type=int, default=200)
a = p.parse_args()

if a.merge:
    parts = [json.loads(Path(f).read_text()) for f in a.merge]
    keys = {(json.dumps(x["k"]), json.dumps(x["modes"]), x["per_task"]) for x in parts}
    if len(keys) != 1:
        sys.exit("error: the files differ in --k, --modes or --per-task")
    data = {**parts[0], "runs": [r for x in parts for r in x["runs"]]}
    data["cost_per_k"] = {k: round(float(np.mean([x["cost_per_k"][k] for x in parts])), 3) for k in parts[0]["cost_per_k"]}
    for r in data["runs"]:
        r["path"] = r["path"][r["path"].index("runs/"):] if "runs/" in r["path"] else r["path"]  # no machine paths
    Path(a.data).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {a.data}")
data = json.loads(Path(a.data).read_text())

if a.table:
    print("| method | seed | run acc | run loss | top-1 removed: acc | loss | random k=1: acc | loss | "
          "top-1 kept: acc | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        c = {(x["mode"], x["k"]): x for x in r["results"]}
        run, rm, rnd, tr = c[("trunc", "full")], c[("remove", 1)], c[("random", 1)], c[("trunc", 1)]
        print(f"| {r['label']} | {r['seed']} | " + " | ".join(
            f"{x['mean_accuracy']:.3f} | {x['loss']:.3f}" for x in (run, rm, rnd, tr)) + " |")
    sys.exit(0)

seeds = sorted({r["seed"] for r in data["runs"]})
axes = ablation(data, height=3.4, title=f"q/k/v/o_proj of the samples, seeds {', '.join(map(str, seeds))}: "
                                       "held-out accuracy and loss against k")
dp.save(axes, a.out, dpi=a.dpi)
print(f"wrote {a.out}")
