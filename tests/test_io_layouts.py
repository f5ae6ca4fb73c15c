"""Full fine-tunes of every tensor kind (conv, wrapped names, tensors that are not layers) and inputs
with nothing to analyse: exact ΔW against float64 subtraction, and a warning or one-line error that
says what really happened — never a silent skip."""
import json
import os
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import FormatError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402
from io_fixtures import LLAMA_LIKE, close, random_state, snapshot  # noqa: E402


class Vision(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.conv1d = torch.nn.Conv1d(4, 6, 5)
        self.head = torch.nn.Linear(8, 5)
        self.register_buffer("position_ids", torch.arange(10)[None])
        self.pos = torch.nn.Parameter(torch.randn(1, 10, 8))


def pair(tmp_path, model, wrap=lambda sd: sd):
    base = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ft = {k: (v + 0.05 * torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v).contiguous()
          for k, v in base.items()}
    for name, sd in (("base", base), ("ft", wrap(ft))):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors")
    return base, ft


@pytest.mark.parametrize("model_type", [None, "jamba"])
def test_conv_weights_and_skipped_tensors(tmp_path, model_type):
    """Conv kernels as (out, in·k…), also in a MoE architecture (Jamba's Mamba conv1d is not an expert stack)."""
    torch.manual_seed(0)
    base, ft = pair(tmp_path, Vision())
    if model_type:
        for d in ("base", "ft"):
            (tmp_path / d / "config.json").write_text(json.dumps({"model_type": model_type}))
    u = {x.name: x for x in load(tmp_path / "ft", base=tmp_path / "base")}
    assert set(u) == {"conv", "conv1d", "head"}
    assert u["conv"].shape == (8, 27) and u["conv"].meta["conv_kernel"] == "3x3"
    assert u["conv1d"].shape == (6, 20) and u["conv1d"].meta["conv_kernel"] == "5"
    for name, x in u.items():
        want = ft[name + ".weight"].double() - base[name + ".weight"].double()
        close(x.load().materialize(), want.reshape(want.shape[0], -1))
    u = load(tmp_path / "ft", base=tmp_path / "base")
    w = " | ".join(u.warnings + u.notes)
    assert "not a `.weight` parameter" in " ".join(u.warnings) and "1-D" not in " ".join(u.warnings)
    assert "3 tensor(s) not analysed, 1-D (norm scales, biases)" in w and "conv.bias" in w
    assert "1 tensor(s) not analysed, not floating point" in w and "position_ids" in w
    assert "1 tensor(s) not analysed, not a `.weight` parameter: pos" in w


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped(tmp_path, wrapper):
    base = random_state(LLAMA_LIKE, 0)
    ft = {wrapper + k: v + 0.1 for k, v in base.items()}
    for name, sd in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors")
    u = load(tmp_path / "ft", base=tmp_path / "base")
    assert [x.name for x in u][0] == "model.layers.0.self_attn.q_proj" and len(u) == 6
    for x in u:
        close(x.load().materialize(), torch.full(x.shape, 0.1, dtype=torch.float64), atol_rel=1e-6)


def test_torch_compile_state_dict(tmp_path):
    """A real torch.compile wrapper's state dict (`_orig_mod.` keys) against the plain model."""
    torch.manual_seed(0)
    model = Vision()
    base, ft = pair(tmp_path, torch.compile(model), wrap=lambda sd: sd)
    (tmp_path / "base" / "model.safetensors").unlink()
    save_file({k.replace("_orig_mod.", ""): v for k, v in base.items()}, tmp_path / "base" / "model.safetensors")
    u = load(tmp_path / "ft", base=tmp_path / "base")
    assert {x.name for x in u} == {"conv", "conv1d", "head"}
    close(u[0].load().materialize().reshape(-1), (ft[f"_orig_mod.{u[0].name}.weight"].double()
                                                  - base[f"_orig_mod.{u[0].name}.weight"].double()).reshape(-1))


def one_line(*parts, call, cls=FormatError):
    with pytest.raises(cls) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and "--modules" not in msg
    for p in parts:
        assert str(p) in msg, (p, msg)


def adapter(d, sd, cfg=None):
    d.mkdir(parents=True)
    save_file(sd, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps(cfg or {"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    return d


def test_nothing_to_analyse_says_why(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    save_file(random_state(LLAMA_LIKE, 0), base / "model.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({}, empty / "model.safetensors")
    one_line(empty, "holds no tensors", call=lambda: load(empty, base=base))
    other = tmp_path / "other"
    other.mkdir()
    save_file({"encoder.block.0.weight": torch.zeros(4, 4)}, other / "model.safetensors")
    one_line(other, "none of its 1 tensor names match the 11 of the base", "encoder.block.0.weight",
             call=lambda: load(other, base=base))
    norms = tmp_path / "norms"
    norms.mkdir()
    save_file({k: v for k, v in random_state(LLAMA_LIKE, 1).items() if v.ndim == 1}, norms / "model.safetensors")
    one_line(norms, "nothing to analyse", "1-D", call=lambda: load(norms, base=base))
    one_line("holds no tensors (an empty adapter)", call=lambda: load(adapter(tmp_path / "a0", {})))
    one_line("no LoRA tensors", "foo.bar", call=lambda: load(adapter(tmp_path / "a1", {"foo.bar": torch.zeros(2)})))
    pruned = {"base_model.model.q.lora_A.weight": torch.zeros(0, 8),
              "base_model.model.q.lora_B.weight": torch.zeros(8, 0),
              "base_model.model.q.lora_E.weight": torch.zeros(0, 1)}
    all_pruned = load(adapter(tmp_path / "a2", pruned, {"peft_type": "ADALORA", "init_r": 4, "lora_alpha": 8}))
    assert len(all_pruned) == 1 and any("rank 0" in w and "ΔW = 0" in w for w in all_pruned.warnings)  # issue 23
    emb = {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 100),
           "base_model.model.model.embed_tokens.lora_embedding_B": torch.zeros(32, 4)}
    only = load(adapter(tmp_path / "a3", emb))  # embeddings only: analysed, and said so
    assert len(only) == 1 and any("embedding updates only" in w for w in only.warnings)
    assert len(load(tmp_path / "a3", include_embeddings=True)) == 1


def test_cli_prints_the_io_reason_not_the_selection(tmp_path):
    d = adapter(tmp_path / "a", {})
    before = snapshot(tmp_path)
    r = CliRunner().invoke(cli, ["analyze", str(d)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "holds no tensors" in r.output
    assert "no layers match" not in r.output and "Traceback" not in r.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("wrap", [lambda k: "module." + k, lambda k: "_orig_mod." + k,
                                  lambda k: k.replace("base_model.model.", "base_model.model._orig_mod.")])
def test_wrapped_adapter_keys(tmp_path, wrap):
    g = torch.Generator().manual_seed(0)
    q = "model.layers.0.self_attn.q_proj"
    sd = {f"base_model.model.{q}.lora_A.weight": torch.randn(4, 32, generator=g),
          f"base_model.model.{q}.lora_B.weight": torch.randn(32, 4, generator=g)}
    plain = load(adapter(tmp_path / "plain", sd))
    wrapped = load(adapter(tmp_path / "wrapped", {wrap(k): v for k, v in sd.items()}))
    assert [x.name for x in wrapped] == [x.name for x in plain] == [q] and not wrapped.warnings
    assert torch.equal(wrapped[0].load().materialize(), plain[0].load().materialize())
