"""A LoRA adapter saved by deltaspec's trainer loads in PEFT onto the same base and gives the same outputs."""
import pytest
import torch

from deltaspec.train import GPT, GPTConfig, wrap
from deltaspec.train.save import save_lora
from deltaspec.train.trainer import TrainConfig

peft = pytest.importorskip("peft")


def test_peft_loads_our_lora(tmp_path):
    cfg = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)
    torch.manual_seed(0)
    base_state = GPT(cfg).state_dict()
    ours = GPT(cfg)
    ours.load_state_dict(base_state)
    wrap(ours, ["q_proj", "v_proj", "down_proj"], "lora", rank=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    save_lora(ours, str(tmp_path), TrainConfig(method="lora", out=str(tmp_path), rank=4, lora_alpha=8), "base")

    fresh = GPT(cfg)
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path))
    x = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(GPT(cfg).eval()(x), ours(x))  # the adapter does change the output
