"""Figure 2 of the MultiLoRA paper and friends on a real pretrained LM (SmolLM2-135M), from the shipped JSON.

    python figures/smollm2_figures.py          # → figures/smollm2_{fig2_hist,spectrum,trajectory,intruders}.png
    python figures/smollm2_figures.py --table  # also print the README's per-method, per-seed table

Reads figures/smollm2_data/ (written by examples/smollm2/analyze.py after examples/smollm2/run.py):
<method>_s<seed>.json (σ of ΔW per attention projection) and summary.json (accuracy, metric means,
trajectories, intruder dimensions and amplification against the real W0). Seconds, no checkpoints needed.
When examples/smollm2/why.py has written them, also heads_s<seed>.json (`deltaspec heads --format json`)
→ smollm2_heads.png and ablation.json (`deltaspec ablate -o`) → smollm2_ablation.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import deltaspec as ds  # noqa: E402
import deltaspec.plots as dp  # noqa: E402
from deltaspec.plots.style import DOUBLE_COLUMN, color, legend, new_axes, paper_style  # noqa: E402
from deltaspec.plots.ablation import ablation as draw_ablation  # noqa: E402
from deltaspec.plots.trajectory import trajectory as draw_trajectory  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "FT"}
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAJ = ["top1_energy", "normalized_entropy", "effective_rank", "frobenius_norm"]


def results(data: Path, seed: int) -> dict:
    return {LABELS[m]: ds.AnalysisResult.from_json(data / f"{m}_s{seed}.json") for m in LABELS}


def grid(rows: int, cols: int, height: float):
    """A new double-column Figure (paper style) with rows × cols axes, as a flat list."""
    fig = Figure(figsize=(DOUBLE_COLUMN, height), layout="constrained")
    return fig, list(fig.subplots(rows, cols).ravel())


def spectrum(res: dict):
    """Sorted σ_i/σ_1 per method: k/v (192 values each) and q/o (576) apart, as the shapes differ."""
    with paper_style():
        fig, axes = grid(1, 2, 2.6)
        for ax, mods in zip(axes, (["k_proj", "v_proj"], ["q_proj", "o_proj"])):
            dp.spectrum(res, modules=mods, ax=ax, title=f"{'/'.join(m[0] for m in mods)}_proj: median over "
                                                        f"60 layers (IQR band)")
    return fig


def trajectory(runs: list[dict], seed: int):
    """k/v metric means against the step (H05's trajectory plot, from summary.json's per-checkpoint means)."""
    data = {}
    for method, label in LABELS.items():
        pts = next((r["trajectory"] for r in runs if r["method"] == method and r["seed"] == seed), [])
        data[label] = {"step": [p["step"] for p in pts], **{k: [p[k] for p in pts] for k in TRAJ}}
    with paper_style():
        fig, axes = grid(2, 2, 3.6)
        draw_trajectory(data, metrics=TRAJ, ax=axes)
        axes[-1].set_yscale("log")
    return fig


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


def heads(data: Path, seed: int):
    """Heads × layers heatmap of MultiLoRA's per-head energy share (k/v), from heads_s<seed>.json."""
    result = ds.HeadsResult.from_dict(json.loads((data / f"heads_s{seed}.json").read_text()))
    return dp.heads(result, "share", modules=["k_proj", "v_proj"], size="double")


def ablation(data: Path):
    """Accuracy and loss against k (trunc / remove / random), from ablation.json (mean and seed band)."""
    abl = json.loads((data / "ablation.json").read_text())
    seeds = sorted({r["seed"] for r in abl["runs"]})
    return draw_ablation(abl, height=3.4, title=f"q/k/v/o_proj of SmolLM2-135M, seed{'s' * (len(seeds) > 1)} "
                                               f"{', '.join(map(str, seeds))}: held-out accuracy and loss against k")


def table(runs: list[dict]) -> str:
    """Markdown: per run (method, seed) the k/v balance, size and accuracy (the README table); the mean
    ± half-range per method; then per-task accuracy and the W0-based results (examples/smollm2/README.md)."""
    order = {m: i for i, m in enumerate(LABELS)}
    runs = sorted(runs, key=lambda r: (order[r["method"]], r["seed"]))
    kv = ("top1_energy", "normalized_entropy", "effective_rank", "relative_norm")
    lines = ["| method | seed | k/v top-1 energy | k/v norm. entropy | k/v eff. rank | ‖ΔW‖/‖W0‖ | mean acc | loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["means"]["kv"]
        lines.append(f"| {LABELS[r['method']]} | {r['seed']} | {m['top1_energy']:.3f} | {m['normalized_entropy']:.3f} | "
                     f"{m['effective_rank']:.1f} | {m['relative_norm']:.3f} | {r['mean_accuracy']:.3f} | "
                     f"{r['final_loss']:.3f} |")
    for method, label in LABELS.items():
        mine = [r for r in runs if r["method"] == method]
        cols = [[r["means"]["kv"][k] for r in mine] for k in kv] + [[r[k] for r in mine]
                                                                     for k in ("mean_accuracy", "final_loss")]
        lines.append(f"| **{label}** | mean ± ½range | " + " | ".join(
            f"{np.mean(c):.3g} ± {np.ptp(c) / 2:.2g}" for c in cols) + " |")
    lines += ["", "| method | seed | arithmetic | classify | facts | instruct | intruders/layer (q,k,v,o) "
              "| amplification (q,k,v,o) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        acc, m = r["per_task_accuracy"], r["means"]
        lines.append(f"| {LABELS[r['method']]} | {r['seed']} | " + " | ".join(
            f"{acc[t]:.3f}" for t in ("arithmetic", "classify", "facts", "instruct")) + " | "
            + ", ".join(f"{m[x]['intruders']:.2f}" for x in ATTN) + " | "
            + ", ".join(f"{m[x]['amplification']:.2f}" for x in ATTN) + " |")
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
        "smollm2_fig2_hist.png": dp.hist(res, modules=["k_proj", "v_proj"]),
        "smollm2_spectrum.png": spectrum(res),
        "smollm2_trajectory.png": trajectory(runs, a.seed),
        "smollm2_intruders.png": intruders(runs),
    }
    if (data / f"heads_s{a.seed}.json").is_file():
        figs["smollm2_heads.png"] = heads(data, a.seed)
    if (data / "ablation.json").is_file():
        figs["smollm2_ablation.png"] = ablation(data)
    for name, fig in figs.items():
        dp.save(fig, out / name, dpi=a.dpi)
        print(f"wrote {out / name}")
    if a.table:
        print(table(runs))


if __name__ == "__main__":
    main()
