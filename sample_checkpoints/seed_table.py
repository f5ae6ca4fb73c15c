"""The seed table of sample_checkpoints/README.md: k/v balance metrics and task accuracy per training run,
then mean ± sd over the runs of each method. The final loss (mean training loss of the last 20 steps,
on freshly generated data) is a less noisy measure than 40 held-out examples per task.

    python sample_checkpoints/seed_table.py --base sample_checkpoints/base RUN_DIR...

Each RUN_DIR is a `deltaspec train` output (its train_info.json says the method, seed and accuracy).
Metrics are the mean over the 4 layers × {k_proj, v_proj} (the modules of the paper's Figure 2);
normalized_entropy uses n_ref = min(d_out, d_in) = 128 for every method. --json FILE also saves the rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import deltaspec as ds

METRICS = ("top1_energy", "normalized_entropy", "effective_rank")
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "full FT"}


def run_row(path: Path, base: str, modules=("k_proj", "v_proj")) -> dict:
    """One run: its method, seed, mean k/v metrics and mean task accuracy."""
    info = json.loads((path / "train_info.json").read_text())
    res = ds.analyze(str(path), base=base if info["method"] == "full" else None, device="cpu", progress=False)
    layers = [r for r in res.layers if r.module in modules]
    row = {"run": str(path), "method": info["method"], "seed": info["seed"], "steps": info["steps"],
           "scaling_lr_mult": info.get("scaling_lr_mult")}
    row.update({m: statistics.fmean(r.metrics[m] for r in layers) for m in METRICS})
    acc = info["per_task_accuracy"]
    row["accuracy"], row["final_loss"] = statistics.fmean(acc.values()), info["final_loss"]
    row.update({f"acc_{t}": a for t, a in acc.items()})
    return row


def summary(rows: list[dict]) -> dict:
    """method → {metric: (mean, sd, n)} over its runs (sd with n − 1; 0 for one run)."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        out[method] = {m: (statistics.fmean(r[m] for r in rs), statistics.stdev(r[m] for r in rs) if len(rs) > 1 else 0.0,
                           len(rs)) for m in (*METRICS, "accuracy", "final_loss")}
    return out


def markdown(rows: list[dict]) -> str:
    cols = "top-1 energy | normalized entropy | eff. rank | mean task acc | final loss |"
    head = f"| method | seed | {cols}\n|---|---|---|---|---|---|---|\n"
    per = "".join(f"| {LABELS.get(r['method'], r['method'])} | {r['seed']} | {r['top1_energy']:.3f} | "
                  f"{r['normalized_entropy']:.3f} | {r['effective_rank']:.1f} | {r['accuracy']:.3f} | "
                  f"{r['final_loss']:.3f} |\n" for r in rows)
    agg = f"| method (n seeds) | {cols}\n|---|---|---|---|---|---|\n"
    for method, s in summary(rows).items():
        n = s["accuracy"][2]
        cells = [f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m != "effective_rank" else f"{s[m][0]:.1f} ± {s[m][1]:.1f}"
                 for m in (*METRICS, "accuracy", "final_loss")]
        agg += f"| {LABELS.get(method, method)} ({n}) | " + " | ".join(cells) + " |\n"
    return head + per + "\n" + agg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="deltaspec train output directories")
    p.add_argument("--base", default=str(Path(__file__).resolve().parent / "base"), help="base of the full-FT runs")
    p.add_argument("--json", default=None, help="also write the per-run rows to this JSON file")
    a = p.parse_args()
    rows = [run_row(r, a.base) for r in a.runs]
    print(markdown(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
