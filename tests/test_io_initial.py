"""PiSSA / OLoRA adapters saved without conversion, with the initial adapter (--initial).

Ground truth: PEFT's merge of the trained adapter into the modified base (W_res = W − s·B0A0), minus the
ORIGINAL base weight W, on a tiny LLaMA. Tolerance: `close`. Without --initial the plain product is
12–90 % off here, and a warning says how to fix it.
"""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("peft")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from deltaspec.errors import FormatError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402
from io_fixtures import close, edit_config, snapshot, tiny_model  # noqa: E402

T = ["q_proj", "v_proj", "down_proj"]


def pissa_run(tmp_path, init, **kw):
    """Save the initial adapter, 'train' (perturb A and B), save unconverted; PEFT's ΔW vs the original W."""
    model = tiny_model("llama")
    W = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=T, init_lora_weights=init, **kw))
    pm.save_pretrained(tmp_path / "init")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(tmp_path / "trained")
    merged = pm.merge_and_unload().state_dict()
    return {k: merged[k].double() - W[k].double() for k in W if k in merged and not torch.equal(merged[k], W[k])}


@pytest.mark.parametrize("init,kw", [("pissa", {}), ("olora", {}), ("pissa_niter_4", {"use_rslora": True})])
def test_initial_gives_the_exact_update(tmp_path, init, kw):
    want = pissa_run(tmp_path, init, **kw)
    plain = load(tmp_path / "trained")
    assert len(plain.warnings) == 1 and "pass initial=DIR" in plain.warnings[0]
    off = max(float((x.load().materialize().double() - want[x.name + ".weight"]).norm()
                    / want[x.name + ".weight"].norm()) for x in plain)
    assert off > 0.1  # the plain product is far off
    before = snapshot(tmp_path)
    u = load(tmp_path / "trained", initial=tmp_path / "init")
    assert not u.warnings and sorted(x.name + ".weight" for x in u) == sorted(want)
    for x in u:
        assert x.kind == "lowrank" and x.rank_bound == 8 and x.meta["initial"] is True
        close(x.load().materialize(), want[x.name + ".weight"])
    assert snapshot(tmp_path) == before


def test_cli_initial(tmp_path):
    want = pissa_run(tmp_path, "pissa")
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "trained"), "--initial", str(tmp_path / "init"),
                                   "--format", "json", "-q", "--dtype", "float64"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["layers"]}
    import numpy as np

    for name, r in rows.items():
        ref = np.linalg.svd(want[name + ".weight"].numpy(), compute_uv=False)
        assert abs(r["metrics"]["spectral_norm"] - ref[0]) <= 1e-5 * ref[0]
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "trained")])
    assert res.exit_code == 0 and "pass --initial DIR" in res.output


def test_initial_errors(tmp_path):
    pissa_run(tmp_path, "pissa")
    tiny_model("llama").save_pretrained(tmp_path / "model")
    with pytest.raises(FormatError, match="initial= must be a PEFT LoRA adapter directory .* found a full checkpoint"):
        load(tmp_path / "trained", initial=tmp_path / "model")
    other = tmp_path / "other"
    pm = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    pm.save_pretrained(other)
    with pytest.raises(FormatError, match="the initial adapter does not match the trained one"):
        load(tmp_path / "trained", initial=other)
    edit_config(tmp_path / "trained", init_lora_weights="loftq", loftq_config={"loftq_bits": 4})
    with pytest.raises(FormatError, match="LoftQ adapters are relative to a quantized base"):
        load(tmp_path / "trained", initial=tmp_path / "init")
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "init" / "adapter_model.safetensors"), "--type", "kohya",
                                   "--initial", str(tmp_path / "init")])
    assert res.exit_code == 2 and "--initial applies to LoRA and MultiLoRA adapters, not to kohya" in res.output
