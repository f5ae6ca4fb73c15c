"""Full fine-tuning of the adapters' projections only (`--method full --target-modules …`), so that full
FT, LoRA and MultiLoRA change the same matrices. Ground truth: the saved tensors against the base's,
bit for bit, read with safetensors."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from deltaspec.train import TrainConfig, run
from deltaspec.train.model import GPTConfig
from deltaspec_cli.main import cli

TINY = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    run(TrainConfig(method="pretrain", out=str(out), steps=2, batch_size=4, model=TINY, progress=False), log=lambda s: None)
    return out


def changed(base, out) -> set[str]:
    w0, w = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert w0.keys() == w.keys()
    return {k for k in w0 if not torch.equal(w0[k], w[k])}


def test_given_target_modules_restrict_full_ft_to_those_weights(base, tmp_path):
    out = tmp_path / "full"
    res = CliRunner().invoke(cli, ["train", "--method", "full", "--base", str(base), "-o", str(out), "--steps", "3",
                                   "--batch-size", "4", "--lr", "1e-2", "--target-modules", "k_proj,v_proj", "-q"])
    assert res.exit_code == 0, res.output
    assert changed(base, out) == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("k_proj", "v_proj")}
    info = json.loads((out / "train_info.json").read_text())
    assert info["full_targets"] is True and info["target_modules"] == ["k_proj", "v_proj"]
    assert info["trainable_parameters"] == 2 * 2 * 32 * 32


def test_without_target_modules_full_ft_trains_every_parameter(base, tmp_path):
    out = tmp_path / "all"
    res = CliRunner().invoke(cli, ["train", "--method", "full", "--base", str(base), "-o", str(out), "--steps", "3",
                                   "--batch-size", "4", "--lr", "1e-2", "-q"])
    assert res.exit_code == 0, res.output
    w0 = load_file(base / "model.safetensors")
    assert {k for k in w0 if k.endswith(("mlp.up_proj.weight", "self_attn.q_proj.weight"))} <= changed(base, out)
    info = json.loads((out / "train_info.json").read_text())
    assert info["full_targets"] is False and info["target_modules"] is None
    assert info["trainable_parameters"] == sum(v.numel() for v in w0.values())


def test_target_modules_that_match_nothing_is_a_one_line_error(base, tmp_path):
    res = CliRunner().invoke(cli, ["train", "--method", "full", "--base", str(base), "-o", str(tmp_path / "x"),
                                   "--steps", "1", "--target-modules", "nope_proj", "-q"])
    assert res.exit_code == 2
    assert "no nn.Linear module matches" in res.output and "model.layers.0" in res.output
    assert not (tmp_path / "x").exists()
