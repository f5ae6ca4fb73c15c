"""Learned vs initial on k/v, per run and over seeds: init share, learned part, factor movement.

    python sample_checkpoints/init_table.py RUN [RUN ...] [--base sample_checkpoints/base] [--json OUT]

Each RUN is a LoRA or MultiLoRA run folder (`deltaspec train`). Its initial adapter is RUN/checkpoint-0/,
or, for runs without one, rebuilt from the seed in its train_info.json (exact on the same torch build;
deltaspec.train.null_model.write_initial). The numbers are `deltaspec analyze RUN --initial INIT
--modules k_proj,v_proj`, averaged over the k/v layers; then mean ± sd (n − 1) per method over the runs.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import deltaspec as ds
from deltaspec.train.null_model import initial_dir

COLS = {"init_share": "init share", "init_cos": "cos(ΔW, ΔW_0)", "top1_energy": "top-1 ΔW",
        "learned_top1_energy": "top-1 learned", "learned_normalized_entropy": "norm. entropy learned",
        "learned_effective_rank": "eff. rank learned", "moveA": "‖A−A⁰‖/‖A⁰‖", "moveB": "‖B−B⁰‖/‖B⁰‖"}
NAMES = {"lora": "LoRA", "multilora": "MultiLoRA"}


def row(run: Path, base: str, scratch: str) -> dict:
    info = json.loads((run / "train_info.json").read_text())
    init = initial_dir(run, base=base, scratch=scratch)
    res = ds.analyze(ds.load(run, initial=init), modules=["k_proj", "v_proj"], device="cpu", progress=False)
    vals = {c: [r.metrics[c] for r in res.layers] for c in COLS}
    mean = {c: statistics.fmean(v) if all(math.isfinite(x) for x in v) else math.nan for c, v in vals.items()}
    return {"run": str(run), "method": info["method"], "seed": info["seed"], "initial": str(init), **mean}


def fmt(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--base", default=str(Path(__file__).resolve().parent / "base"))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = [row(r, a.base, scratch) for r in a.runs]
    print("| method | seed | " + " | ".join(COLS.values()) + " |\n|" + "---|" * (len(COLS) + 2))
    for r in rows:
        print(f"| {NAMES[r['method']]} | {r['seed']} | " + " | ".join(fmt(r[c]) for c in COLS) + " |")
    print("\n| method (n seeds) | " + " | ".join(COLS.values()) + " |\n|" + "---|" * (len(COLS) + 1))
    for m in NAMES:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        cells = []
        for c in COLS:
            v = [r[c] for r in rs]
            if not all(math.isfinite(x) for x in v):
                cells.append("—")
            else:
                sd = statistics.stdev(v) if len(v) > 1 else None
                cells.append(f"{statistics.fmean(v):.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
        print(f"| {NAMES[m]} ({len(rs)}) | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
