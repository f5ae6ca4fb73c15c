"""Why is MultiLoRA balanced on SmolLM2-135M? Heads, learned vs initial, and top-direction ablation (issue 10).

    python examples/smollm2/why.py runs/smollm2 [--seeds 0] [--k 1,2,4,8,16,full] [--per-task 40] [--jobs 2]

For the runs examples/smollm2/run.py trained (WORK/<method>_s<seed>), writes to figures/smollm2_data/:
  heads_s<seed>.json   `deltaspec heads WORK/multilora_s<seed> --format json` (per-head energy shares, …);
  init_split.json      sample_checkpoints/init_table.py on the LoRA and MultiLoRA runs (init share,
                       learned part, factor movement on k/v; each run's own checkpoint-0);
  ablation.json        `deltaspec ablate` of LoRA, MultiLoRA and FT, one process per run (--jobs at a
                       time, logs in WORK/logs/), combined by figures/fig_ablation.py --merge.
Then `python figures/smollm2_figures.py --table` draws smollm2_heads.png and smollm2_ablation.png.
Cost: heads and the init split take seconds; one ablation evaluation is one pass over the held-out
split (--per-task examples per task family), the same at every k.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from run import run_all  # this folder's recipe: at most `jobs` processes at a time, one log each

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABELS = {"lora": "LoRA", "multilora": "MultiLoRA", "full": "FT"}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "deltaspec_cli.main", *map(str, args)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="the runs folder of examples/smollm2/run.py")
    p.add_argument("--seeds", default="0", help="comma-separated seeds [default: 0]")
    p.add_argument("--k", default="1,2,4,8,16,full", help="ablate's --k [default: 1,2,4,8,16,full]")
    p.add_argument("--per-task", type=int, default=40, help="held-out examples per task family [default: 40]")
    p.add_argument("--jobs", type=int, default=2, help="ablation processes at a time [default: 2]")
    p.add_argument("-o", "--data-out", type=Path, default=ROOT / "figures" / "smollm2_data",
                   help="JSON folder [default: figures/smollm2_data]")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = {(m, s): a.work / f"{m}_s{s}" for s in seeds for m in LABELS}
    missing = [str(r) for r in runs.values() if not (r / "train_info.json").is_file()]
    if missing:
        sys.exit(f"error: not trained yet: {', '.join(missing)} (run examples/smollm2/run.py first)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    a.data_out.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        out = a.data_out / f"heads_s{s}.json"
        subprocess.run(cli("heads", runs[("multilora", s)], "--format", "json", "-o", out, "-q"), check=True, env=env)
        d = json.loads(out.read_text())
        d["source"]["path"] = f"{a.work.name}/multilora_s{s}"  # no machine paths in shipped JSON
        out.write_text(json.dumps(d, indent=1) + "\n")
    subprocess.run([sys.executable, str(ROOT / "sample_checkpoints" / "init_table.py"),
                    *[runs[(m, s)] for s in seeds for m in ("lora", "multilora")],
                    "--json", str(a.data_out / "init_split.json")], check=True, env=env)
    rows = json.loads((a.data_out / "init_split.json").read_text())
    for r in rows:  # no machine paths in shipped JSON
        r["run"], r["initial"] = Path(r["run"]).name, str(Path(Path(r["initial"]).parent.name) / "checkpoint-0")
        r.update({k: None for k, v in r.items() if isinstance(v, float) and math.isnan(v)})  # strict JSON: null
    (a.data_out / "init_split.json").write_text(json.dumps(rows, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        parts = {key: Path(tmp) / f"{key[0]}_s{key[1]}.json" for key in runs}
        logs = a.work / "logs"
        logs.mkdir(exist_ok=True)
        run_all([(cli("ablate", runs[key], "--labels", LABELS[key[0]], "--k", a.k, "--per-task", a.per_task,
                      "-o", parts[key], "-q"), logs / f"ablate_{key[0]}_s{key[1]}.log") for key in runs], a.jobs, env)
        subprocess.run([sys.executable, str(ROOT / "figures" / "fig_ablation.py"), "--merge", *parts.values(),
                        "--data", str(a.data_out / "ablation.json"), "-o", str(Path(tmp) / "unused.png")],
                       check=True, env=env)
    print(f"wrote {a.data_out}/heads_s*.json, init_split.json, ablation.json; "
          "figures: python figures/smollm2_figures.py --table")


if __name__ == "__main__":
    main()
