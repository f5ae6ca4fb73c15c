"""PEFT adapters: deltaspec's ΔW must equal PEFT's own merge (merge_and_unload − base), layer by layer."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import AdaLoraConfig, LoraConfig  # noqa: E402

from deltaspec.errors import FormatError, MissingBaseError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from io_fixtures import close, edit_config, make_peft_adapter, rewrite_adapter, save_base  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {kind: (root / kind, save_base(kind, root / kind)) for kind in ("llama", "gpt2")}


def check_against_peft(updates, want: dict, base_state: dict):
    """Every layer: name = base module, shape = base weight shape, ΔW = PEFT's merge − base."""
    got_names = {u.name + ".weight" for u in updates}
    assert got_names == set(want), (sorted(got_names), sorted(want))
    for u in updates:
        key = u.name + ".weight"
        assert tuple(u.shape) == tuple(base_state[key].shape[:1]) + (base_state[key][0].numel(),)
        delta = u.load().materialize()
        assert delta.dtype in (torch.float32, torch.float64)
        assert tuple(delta.shape) == tuple(u.shape)
        close(delta, want[key].reshape(u.shape))


def test_lora_llama_all_linear(bases, tmp_path):
    base_dir, base_state = bases["llama"]
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS), tmp_path / "a")
    assert detect(tmp_path / "a") == "peft"
    u = load(tmp_path / "a")
    assert u.format == "peft" and len(u) == 14 and not u.warnings
    assert all(x.kind == "lowrank" and x.rank_bound == 4 and x.meta["scale"] == 2.0 for x in u)
    # model order: layer by layer, attention before MLP
    assert [x.name for x in u][:7] == [f"model.layers.0.{m}" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    check_against_peft(u, want, base_state)
    # a file inside the adapter dir resolves to the dir
    assert [x.name for x in load(tmp_path / "a" / "adapter_model.safetensors")] == [x.name for x in u]


def test_rslora(bases, tmp_path):
    _, base_state = bases["llama"]
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                                                 target_modules=["q_proj", "v_proj"]), tmp_path / "a")
    u = load(tmp_path / "a")
    assert {x.meta["variant"] for x in u} == {"rslora"} and u[0].meta["scale"] == pytest.approx(4.0)
    check_against_peft(u, want, base_state)


def test_rank_and_alpha_pattern(bases, tmp_path):
    _, base_state = bases["llama"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                     rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 6},
                     alpha_pattern={"self_attn": 99, "model.layers.0.self_attn.v_proj": 3, "v_proj": 12, "k_proj": 5})
    want = make_peft_adapter("llama", cfg, tmp_path / "a")
    u = {x.name: x for x in load(tmp_path / "a")}
    assert u["model.layers.0.self_attn.q_proj"].meta["r"] == 2
    assert u["model.layers.1.self_attn.v_proj"].meta["r"] == 6
    assert u["model.layers.0.self_attn.v_proj"].meta["alpha"] == 3  # first matching key wins
    assert u["model.layers.1.self_attn.v_proj"].meta["alpha"] == 12
    assert u["model.layers.1.self_attn.k_proj"].meta["scale"] == pytest.approx(5 / 4)
    assert u["model.layers.1.self_attn.q_proj"].meta["alpha"] == 8  # "self_attn" matches no module name end
    check_against_peft(load(tmp_path / "a"), want, base_state)


def test_gpt2_fan_in_fan_out(bases, tmp_path):
    _, base_state = bases["gpt2"]
    cfg = LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"])
    want = make_peft_adapter("gpt2", cfg, tmp_path / "a")
    u = load(tmp_path / "a")
    assert len(u) == 8
    qkv = next(x for x in u if x.name == "transformer.h.0.attn.c_attn")
    assert qkv.shape == (32, 96)  # Conv1D stores (in, out)
    check_against_peft(u, want, base_state)


def test_embedding_lora(bases, tmp_path):
    _, base_state = bases["llama"]
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["embed_tokens", "q_proj"])
    want = make_peft_adapter("llama", cfg, tmp_path / "a")
    default = load(tmp_path / "a")
    assert "model.embed_tokens" not in [x.name for x in default]
    assert any("include_embeddings=True" in w for w in default.notes)
    u = load(tmp_path / "a", include_embeddings=True)
    emb = u[0]
    assert emb.name == "model.embed_tokens" and emb.shape == (100, 32)
    check_against_peft(u, want, base_state)
    # an adapter of embeddings only: analysed rather than "nothing to analyse", and said so
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=16, target_modules=["embed_tokens"]), tmp_path / "e")
    only = load(tmp_path / "e")
    assert [x.name for x in only] == ["model.embed_tokens"]
    assert any("embedding updates only" in w for w in only.warnings)
    check_against_peft(only, want, base_state)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_dora_perturbed_magnitude(bases, tmp_path, kind):
    base_dir, base_state = bases[kind]
    targets = ["q_proj", "v_proj"] if kind == "llama" else ["c_attn", "c_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=targets, fan_in_fan_out=kind == "gpt2")
    want = make_peft_adapter(kind, cfg, tmp_path / "a")
    with pytest.raises(MissingBaseError, match="DoRA adapter needs base=") as e:
        load(tmp_path / "a")
    assert str(tmp_path / "a" / "adapter_model.safetensors") in str(e.value)
    u = load(tmp_path / "a", base=base_dir)
    assert {x.meta["variant"] for x in u} == {"dora"} and all(x.kind == "dense" for x in u)
    check_against_peft(u, want, base_state)
    # the perturbation matters: plain LoRA on the same factors is not the DoRA update
    lora_only = tmp_path / "plain"
    rewrite_adapter(tmp_path / "a", lora_only, lambda k: k, extra=None)
    edit_config(lora_only, use_dora=False)
    from safetensors.torch import load_file, save_file
    sd = {k: v for k, v in load_file(lora_only / "adapter_model.safetensors").items() if "magnitude" not in k}
    save_file(sd, lora_only / "adapter_model.safetensors")
    x = load(lora_only)[0]
    assert not torch.allclose(x.load().materialize().double(), want[x.name + ".weight"], atol=1e-3)


def test_adalora(bases, tmp_path):
    _, base_state = bases["llama"]
    cfg = AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    want = make_peft_adapter("llama", cfg, tmp_path / "a")
    u = load(tmp_path / "a")
    assert {x.meta["variant"] for x in u} == {"adalora"}
    check_against_peft(u, want, base_state)


def test_modules_to_save(bases, tmp_path):
    base_dir, base_state = bases["llama"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    want = make_peft_adapter("llama", cfg, tmp_path / "a")
    no_base = load(tmp_path / "a", include_embeddings=True)
    assert "lm_head" not in [x.name for x in no_base] and any("modules_to_save" in w for w in no_base.warnings)
    u = load(tmp_path / "a", base=base_dir, include_embeddings=True)
    assert u[-1].name == "lm_head" and u[-1].kind == "dense"
    check_against_peft(u, want, base_state)


def test_key_variants_and_legacy_bin(bases, tmp_path):
    """No `base_model.model.` prefix, adapter name left in + base_layer copies, legacy .bin."""
    _, base_state = bases["llama"]
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]),
                             tmp_path / "a")
    strip = lambda k: k.replace("base_model.model.", "")  # noqa: E731
    named = lambda k: k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")  # noqa: E731,E501
    extra = {"base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": torch.randn(32, 32)}
    rewrite_adapter(tmp_path / "a", tmp_path / "noprefix", strip)
    rewrite_adapter(tmp_path / "a", tmp_path / "raw", named, extra=extra)
    rewrite_adapter(tmp_path / "a", tmp_path / "bin", lambda k: k, bin_file=True)
    for d in ("noprefix", "raw", "bin"):
        u = load(tmp_path / d)
        assert detect(tmp_path / d) == "peft", d
        if d == "raw":  # the base_layer copy is not an update, and its skip is not silent
            assert len(u.warnings) == 1 and "copies of base weights" in u.warnings[0]
            assert "q_proj.base_layer.weight" in u.warnings[0]
        else:
            assert not u.warnings, d
        check_against_peft(u, want, base_state)


def test_conv2d_lora(tmp_path):
    from safetensors.torch import save_file

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.head = torch.nn.Linear(8, 4)

    torch.manual_seed(0)
    net = Net()
    base_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    (tmp_path / "base").mkdir()
    save_file(base_state, tmp_path / "base" / "model.safetensors")
    want = make_peft_adapter("custom", LoraConfig(r=2, lora_alpha=4, target_modules=["conv", "head"]),
                             tmp_path / "a", model=net)
    u = load(tmp_path / "a")
    conv = next(x for x in u if x.name == "conv")
    assert conv.shape == (8, 27) and conv.meta["conv_kernel"] == "3x3"
    check_against_peft(u, want, base_state)


def test_warnings_and_unsupported(bases, tmp_path):
    make_peft_adapter("llama", LoraConfig(r=2, target_modules=["q_proj"]), tmp_path / "a")
    edit_config(tmp_path / "a", init_lora_weights="pissa_niter_4")
    assert any("PiSSA" in w for w in load(tmp_path / "a").warnings)
    edit_config(tmp_path / "a", peft_type="FOURIERFT")
    with pytest.raises(FormatError, match="peft_type FOURIERFT is not supported"):
        load(tmp_path / "a")


def test_multihead_attention_out_proj_as_peft_computes_it(tmp_path):
    """LoRA on nn.MultiheadAttention: the in_proj update is named by the module, the out_proj one
    `mha.out_proj` (not PEFT's internal `mha.base_layer.out_proj`) and is 2·s·BA, as PEFT's merge and
    forward apply it; the model's own output is the reference."""
    from peft import get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    torch.manual_seed(0)
    net = Net()
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    pm = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["mha"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    pm.save_pretrained(tmp_path / "a")
    u = load(tmp_path / "a")
    assert sorted(x.name for x in u) == ["mha", "mha.out_proj"]
    assert any("out_proj update twice" in w for w in u.warnings)
    got = {x.name: x.load().materialize().double() for x in u}
    x = torch.randn(3, 5, 16, generator=g)
    ref = torch.nn.MultiheadAttention(16, 2, batch_first=True).double()
    ref.load_state_dict({k.removeprefix("mha."): v.double() for k, v in base.items()})
    with torch.no_grad():
        ref.in_proj_weight += got["mha"]
        ref.out_proj.weight += got["mha.out_proj"]
        want = pm.eval()(x)
        torch.testing.assert_close(ref(x.double(), x.double(), x.double())[0].float(), want, atol=1e-5, rtol=1e-4)
