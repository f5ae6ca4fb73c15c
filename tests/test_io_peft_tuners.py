"""PEFT LoHa, LoKr, VeRA, IA3, OFT, BOFT: deltaspec's ΔW must equal PEFT's own merge, layer by layer.

Ground truth: `merge_and_unload()` weight minus the base weight (io_fixtures.make_peft_adapter) on tiny
LLaMA / GPT-2 models with random adapter weights. Tolerance: `close` (1e-4 relative, 1e-5 of max|ΔW|);
COFT's constrained rotations are tiny, so that case merges in float64.
"""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, OFTConfig, VeraConfig  # noqa: E402

import io_fixtures  # noqa: E402
from deltaspec.errors import FormatError, MissingBaseError, ShapeMismatchError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from deltaspec.spectra import spectrum  # noqa: E402
from io_fixtures import close, edit_config, make_peft_adapter, save_base, snapshot, tiny_model  # noqa: E402

T = ["q_proj", "v_proj", "down_proj"]
PARAMS = ("hada_", "lokr_", "vera_lambda", "ia3_l", "oft_R", "boft_R", "boft_s")


def randomize(pm, seed=1):
    """Random adapter tensors; IA3 scalings and BOFT scales around 1 (their identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if any(t in n for t in PARAMS):
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) + float("ia3_l" in n or "boft_s" in n))


@pytest.fixture(autouse=True)
def tuner_randomizer(monkeypatch):
    monkeypatch.setattr(io_fixtures, "randomize_adapter", randomize)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {kind: (root / kind, save_base(kind, root / kind)) for kind in ("llama", "gpt2")}


def check(u, want, kind=None):
    assert sorted(x.name + ".weight" for x in u) == sorted(want)
    for x in u:
        if kind:
            assert x.kind == kind
        got = x.load()
        assert tuple(got.shape) == tuple(x.shape)
        close(got.materialize(), want[x.name + ".weight"].reshape(x.shape))


CASES = {
    "loha": (LoHaConfig(r=4, alpha=8, target_modules=T, rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3}), "lowrank"),
    "lokr": (LoKrConfig(r=4, alpha=8, target_modules=T), "kronecker"),
    "lokr_both": (LoKrConfig(r=1, alpha=3, target_modules=T, decompose_both=True, decompose_factor=4), "kronecker"),
    "vera": (VeraConfig(r=4, target_modules=T), "lowrank"),
    "ia3": (IA3Config(target_modules=T, feedforward_modules=["down_proj"]), "dense"),
    "oft": (OFTConfig(r=0, oft_block_size=8, target_modules=T), "dense"),
    "oft_cayley": (OFTConfig(r=0, oft_block_size=8, target_modules=T, use_cayley_neumann=False), "dense"),
    "oft_block_share": (OFTConfig(r=0, oft_block_size=8, target_modules=T, block_share=True), "dense"),
    "boft": (BOFTConfig(boft_block_size=8, target_modules=T), "dense"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_llama_matches_peft_merge(bases, tmp_path, case):
    base_dir, _ = bases["llama"]
    cfg, kind = CASES[case]
    want = make_peft_adapter("llama", cfg, tmp_path / "a")
    before = snapshot(tmp_path)
    assert detect(tmp_path / "a") == "peft"
    if kind == "dense" or case == "vera":
        with pytest.raises(MissingBaseError, match="needs base=") as e:
            load(tmp_path / "a")
        assert "adapter_model.safetensors" in str(e.value)
    u = load(tmp_path / "a", base=base_dir)
    assert u.format == "peft" and not u.warnings
    check(u, want, kind)
    assert snapshot(tmp_path) == before


def test_factored_forms_need_no_base_and_spectra_are_exact(tmp_path):
    for case in ("loha", "lokr"):
        want = make_peft_adapter("llama", CASES[case][0], tmp_path / case)
        u = load(tmp_path / case)
        check(u, want)
        for x in u:
            ref = np.linalg.svd(want[x.name + ".weight"].numpy(), compute_uv=False)
            s = spectrum(x.load(), dtype="float64").sigma
            assert np.max(np.abs(s - ref[: len(s)])) <= 1e-5 * ref[0] and np.all(ref[len(s):] <= 1e-5 * ref[0])
    loha = {x.name: x for x in load(tmp_path / "loha")}
    assert loha["model.layers.0.self_attn.v_proj"].rank_bound == 4  # r = 2: rank ≤ r²
    assert loha["model.layers.0.mlp.down_proj"].meta["scale"] == pytest.approx(3 / 4)


def test_oft_coft_in_float64(tmp_path):
    model = tiny_model("llama").double()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "base")
    cfg = OFTConfig(r=0, oft_block_size=8, target_modules=T, coft=True, eps=1e-3)
    want = make_peft_adapter("llama", cfg, tmp_path / "a", base_state=base_state, model=model)
    check(load(tmp_path / "a", base=tmp_path / "base"), want, "dense")


def test_boft_butterfly_stages(bases, tmp_path, monkeypatch):
    """boft_n_butterfly_factor > 1 needs PEFT's CUDA block-diagonal kernel; stand in a plain torch one so
    PEFT's own permutations and stage product are the reference."""
    import peft.tuners.boft.layer as boft_layer

    class BlockDiag:
        @staticmethod
        def apply(x):
            return torch.stack([torch.block_diag(*xi) for xi in x])

    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: True)
    monkeypatch.setattr(boft_layer, "FastBlockDiag", BlockDiag)
    base_dir, _ = bases["llama"]
    for factor, size in ((2, 4), (3, 2)):
        cfg = BOFTConfig(boft_block_size=size, boft_n_butterfly_factor=factor, target_modules=["q_proj", "down_proj"])
        want = make_peft_adapter("llama", cfg, tmp_path / f"b{factor}")
        u = load(tmp_path / f"b{factor}", base=base_dir)
        assert {x.meta["stages"] for x in u} == {factor}
        check(u, want, "dense")


def test_gpt2_fan_in_fan_out(bases, tmp_path):
    base_dir, _ = bases["gpt2"]
    for name, cfg in (("vera", VeraConfig(r=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
                      ("ia3", IA3Config(target_modules=["c_attn", "c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                        fan_in_fan_out=True))):
        want = make_peft_adapter("gpt2", cfg, tmp_path / name)
        u = load(tmp_path / name, base=base_dir)
        qkv = next(x for x in u if x.name == "transformer.h.0.attn.c_attn")
        assert qkv.shape == (32, 96)  # Conv1D stores (in, out)
        check(u, want)
        if name == "ia3":
            assert any("IA3 also rescales this layer's bias" in w for w in u.warnings)


def test_conv_loha_lokr_ia3(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3)
            self.head = torch.nn.Linear(8, 16)

    from safetensors.torch import save_file

    for name, cfg in (("loha", LoHaConfig(r=2, alpha=4, target_modules=["conv", "head"])),
                      ("loha_eff", LoHaConfig(r=2, alpha=4, target_modules=["conv"], use_effective_conv2d=True)),
                      ("lokr", LoKrConfig(r=2, alpha=4, target_modules=["conv", "head"], use_effective_conv2d=True)),
                      ("ia3", IA3Config(target_modules=["conv", "head"], feedforward_modules=["conv"]))):
        torch.manual_seed(0)
        net = Net()
        base_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        (tmp_path / name).mkdir()
        save_file(base_state, tmp_path / name / "model.safetensors")
        want = make_peft_adapter("custom", cfg, tmp_path / name / "a", model=net, base_state=base_state)
        u = load(tmp_path / name / "a", base=tmp_path / name)
        conv = next(x for x in u if x.name == "conv")
        assert conv.shape == (8, 36)
        check(u, want)


def test_vera_projection_not_saved_is_an_error(tmp_path, bases):
    base_dir, _ = bases["llama"]
    make_peft_adapter("llama", VeraConfig(r=4, target_modules=T, save_projection=False), tmp_path / "a")
    with pytest.raises(FormatError, match="vera_A / vera_B were not saved .*does not guess them"):
        load(tmp_path / "a", base=base_dir)


def test_hostile_configs_and_shapes(bases, tmp_path):
    base_dir, _ = bases["llama"]
    make_peft_adapter("llama", LoKrConfig(r=4, alpha=8, target_modules=T), tmp_path / "a")
    edit_config(tmp_path / "a", alpha=float("nan"))
    with pytest.raises(FormatError, match=r"adapter_config.json: alpha: expected a finite number .*nan"):
        load(tmp_path / "a")
    edit_config(tmp_path / "a", alpha=8, r=0)
    with pytest.raises(FormatError, match="r: must be positive"):
        load(tmp_path / "a")
    edit_config(tmp_path / "a", r=4, peft_type="VERA")  # a LoKr file that claims to be VeRA
    with pytest.raises(FormatError, match="peft_type VERA, but .* holds no VERA tensors"):
        load(tmp_path / "a")
    make_peft_adapter("llama", IA3Config(target_modules=T, feedforward_modules=["down_proj"]), tmp_path / "ia3")
    edit_config(tmp_path / "ia3", feedforward_modules=[])  # down_proj's (1, in) vector now meets the output rows
    with pytest.raises(ShapeMismatchError, match="IA3 scalings do not match axis 0"):
        load(tmp_path / "ia3", base=base_dir)
    make_peft_adapter("llama", LoHaConfig(r=4, alpha=8, target_modules=T), tmp_path / "loha")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "loha" / "adapter_model.safetensors")
    sd = {k: v for k, v in sd.items() if not k.endswith("layers.0.self_attn.q_proj.hada_w2_b")}
    save_file(sd, tmp_path / "loha" / "adapter_model.safetensors")
    with pytest.raises(FormatError, match="'model.layers.0.self_attn.q_proj': LoHa has .* but no hada_w2_b") as e:
        load(tmp_path / "loha")
    assert "\n" not in str(e.value)
