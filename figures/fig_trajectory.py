"""Spectra over training of the samples: k/v top-1 energy, normalized entropy, effective rank and ‖ΔW‖_F
against the step, LoRA / MultiLoRA / FT (seed 0, the shipped samples' runs).

    python figures/fig_trajectory.py [--runs runs/samples/seed0]   # → figures/trajectory.png
The step checkpoints are not shipped (a full-FT one is 3.2 MB): `bash sample_checkpoints/make.sh` writes
them to runs/samples/seed0/{lora,multilora,full}/checkpoint-<step>/. With them, the numbers are
recomputed and saved to figures/trajectory.json; without them, the figure is drawn from that JSON.
The dotted line in the top-1 panel is the top-1 energy of MultiLoRA's initial factors with every
scaling set to 1, (α/r) Σ B_i⁰ A_i⁰: a random matrix, no learning (sample_checkpoints/null_model.py).
Same as: deltaspec plot trajectory runs/samples/seed0/{lora,multilora,full} --base sample_checkpoints/base
         --modules k_proj,v_proj --labels LoRA,MultiLoRA,FT -o figures/trajectory.png
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import deltaspec as ds  # noqa: E402
import deltaspec.plots as dp  # noqa: E402
from deltaspec.plots.trajectory import collect, trajectory, trajectory_data  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "FT"}
MODULES = ["k_proj", "v_proj"]

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--runs", default=str(HERE.parent / "runs" / "samples" / "seed0"),
               help="folder with lora/, multilora/, full/ holding checkpoint-<step>/ [default: runs/samples/seed0]")
p.add_argument("--base", default=str(HERE.parent / "sample_checkpoints" / "base"))
p.add_argument("--data", default=str(HERE / "trajectory.json"), help="saved numbers (written when --runs exists)")
p.add_argument("-o", "--out", default=str(HERE / "trajectory.png"))
p.add_argument("--dpi", type=int, default=200)
a = p.parse_args()

runs = Path(a.runs)
if all((runs / m).is_dir() for m in LABELS):
    series = collect([runs / m for m in LABELS])
    results = {LABELS[m]: [(step, ds.analyze(path, base=a.base if m == "full" else None, modules=MODULES, device="cpu",
                                             progress=False)) for step, path in pts] for m, pts in series.items()}
    data = {lab: {k: [round(float(x), 6) for x in v] for k, v in t.items()}
            for lab, t in trajectory_data(results).items()}
    sys.path.insert(0, str(HERE.parent / "sample_checkpoints"))
    from null_model import decompose  # noqa: E402  (the initial factors, rebuilt from the run's seed)

    random_top1 = round(decompose(runs / "multilora", a.base)["random"]["top1_energy"], 6)
    Path(a.data).write_text(json.dumps({"modules": MODULES, "runs": str(a.runs), "trajectories": data,
                                        "multilora_initial_factors_top1_energy": random_top1}, indent=1) + "\n")
    print(f"wrote {a.data}")
else:
    print(f"{runs}: no lora/ multilora/ full/ step checkpoints; drawing the saved numbers in {a.data}")
    saved = json.loads(Path(a.data).read_text())
    data, random_top1 = saved["trajectories"], saved["multilora_initial_factors_top1_energy"]
axes = trajectory(data, height=1.9, title="k_proj and v_proj of the samples (mean over 4 layers each), seed 0")
axes[0].axhline(random_top1, color="0.5", lw=0.8, ls=":")  # no learning at all: (α/r) Σ B_i⁰ A_i⁰
axes[0].set_ylim(0, None)
axes[0].annotate("MultiLoRA's initial factors, s = 1", (axes[0].get_xlim()[1], random_top1), xytext=(-2, -2),
                 textcoords="offset points", ha="right", va="top", fontsize=6, color="0.4")
dp.save(axes, a.out, dpi=a.dpi)
print(f"wrote {a.out}")
