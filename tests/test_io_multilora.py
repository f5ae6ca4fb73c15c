"""MultiLoRA (deltaspec layout, MTL-LoRA .pt) and kohya LoRA files against hand-written float64 loops."""
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import FormatError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from deltaspec.updates import SumOfLowRank  # noqa: E402
from io_fixtures import MODULES, close, hand_delta, write_deltaspec, write_mtl  # noqa: E402


@pytest.mark.parametrize("vector,prefix", [(True, True), (False, True), (True, False), (False, False)])
def test_deltaspec_multilora(tmp_path, vector, prefix):
    want = write_deltaspec(tmp_path / "a", vector, prefix)
    assert detect(tmp_path / "a") == "multilora"
    u = load(tmp_path / "a")
    assert u.format == "multilora" and not u.warnings
    assert [x.name for x in u] == list(MODULES)
    for x in u:
        assert x.kind == "lowrank" and x.rank_bound == 6 and x.meta["heads"] == 3 and x.meta["r"] == 2
        upd = x.load()
        assert isinstance(upd, SumOfLowRank) and x.shape == MODULES[x.name]
        close(upd.materialize(), want[x.name])


def test_deltaspec_multilora_fan_in_fan_out(tmp_path):
    want = write_deltaspec(tmp_path / "a", vector=True, fan_in_fan_out=True)
    for x in load(tmp_path / "a"):
        assert x.shape == MODULES[x.name][::-1]
        close(x.load().materialize(), want[x.name])


def test_mtl_multilora(tmp_path):
    raw = write_mtl(tmp_path / "run" / "checkpoint" / "final_checkpoint.pt")
    for p in (tmp_path / "run", tmp_path / "run" / "checkpoint" / "final_checkpoint.pt"):
        assert detect(p) == "mtl-multilora"
        with pytest.raises(FormatError, match="do not store lora_alpha: pass lora_alpha=ALPHA") as e:
            load(p)
        assert "final_checkpoint.pt" in str(e.value)
    u = load(tmp_path / "run", lora_alpha=16)
    assert u.format == "mtl-multilora" and [x.name for x in u] == list(MODULES)
    for x in u:
        assert x.dtype == "bfloat16" and x.meta["scale"] == 4.0
        got = x.load().materialize()
        assert got.dtype == torch.float32
        close(got, hand_delta(*raw[x.name], 16.0))


def test_mtl_alpha_ignored_elsewhere(tmp_path):
    write_deltaspec(tmp_path / "a", vector=False)
    assert any("lora_alpha=3" in w for w in load(tmp_path / "a", lora_alpha=3).warnings)


def test_kohya(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(4, 20, generator=g).half(),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(12, 4, generator=g).half(),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(2.0).half(),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.randn(2, 3, 3, 3, generator=g),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.randn(5, 2, 1, 1, generator=g),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(3, 8, generator=g),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(6, 3, generator=g),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(0.0),
    }
    f = tmp_path / "style.safetensors"
    save_file(sd, f)
    assert detect(f) == "kohya"
    u = {x.name: x for x in load(f)}
    assert set(u) == {k.split(".")[0] for k in sd}
    for name, x in u.items():
        up = sd[f"{name}.lora_up.weight"].double().flatten(1)
        down = sd[f"{name}.lora_down.weight"].double().flatten(1)
        a = sd.get(f"{name}.alpha")
        scale = float(a) / down.shape[0] if a is not None and float(a) != 0 else 1.0
        assert x.shape == (up.shape[0], down.shape[1]) and x.meta["scale"] == pytest.approx(scale)
        close(x.load().materialize(), scale * up @ down)
    assert u["lora_unet_down_blocks_0_resnets_0_conv1"].shape == (5, 27)
    assert not load(f).warnings
    for meta in ({"ss_network_module": "networks.dylora"},
                 {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "dylora", "block_size": 2}'}):
        save_file(sd, tmp_path / "dy.safetensors", metadata=meta)
        assert any("DyLoRA" in w for w in load(tmp_path / "dy.safetensors").warnings)


def test_kohya_dotted_names_and_lycoris_refused(tmp_path):
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 8, generator=g), torch.randn(4, 2, generator=g)
    f = tmp_path / "dotted.safetensors"
    save_file({"unet.mid.proj.lora_down.weight": down, "unet.mid.proj.lora_up.weight": up,
               "unet.mid.proj.alpha": torch.tensor(1.0)}, f)
    (x,) = load(f)
    assert x.name == "unet.mid.proj"
    close(x.load().materialize(), 0.5 * up.double() @ down.double())
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_a.hada_w1_a": torch.randn(4, 2), "lora_unet_a.hada_w1_b": torch.randn(2, 8)}, loha)
    with pytest.raises(FormatError, match="LoHa has hada_w1_a, hada_w1_b but no hada_w2_a, hada_w2_b"):
        load(loha)
