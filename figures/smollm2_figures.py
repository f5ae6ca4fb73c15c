"""Figure 2 of the MultiLoRA paper and friends on a real pretrained LM (SmolLM2-135M), from the shipped JSON.

    python figures/smollm2_figures.py          # → figures/smollm2_{fig2_hist,spectrum,trajectory,intruders}.png
    python figures/smollm2_figures.py --table  # also print the README's per-method, per-seed table

Reads figures/smollm2_data/ (written by examples/smollm2/analyze.py after examples/smollm2/run.py):
<method>_s<seed>.json (σ of ΔW per attention projection) and summary.json (accuracy, metric means,
trajectories, intruder dimensions and amplification against the real W0). Seconds, no checkpoints needed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

import deltaspec as ds  # noqa: E402
import deltaspec.plots as dp  # noqa: E402
from deltaspec.plots.style import color, legend, new_axes, paper_style  # noqa: E402
from deltaspec.plots.trajectory import trajectory as draw_trajectory  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "FT"}
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAJ = ["top1_energy", "normalized_entropy", "effective_rank", "frobenius_norm"]


def results(data: Path, seed: int) -> dict:
    return {LABELS[m]: ds.AnalysisResult.from_json(data / f"{m}_s{seed}.json") for m in LABELS}


def trajectory(runs: list[dict], seed: int):
    """k/v metric means against the step (dp.trajectory, from summary.json's per-checkpoint means)."""
    data = {}
    for method, label in LABELS.items():
        pts = next((r["trajectory"] for r in runs if r["method"] == method and r["seed"] == seed), [])
        data[label] = {"step": [p["step"] for p in pts], **{k: [p[k] for p in pts] for k in TRAJ}}
    axes = draw_trajectory(data, metrics=TRAJ, title=f"SmolLM2-135M k/v projections, mean over 60 layers, seed {seed}")
    axes[-1].set_yscale("log")
    return axes


def intruders(runs: list[dict]):
    """Intruder dimensions (top-10 of W0 + ΔW) and amplification factor per module, every seed a dot."""
    with paper_style():
        fig, axes = new_axes(2, "double", 2.0)
        for n, (method, label) in enumerate(LABELS.items()):
            mine = [r for r in runs if r["method"] == method]
            for ax, key in zip(axes, ("intruders", "amplification")):
                for j, mod in enumerate(ATTN):
                    x = j + (n - 1) * 0.25
                    vals = [r["means"][mod][key] for r in mine]
                    ax.plot([x] * len(vals), vals, "o", ms=3, color=color(n), label=label if j == 0 else "_nolegend_")
                    ax.plot([x - 0.1, x + 0.1], [np.mean(vals)] * 2, "-", color=color(n), lw=1.2, label="_nolegend_")
        for ax, title in zip(axes, ("intruder dimensions per layer (top 10, ε = 0.5)", "amplification factor (r = 16)")):
            ax.set_xticks(range(len(ATTN)), ATTN)
            ax.set_title(title)
        axes[1].set_yscale("log")
        legend(axes[0])
    return fig


def table(runs: list[dict]) -> str:
    """Markdown: one row per run (method, seed), k/v means and accuracy; then mean ± spread per method."""
    head = ("| method | seed | k/v top-1 energy | k/v norm. entropy | k/v eff. rank | intruders (k/v, per layer) "
            "| mean acc | arith | classify | facts | instruct | s/step |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {m: i for i, m in enumerate(LABELS)}
    for r in sorted(runs, key=lambda r: (order[r["method"]], r["seed"])):
        kv, acc = r["means"]["kv"], r["per_task_accuracy"]
        lines.append(f"| {LABELS[r['method']]} | {r['seed']} | {kv['top1_energy']:.3f} | {kv['normalized_entropy']:.3f} "
                     f"| {kv['effective_rank']:.1f} | {kv['intruders']:.2f} | {r['mean_accuracy']:.3f} | "
                     + " | ".join(f"{acc[t]:.2f}" for t in ("arithmetic", "classify", "facts", "instruct"))
                     + f" | {r['seconds_per_step']:.2f} |")
    lines += ["", "| method | k/v top-1 energy | k/v norm. entropy | k/v eff. rank | mean acc |", "|---|---|---|---|---|"]
    for method, label in LABELS.items():
        mine = [r for r in runs if r["method"] == method]
        cols = [[r["means"]["kv"][k] for r in mine] for k in ("top1_energy", "normalized_entropy", "effective_rank")]
        cols.append([r["mean_accuracy"] for r in mine])
        lines.append(f"| {label} (n={len(mine)}) | " + " | ".join(
            f"{np.mean(c):.3f} ± {np.ptp(c) / 2:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE / "smollm2_data"), help="JSON folder [default: figures/smollm2_data]")
    p.add_argument("--seed", type=int, default=0, help="seed drawn in the histogram, spectrum and trajectory")
    p.add_argument("--out", default=str(HERE), help="folder for the PNGs [default: figures/]")
    p.add_argument("--table", action="store_true", help="print the README table (markdown)")
    p.add_argument("--dpi", type=int, default=200)
    a = p.parse_args()
    data, out = Path(a.data), Path(a.out)
    runs = json.loads((data / "summary.json").read_text())["runs"]
    res = results(data, a.seed)
    figs = {
        "smollm2_fig2_hist.png": dp.hist(res, modules=["k_proj", "v_proj"], title=f"SmolLM2-135M, seed {a.seed}"),
        "smollm2_spectrum.png": dp.spectrum(res, modules=ATTN, title=f"SmolLM2-135M q/k/v/o, median over layers "
                                                                     f"(IQR), seed {a.seed}"),
        "smollm2_trajectory.png": trajectory(runs, a.seed),
        "smollm2_intruders.png": intruders(runs),
    }
    for name, fig in figs.items():
        dp.save(fig, out / name, dpi=a.dpi)
        print(f"wrote {out / name}")
    if a.table:
        print(table(runs))


if __name__ == "__main__":
    main()
