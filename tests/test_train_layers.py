"""Adapter layers: identity at init, exact ΔW, merge, name-pattern wrapping, saved layouts."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import deltaspec as ds
from deltaspec.train import GPT, GPTConfig, LoRALinear, MultiLoRALinear, adapters, merge_all, wrap
from deltaspec.train.save import save_lora, save_multilora
from deltaspec.train.trainer import TrainConfig

TINY = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY)


def randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_adapters_are_identity_at_init():
    x = torch.randint(0, 100, (2, 10))
    ref = tiny_gpt()(x)
    for method in ("lora", "multilora"):
        m = tiny_gpt()
        wrap(m, ["q_proj", "v_proj"], method, rank=8, alpha=16, heads=4)
        torch.testing.assert_close(m(x), ref)  # LoRA: B = 0; MultiLoRA: scalings = 0 (B, A nonzero)
    ml = adapters(m)["model.layers.0.self_attn.q_proj"]
    assert ml.lora_B.abs().sum() > 0 and ml.lora_scaling.abs().sum() == 0


def test_multilora_delta_matches_hand_formula_float64():
    base = nn.Linear(12, 10, bias=False).double()
    m = MultiLoRALinear(base, heads=3, r=2, alpha=4.0).double()
    with torch.no_grad():
        m.lora_scaling.copy_(torch.randn(3, 10, dtype=torch.float64))
    want = sum((4.0 / 2) * torch.diag(m.lora_scaling[i]) @ m.lora_B[i] @ m.lora_A[i] for i in range(3))
    torch.testing.assert_close(m.delta_weight(), want)
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ (base.weight + want).T)
    torch.testing.assert_close(m.merge()(x), m(x))


def test_lora_delta_and_merge():
    base = nn.Linear(8, 6)
    m = LoRALinear(base, r=4, alpha=8)
    with torch.no_grad():
        m.lora_B.normal_()
    torch.testing.assert_close(m.delta_weight(), 2.0 * m.lora_B @ m.lora_A)
    x = torch.randn(3, 8)
    torch.testing.assert_close(m.merge()(x), m(x), atol=1e-5, rtol=1e-5)


def test_wrap_selects_by_pattern_and_freezes():
    m = tiny_gpt()
    names = wrap(m, ["k_proj", "mlp.down_proj"], "lora", rank=4, alpha=8)
    assert names == ["model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj",
                     "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj"]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="divisible"):
        wrap(tiny_gpt(), ["q_proj"], "multilora", rank=6, alpha=8, heads=4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        wrap(tiny_gpt(), ["nothing"], "lora", rank=4, alpha=8)


def test_merged_model_equals_base_plus_analysed_delta(tmp_path):
    """Merged weights = W0 + ΔW, where ΔW is what deltaspec reads back from the saved adapter."""
    for method in ("lora", "multilora"):
        m = tiny_gpt()
        w0 = {k: v.clone() for k, v in m.state_dict().items()}
        wrap(m, ["q_proj", "k_proj", "v_proj"], method, rank=8, alpha=16, heads=4)
        randomize(m)
        out = tmp_path / method
        cfg = TrainConfig(method=method, out=str(out), rank=8, heads=4, lora_alpha=16)
        (save_lora if method == "lora" else save_multilora)(m, str(out), cfg, "base")
        updates = {u.name: u.load().materialize() for u in ds.load(out)}
        merged = merge_all(m).state_dict()
        assert len(updates) == 6
        for name, delta in updates.items():
            torch.testing.assert_close(merged[name + ".weight"], w0[name + ".weight"] + delta, atol=1e-5, rtol=1e-5)


def test_saved_multilora_follows_the_documented_layout(tmp_path):
    m = tiny_gpt()
    wrap(m, ["v_proj"], "multilora", rank=8, alpha=16, heads=4)
    randomize(m)
    save_multilora(m, str(tmp_path), TrainConfig(method="multilora", out=str(tmp_path), rank=8, heads=4, lora_alpha=16), "b")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["n_heads"], cfg["r"], cfg["scaling"]) == ("MULTILORA", 4, 2, "vector")
    sd = load_file(tmp_path / "adapter_model.safetensors")
    k = "base_model.model.model.layers.1.self_attn.v_proj"
    A, B, S = sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"], sd[f"{k}.lora_scaling"]
    assert A.shape == (4, 2, 32) and B.shape == (4, 32, 2) and S.shape == (4, 32)
    want = sum((16 / 2) * S[i, :, None] * (B[i] @ A[i]) for i in range(4))  # docs/FORMATS.md formula
    torch.testing.assert_close(adapters(m)["model.layers.1.self_attn.v_proj"].delta_weight().detach(), want)
