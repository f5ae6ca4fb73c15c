"""Startup (issue 12 item 7): `deltaspec info` on a LLaMA-7B-shaped PEFT adapter against
`python -c "import torch"`, measured in the same run, every command in a fresh interpreter.

`info` reads safetensors headers in pure Python and never imports torch; before, its ~1.7 s were
nearly all `import torch`. Target: info < 0.5 s. Rows (median and best of --repeat runs, wall time of
the whole command, interpreter start included):
  python -c pass           the interpreter alone
  import torch             what every torch-importing command pays
  import deltaspec         the package (lazy API)
  deltaspec --help         command listing
  deltaspec info ADAPTER   7B adapter: 32 layers x 7 projections, r = 16 (448 modules, 896 tensors)
  info, old path           the same listing the way it was done before: safetensors.safe_open with
                           torch ("pt"), reading each tensor's shape and dtype from its slice

    python benchmarks/bench_startup.py --repeat 7 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import machine_line, run_child  # noqa: E402
from synth import WORKDIR, build_lora  # noqa: E402

OLD_PATH = """
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "pt") as f:
    entries = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
print(len(entries))
"""


def timed(argv: list[str], repeat: int) -> list[float]:
    run_child(argv)  # warm the page cache and .pyc files
    return [run_child(argv)[0] for _ in range(repeat)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=WORKDIR)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    adapter = build_lora(args.workdir, layers=args.layers, r=16)
    py = sys.executable
    cli = [py, "-m", "deltaspec_cli.main"]
    rows = {
        "python -c pass": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import deltaspec": [py, "-c", "import deltaspec"],
        "deltaspec --help": cli + ["--help"],
        "deltaspec info ADAPTER": cli + ["info", str(adapter)],
        "info, old path (torch)": [py, "-c", OLD_PATH, str(adapter / "adapter_model.safetensors")],
    }
    print(machine_line())
    print(f"adapter: {adapter} ({args.layers} layers x 7 projections, r=16)")
    results = {}
    for name, argv in rows.items():
        t = timed(argv, args.repeat)
        results[name] = {"median_s": statistics.median(t), "best_s": min(t)}
        print(f"  {name:<24} median {statistics.median(t):6.3f} s   best {min(t):6.3f} s")
    info, torch_ = results["deltaspec info ADAPTER"]["median_s"], results["import torch"]["median_s"]
    print(f"deltaspec info / import torch = {info / torch_:.2f} (median); info {'meets' if info < 0.5 else 'misses'} "
          f"the 0.5 s target")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(), "time": time.strftime("%Y-%m-%d %H:%M"), "results": results,
                       "ratio_info_over_import_torch": info / torch_}, f, indent=1)


if __name__ == "__main__":
    main()
