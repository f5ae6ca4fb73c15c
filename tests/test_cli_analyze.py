"""`deltaspec analyze` / `info` through click's CliRunner: outputs, options, and every bad-input case
(one `error:` line naming the file, exit code 2, no traceback, inputs untouched)."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from deltaspec_cli.main import cli
from io_fixtures import LLAMA_LIKE, random_state, snapshot


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def lora_adapter(d, layers=3, r=4, extra_cfg=None, extra_tensors=None):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        for m, (o, k) in {"k_proj": (16, 32), "v_proj": (16, 32), "q_proj": (32, 32)}.items():
            sd[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_A.weight"] = torch.randn(r, k, generator=g)
            sd[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_B.weight"] = torch.randn(o, r, generator=g)
    sd.update(extra_tensors or {})
    d.mkdir(parents=True)
    save_file(sd, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, **(extra_cfg or {})}))
    return d


def model_dir(d, sd):
    d.mkdir(parents=True)
    save_file(sd, d / "model.safetensors")
    return d


def test_table_is_default(tmp_path):
    r = run("analyze", lora_adapter(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert "L2.v_proj" in r.output and "mean per module type" in r.output


def test_json_with_selection_to_file(tmp_path):
    a = lora_adapter(tmp_path / "a")
    out = tmp_path / "res" / "spectra.json"
    r = run("analyze", a, "--modules", "k_proj,v_proj", "--layers", "0-1", "--format", "json", "-o", out)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert [x["name"] for x in d["layers"]] == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("k_proj", "v_proj")]
    assert d["source"]["format"] == "peft" and len(d["layers"][0]["singular_values"]) == 4
    # Scale α/r = 2 is applied: compare with numpy on the materialised update.
    from safetensors.torch import load_file
    sd = load_file(a / "adapter_model.safetensors")
    B = sd["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].double()
    A = sd["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].double()
    ref = np.linalg.svd((2 * B @ A).numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(d["layers"][0]["singular_values"], ref, rtol=1e-4)


def test_csv_on_stdout_and_float64_and_n_ref(tmp_path):
    r = run("analyze", lora_adapter(tmp_path / "a"), "--format", "csv", "--dtype", "float64", "--n-ref", "rank",
            "--energy-k", "1,2")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 9 and rows[0]["n_ref"] == "4" and "top2_energy" in rows[0]


def test_full_finetune_and_info(tmp_path):
    base = random_state(LLAMA_LIKE, 0)
    ft = {k: v + 0.01 * torch.randn(v.shape) for k, v in base.items()}
    b, f = model_dir(tmp_path / "base", base), model_dir(tmp_path / "ft", ft)
    r = run("analyze", f, "--base", b, "-o", tmp_path / "x.csv")
    assert r.exit_code == 0, r.output
    assert len(list(csv.DictReader(open(tmp_path / "x.csv")))) == 6
    r = run("info", f, "--base", b)
    assert r.exit_code == 0 and "format full" in r.output and "L1.down_proj" in r.output
    r = run("info", f, "--base", b, "--include-embeddings", "--format", "json")
    assert {x["name"] for x in json.loads(r.stdout)["layers"]} >= {"model.embed_tokens", "lm_head"}


def bad_inputs(tmp_path):
    """(name, argv, text the error must contain)."""
    base = random_state(LLAMA_LIKE, 0)
    b = model_dir(tmp_path / "base", base)
    f = model_dir(tmp_path / "ft", {k: v + 1 for k, v in base.items()})
    mism = dict(base)
    mism["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)
    m = model_dir(tmp_path / "mismatch", mism)
    nan = dict(base)
    nan["model.layers.1.self_attn.q_proj.weight"] = torch.full((32, 32), float("nan"))
    n = model_dir(tmp_path / "nan", nan)
    a = lora_adapter(tmp_path / "adapter")
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    data = (a / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    (trunc / "adapter_config.json").write_text((a / "adapter_config.json").read_text())
    noconf = tmp_path / "noconf"
    noconf.mkdir()
    (noconf / "adapter_model.safetensors").write_bytes(data)
    dora = lora_adapter(tmp_path / "dora", layers=1, extra_cfg={"use_dora": True}, extra_tensors={
        f"base_model.model.model.layers.0.self_attn.{x}.lora_magnitude_vector": torch.ones(o)
        for x, o in (("k_proj", 16), ("v_proj", 16), ("q_proj", 32))})
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    return [
        ("missing base", ["analyze", f], ["ft", "--base"]),
        ("shape mismatch", ["analyze", m, "--base", b], ["k_proj", "mismatch"]),
        ("nan", ["analyze", n, "--base", b], ["nan", "NaN"]),
        ("truncated", ["analyze", trunc], ["trunc", "adapter_model.safetensors"]),
        ("no config", ["analyze", noconf], ["noconf", "adapter_config.json"]),
        ("dora without base", ["analyze", dora], ["dora", "--base"]),
        ("empty dir", ["analyze", tmp_path / "empty"], ["empty", "empty directory"]),
        ("unknown format", ["analyze", tmp_path / "other"], ["other", "unknown checkpoint format"]),
        ("missing path", ["info", tmp_path / "nope"], ["nope", "no such file"]),
        ("no such layers", ["analyze", a, "--modules", "zz_proj"], ["adapter", "--modules zz_proj: no such module type; available: q_proj"]),
    ]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    cases = bad_inputs(tmp_path)
    before = snapshot(tmp_path)
    for name, argv, parts in cases:
        r = run(*argv)
        assert r.exit_code == 2, (name, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, (name, r.output)
        assert "Traceback" not in r.output
        for p in parts:
            assert p in r.output, (name, p, r.output)
    assert snapshot(tmp_path) == before  # nothing was written next to any input


def test_refuses_to_overwrite_an_input_file(tmp_path):
    a = lora_adapter(tmp_path / "a")
    before = (a / "adapter_config.json").read_bytes()
    r = run("analyze", a, "-o", a / "adapter_config.json")
    assert r.exit_code == 2 and "refusing" in r.output
    assert (a / "adapter_config.json").read_bytes() == before


def test_torchrun_two_processes_write_the_single_process_result(tmp_path):
    """The README's torchrun recipe, on CPU with gloo: rank 0 writes a result equal to a plain run."""
    base = random_state(LLAMA_LIKE, 0)
    b = model_dir(tmp_path / "base", base)
    f = model_dir(tmp_path / "ft", {k: v + 0.01 * torch.randn(v.shape) for k, v in base.items()})
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    assert run("analyze", f, "--base", b, "-o", single).exit_code == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "deltaspec_cli.main", "analyze", str(f), "--base", str(b), "--device", "cpu", "-o", str(multi)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    s, m = json.loads(single.read_text()), json.loads(multi.read_text())
    assert [x["name"] for x in m["layers"]] == [x["name"] for x in s["layers"]]
    for x, y in zip(m["layers"], s["layers"]):
        np.testing.assert_allclose(x["singular_values"], y["singular_values"], rtol=1e-5)
