"""`compare` of a q/v LoRA against a full fine-tune: does it cost only the layers they share? (issue 20, item 1)

    python benchmarks/bench_compare.py                      # hidden 512, 8 decoder layers, ~1 min
    python benchmarks/bench_compare.py --hidden 1024 --layers 8 --threads 1 --repeat 3

Builds (in a temporary folder) a LLaMA-shaped base + full fine-tune with 7 projections per decoder
layer (8 layers: 56 matrices, plus norms and embeddings) and a PEFT LoRA r=16 on q_proj/v_proj
(16 matrices), then times, in this process, after imports, best of --repeat:
  compare      `deltaspec compare LORA FT --base BASE -q --format json` (click's runner, in-process)
  shared       what compare cannot avoid: ds.analyze of the LoRA, and of the full fine-tune with
               modules=q_proj,v_proj (the 16 shared layers)
  all_layers   what compare did before: ds.analyze of both inputs on every layer (56 + 16 SVDs)
(compare and shared interleaved, best of --repeat each; all_layers once) and prints compare / shared (target: <= 1, plus noise) and all_layers / shared (the work saved).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PROJ = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
        "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def shapes(hidden: int) -> dict:
    inter = int(hidden * 2.6875)  # LLaMA's 11008 / 4096
    return {m: ((inter, hidden) if m in ("gate_proj", "up_proj") else (hidden, inter) if m == "down_proj"
                else (hidden, hidden)) for m in PROJ}


def build(root: str, hidden: int, layers: int, r: int = 16) -> tuple[str, str, str]:
    """base/, ft/ (bf16 safetensors + config.json) and lora/ (PEFT, fp32) under `root`."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sh, base, ft, lora = shapes(hidden), {}, {}, {}
    for i in range(layers):
        for m, parent in PROJ.items():
            name = f"model.layers.{i}.{parent}.{m}.weight"
            w0 = torch.randn(sh[m], generator=g) * 0.02
            base[name] = w0.bfloat16()
            ft[name] = (w0 + torch.randn(sh[m], generator=g) * 5e-4).bfloat16()
            if m in ("q_proj", "v_proj"):
                key = f"base_model.model.model.layers.{i}.{parent}.{m}"
                lora[f"{key}.lora_A.weight"] = torch.randn((r, sh[m][1]), generator=g) / sh[m][1] ** 0.5
                lora[f"{key}.lora_B.weight"] = torch.randn((sh[m][0], r), generator=g) * 0.01
        for norm in ("input_layernorm", "post_attention_layernorm"):
            base[f"model.layers.{i}.{norm}.weight"] = torch.ones(hidden).bfloat16()
            ft[f"model.layers.{i}.{norm}.weight"] = (1 + torch.randn(hidden, generator=g) * 1e-3).bfloat16()
    base["model.embed_tokens.weight"] = torch.randn((256, hidden), generator=g).bfloat16()
    ft["model.embed_tokens.weight"] = base["model.embed_tokens.weight"]
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": shapes(hidden)["gate_proj"][0], "num_hidden_layers": layers,
              "num_attention_heads": max(1, hidden // 64), "vocab_size": 256}
    paths = []
    for name, tensors in (("base", base), ("ft", ft)):
        d = os.path.join(root, name)
        os.makedirs(d)
        save_file(tensors, os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
        paths.append(d)
    d = os.path.join(root, "lora")
    os.makedirs(d)
    save_file(lora, os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
                   "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}, f)
    paths.append(d)
    return tuple(paths)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (x7 projections) [8: 56 matrices]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    harness.set_threads(a.threads)
    import deltaspec as ds
    from click.testing import CliRunner
    from deltaspec_cli.main import cli

    print(harness.machine_line())
    with tempfile.TemporaryDirectory() as root:
        base, ft, lora = build(root, a.hidden, a.layers)

        def run_compare():
            r = CliRunner().invoke(cli, ["compare", lora, ft, "--base", base, "-q", "--format", "json"])
            assert r.exit_code == 0, r.output
            assert len(json.loads(r.stdout)["layers"]) == 2 * a.layers

        def shared():
            ds.analyze(ds.load(lora), progress=False)
            ds.analyze(ds.load(ft, base=base), modules=["q_proj", "v_proj"], progress=False)

        def all_layers():
            ds.analyze(ds.load(lora), progress=False)
            ds.analyze(ds.load(ft, base=base), progress=False)

        shared(), run_compare()  # warm-up: page cache, lazy imports
        t_shared, t_compare = [], []
        for _ in range(a.repeat):  # interleaved, so a burst of load on a shared machine hits both
            t_shared.append(best(shared, 1))
            t_compare.append(best(run_compare, 1))
        t_shared, t_compare = min(t_shared), min(t_compare)
        t_all = best(all_layers, 1)
    print(f"hidden {a.hidden}, {a.layers} decoder layers: full FT {7 * a.layers} matrices, LoRA q/v "
          f"{2 * a.layers}; {a.threads} thread(s), best of {a.repeat}")
    print(f"  compare (CLI, in-process)        {t_compare:8.2f} s")
    print(f"  analyse the shared layers only   {t_shared:8.2f} s")
    print(f"  analyse every layer (old compare){t_all:8.2f} s")
    print(f"compare / shared = {t_compare / t_shared:.2f}  (target <= 1 plus noise); "
          f"every layer / shared = {t_all / t_shared:.2f} (work compare no longer does)")


if __name__ == "__main__":
    main()
