"""`deltaspec info`, `deltaspec --help`, `import deltaspec` and format detection never import torch
(issue 12 item 7): checked in a fresh interpreter through sys.modules — a behaviour test, not a
timing test (benchmarks/bench_startup.py measures the time)."""
import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from io_fixtures import LLAMA_LIKE, random_state, write_deltaspec

PROBE = """
import json, sys
from deltaspec_cli.main import cli
out = {{}}
for name, args in {cases!r}:
    try:
        cli.main(args, prog_name="deltaspec", standalone_mode=False)
        out[name] = "ok"
    except SystemExit as e:
        out[name] = "exit %s" % e.code
import deltaspec
from deltaspec.io import detect
out["detect"] = [detect(p) for p in {paths!r}]
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def checkpoints(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = tmp_path / "lora"
    a.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32, generator=g),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4, generator=g),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.rand(32, generator=g)},
              a / "adapter_model.safetensors")
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}))
    full = tmp_path / "full"
    full.mkdir()
    save_file(random_state(LLAMA_LIKE, 0), full / "model.safetensors")
    k = tmp_path / "k.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.randn(4, 8), "lora_unet_a.lora_up.weight": torch.randn(8, 4),
               "lora_unet_a.alpha": torch.tensor(2.0)}, k)
    write_deltaspec(tmp_path / "ml", vector=True)
    return [str(a), str(full), str(k), str(tmp_path / "ml")]


def test_info_help_and_detect_do_not_import_torch(tmp_path):
    paths = checkpoints(tmp_path)
    cases = [("help", ["--help"]), ("info --help", ["info", "--help"])]
    cases += [(f"info {p}", ["info", p]) for p in paths]
    cases += [("info json", ["info", paths[0], "--format", "json"]),
              ("info base", ["info", paths[1], "--base", paths[1]])]
    r = subprocess.run([sys.executable, "-c", PROBE.format(cases=cases, paths=paths)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.pop("detect") == ["peft", "full", "kohya", "multilora"]
    assert out.pop("torch") is False  # the point of this test
    assert all(v in ("ok", "exit 0") for v in out.values()), out
    # info listed a full fine-tune and a DoRA adapter without --base (headers only)
    assert "note: no --base given" in r.stderr


def test_lazy_package_api():
    code = ("import sys, deltaspec as ds; assert 'torch' not in sys.modules; import deltaspec.compare; "
            "f = ds.compare; assert callable(f) and f.__module__ == 'deltaspec.compare'; "
            "print(ds.analyze.__module__, ds.Updates.__name__, ds.metrics.__name__, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["deltaspec.analysis", "Updates", "deltaspec.metrics", "True"]
