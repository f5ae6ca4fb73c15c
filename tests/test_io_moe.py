"""MoE experts: one exact ΔW per expert and fused half, against PEFT's own merge and float64 slices.

The reference orientation and gate/up layout come from transformers itself (the experts module's
`is_transposed` / `is_concatenated`), not from deltaspec's table, which is checked against them too.
"""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("peft")
pytest.importorskip("transformers")

from deltaspec.errors import FormatError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec.io.model.experts import Layout  # noqa: E402
from io_fixtures import close, randomize_adapter  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
CONFIGS = {  # model_type -> config kwargs (H = 32, expert intermediate I = 48, 4 experts)
    "mixtral": dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(intermediate_size=64, moe_intermediate_size=48, num_experts=4, num_experts_per_tok=2, head_dim=8),
    "gpt_oss": dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                    layer_types=["full_attention"]),
    "llama4_text": dict(intermediate_size=48, intermediate_size_mlp=64, num_local_experts=4, num_experts_per_tok=1,
                        head_dim=8),
}
E, H, I = 4, 32, 48


def tiny_moe(model_type, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SMALL, **CONFIGS[model_type]))


def experts_module(model):
    return next(m for n, m in model.named_modules() if n.endswith("experts") and hasattr(m, "gate_up_proj"))


def transposed(exp) -> bool:
    """(E, in, out) storage, read off the shapes (H = 32 differs from 2I = 96, so they tell here)."""
    return exp.gate_up_proj.shape[1] == H


def reference(delta: torch.Tensor, exp, param: str) -> dict:
    """{suffix: (out, in) float64 matrix} of one stack's ΔW: orientation from the shapes, gate/up
    layout from transformers' `is_concatenated` (its default, True, where a class has no flag)."""
    out = {}
    for e in range(delta.shape[0]):
        m = delta[e].T if transposed(exp) else delta[e]  # (out, in)
        if param == "gate_up_proj":
            gate, up = (m[0::2], m[1::2]) if not getattr(exp, "is_concatenated", True) else m.chunk(2, dim=0)
            out[f"{e}.gate_proj"], out[f"{e}.up_proj"] = gate, up
        else:
            out[f"{e}.{param}"] = m
    return out


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_layout_table_agrees_with_transformers(model_type):
    exp = experts_module(tiny_moe(model_type))
    lay = Layout(model_type)
    assert lay.known and lay.transposed == transposed(exp)
    assert lay.interleaved == (not getattr(exp, "is_concatenated", True))
    # PEFT orients its factors by transformers' flag; where the class has none, deltaspec flips them
    assert lay.peft_flipped == (transposed(exp) and not getattr(exp, "is_transposed", False))


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_expert_lora_matches_peft_merge(model_type, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_moe(model_type)
    exp = experts_module(model)
    prefix = next(n for n, m in model.named_modules() if m is exp)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = LoraConfig(r=2, lora_alpha=6, target_modules=[], rank_pattern={"down_proj": 3},
                     target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    model.save_pretrained(tmp_path / "base")
    pm = get_peft_model(model, cfg)
    randomize_adapter(pm, 7)
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    want = {}
    for param in ("gate_up_proj", "down_proj"):
        key = f"{prefix}.{param}"
        for suffix, m in reference(merged[key].double() - base[key].double(), exp, param).items():
            want[f"{prefix}.{suffix}"] = m
    u = load(tmp_path / "a")
    assert not u.warnings
    assert sorted(x.name for x in u) == sorted(want)
    for x in u:
        r = 3 if x.name.endswith("down_proj") else 2
        assert x.kind == "lowrank" and x.meta["r"] == r and x.meta["scale"] == pytest.approx(6 / r)
        assert x.meta["experts"] == E and x.rank_bound == r
        d = x.load().materialize()
        assert tuple(d.shape) == x.shape == tuple(want[x.name].shape)
        close(d, want[x.name])
    shapes = {x.name.rsplit(".", 1)[1]: x.shape for x in u}
    assert shapes == {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    # with --base (its config.json gives the architecture; fused stacks on disk are shape-checked)
    v = load(tmp_path / "a", base=tmp_path / "base")
    assert [x.name for x in v] == [x.name for x in u]
    assert torch.equal(v[-1].load().materialize(), u[-1].load().materialize())


def test_expert_lora_unknown_architecture_is_not_split(tmp_path):
    """Without any source for the architecture the fused parameter stays whole per expert, with a
    warning; ΔW is still exact (PEFT's merged slice, (out, in))."""
    from peft import LoraConfig, get_peft_model

    model = tiny_moe("mixtral")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=[],
                                          target_parameters=["experts.gate_up_proj"]))
    randomize_adapter(pm, 3)
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["auto_mapping"] = None
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    u = load(tmp_path / "a")
    assert len(u) == E and [x.name for x in u][0] == "model.layers.0.mlp.experts.0.gate_up_proj"
    assert any("not split" in w and "gate_up_proj" in w for w in u.warnings)
    key = "model.layers.0.mlp.experts.gate_up_proj"
    for x in u:
        close(x.load().materialize(), merged[key][x.meta["expert"]].double() - base[key][x.meta["expert"]].double())
    # --base gives the architecture back (its config.json): split again
    model.save_pretrained(tmp_path / "base")
    assert len(load(tmp_path / "a", base=tmp_path / "base")) == 2 * E


def test_nesting_that_does_not_fit_is_an_error(tmp_path):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(tiny_moe("qwen3_moe"), LoraConfig(r=2, target_modules=[],
                        target_parameters=["experts.gate_up_proj", "experts.down_proj"]))
    pm.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["target_parameters"] = ["experts.down_proj"]
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="2 nested LoRA wrapper.*select 1 parameter"):
        load(tmp_path / "a")


@pytest.mark.parametrize("model_type", ["gpt_oss", "llama4_text"])
def test_full_finetune_fused_stacks_per_expert(model_type, tmp_path):
    """gpt-oss and Llama 4 keep fused 3-D experts on disk: per-expert (out, in) ΔW and gate/up halves."""
    model = tiny_moe(model_type)
    exp = experts_module(model)
    prefix = next(n for n, m in model.named_modules() if m is exp)
    model.save_pretrained(tmp_path / "base")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "ft")
    ft = model.state_dict()
    u = {x.name: x for x in load(tmp_path / "ft", base=tmp_path / "base")}
    for param in ("gate_up_proj", "down_proj"):
        key = f"{prefix}.{param}"
        for suffix, want in reference(ft[key].double() - base[key].double(), exp, param).items():
            x = u[f"{prefix}.{suffix}"]
            assert x.kind == "dense" and x.meta["orientation"] == "(out, in)"
            close(x.load().materialize(), want)
    # without config.json the architecture is unknown: stored slices, unsplit, and a warning
    (tmp_path / "ft" / "config.json").unlink()
    (tmp_path / "base" / "config.json").unlink()
    v = load(tmp_path / "ft", base=tmp_path / "base")
    key = f"{prefix}.gate_up_proj"
    x = next(x for x in v if x.name == f"{prefix}.1.gate_up_proj")
    assert x.meta["orientation"] == "stored"
    close(x.load().materialize(), ft[key][1].double() - base[key][1].double())
    assert any("expert stack(s) read per expert as stored" in w for w in v.warnings)


def test_expert_names_line_up_with_on_disk_full_finetunes(tmp_path):
    """Qwen3-MoE is saved with per-expert weights (`mlp.experts.3.gate_proj.weight`): a full fine-tune
    and an expert LoRA of the same model give the same layer names."""
    from peft import LoraConfig, get_peft_model

    model = tiny_moe("qwen3_moe")
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "ft")
    full = {x.name for x in load(tmp_path / "ft", base=tmp_path / "base") if ".experts." in x.name}
    pm = get_peft_model(tiny_moe("qwen3_moe"), LoraConfig(r=2, target_modules=[],
                        target_parameters=["experts.gate_up_proj", "experts.down_proj"]))
    pm.save_pretrained(tmp_path / "a")
    assert {x.name for x in load(tmp_path / "a")} == full and len(full) == 3 * E
