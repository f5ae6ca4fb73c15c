"""Shared by the figure scripts: analyse the three sample checkpoints (LoRA, MultiLoRA, full FT)."""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import deltaspec as ds  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "FT"}


def args(description: str, default_out: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--samples", default=str(HERE.parent / "sample_checkpoints"),
                   help="folder with base/, lora/, multilora/, full/ [default: the repo's sample_checkpoints]")
    p.add_argument("-o", "--out", default=str(HERE / default_out), help=f"figure file [default: figures/{default_out}]")
    p.add_argument("--dpi", type=int, default=200)
    if extra:
        extra(p)
    return p.parse_args()


def analyses(samples: str, vectors: bool = False, kinds=("lora", "multilora", "full")) -> dict:
    """{label: AnalysisResult} for the sample checkpoints (CPU; seconds for the small sample GPT)."""
    root = Path(samples)
    missing = [k for k in (*kinds, "base") if not (root / k).exists()]
    if missing:
        raise SystemExit(f"{root}: missing {', '.join(missing)}; train the samples first (see sample_checkpoints/README.md)")
    out = {}
    for kind in kinds:
        base = str(root / "base") if kind == "full" else None
        updates = ds.load(str(root / kind), base=base)
        out[LABELS[kind]] = ds.analyze(updates, device="cpu", vectors=vectors, progress=False)
    return out


def done(path) -> None:
    print(f"wrote {path}")
