"""Each method trains for a few steps on CPU in seconds, writes what analyze reads, deterministically."""
import json

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import deltaspec as ds
from deltaspec_cli.main import cli


def train(*args):
    r = CliRunner().invoke(cli, ["train", "--preset", "tiny", "--batch-size", "4", "-q", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def test_every_method_end_to_end(tmp_path):
    base = tmp_path / "base"
    train("--method", "pretrain", "--out", base, "--steps", "3")
    assert (base / "model.safetensors").exists() and (base / "config.json").exists()
    for method in ("full", "lora", "multilora"):
        out = tmp_path / method
        train("--method", method, "--base", base, "--out", out, "--steps", "3", "--rank", "8", "--heads", "4")
        info = json.loads((out / "train_info.json").read_text())
        assert info["method"] == method and info["steps"] == 3 and info["seed"] == 0
        assert set(info["per_task_accuracy"]) == {"arithmetic", "classify", "facts", "instruct"}
        assert len(info["base_sha256"]) == 64
        res = ds.analyze(out, base=base if method == "full" else None)
        assert res.source["format"] == {"full": "full", "lora": "peft", "multilora": "multilora"}[method]
        attn = [r for r in res.layers if r.module in ("q_proj", "k_proj", "v_proj", "o_proj")]
        assert len(attn) == 8 and all(r.metrics["frobenius_norm"] > 0 for r in attn)
        if method != "full":
            assert all(r.rank == 8 for r in res.layers)
    # LoRA and MultiLoRA runs keep their adapter before the first step: ΔW = 0 there, PEFT loads it
    assert not (tmp_path / "full" / "checkpoint-0").exists()  # full FT's initial weights are its base
    for method in ("lora", "multilora"):
        c0 = tmp_path / method / "checkpoint-0"
        assert json.loads((c0 / "train_info.json").read_text())["step"] == 0
        assert all(r.metrics["frobenius_norm"] == 0 for r in ds.analyze(c0, device="cpu", progress=False).layers)
        res = ds.analyze(ds.load(tmp_path / method, initial=c0), device="cpu", progress=False)
        shares = [r.metrics["init_share"] for r in res.layers]  # LoRA: B⁰ = 0; MultiLoRA after 3 steps: mostly init
        assert all(x == 0 for x in shares) if method == "lora" else all(0.5 < x < 1.5 for x in shares)
    try:
        from peft import PeftModel
    except ImportError:
        PeftModel = None
    if PeftModel is not None:
        x = torch.randint(0, 50, (2, 10))
        peft_model = PeftModel.from_pretrained(ds.train.load_model(str(base)), str(tmp_path / "lora" / "checkpoint-0"))
        a0 = load_file(tmp_path / "lora" / "checkpoint-0" / "adapter_model.safetensors")
        key = next(k for k in a0 if k.endswith("lora_A.weight"))
        got = dict(peft_model.named_parameters())[key.replace(".weight", ".default.weight")]
        assert torch.equal(got.detach(), a0[key]) and float(a0[key].abs().sum()) > 0
        with torch.no_grad():
            torch.testing.assert_close(peft_model(x), ds.train.load_model(str(base))(x))  # B = 0: the base model
    # analyze reads the trainer's output with no extra flags
    r = CliRunner().invoke(cli, ["analyze", str(tmp_path / "multilora"), "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["source"]["format"] == "multilora"


def test_same_seed_same_weights(tmp_path):
    base = tmp_path / "base"
    train("--method", "pretrain", "--out", base, "--steps", "2")
    for run in ("a", "b"):
        train("--method", "multilora", "--base", base, "--out", tmp_path / run, "--steps", "3", "--rank", "4", "--heads", "2")
    a, b = (load_file(tmp_path / r / "adapter_model.safetensors") for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_jsonl_data_and_errors(tmp_path):
    base = tmp_path / "base"
    train("--method", "pretrain", "--out", base, "--steps", "1")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "response": "there"}\n{"text": "plain text line"}\n')
    train("--method", "lora", "--base", base, "--out", tmp_path / "j", "--steps", "2", "--data", data)
    assert json.loads((tmp_path / "j" / "train_info.json").read_text())["data"] == str(data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 1}\n')
    r = CliRunner().invoke(cli, ["train", "--method", "lora", "--base", str(base), "--out", str(tmp_path / "x"),
                                 "--data", str(bad), "--preset", "tiny", "-q"])
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output
    r = CliRunner().invoke(cli, ["train", "--method", "multilora", "--rank", "6", "--heads", "4", "--base", str(base),
                                 "--out", str(tmp_path / "y"), "-q"])
    assert r.exit_code == 2 and "divisible" in r.output
