"""LyCORIS files: deltaspec's ΔW must equal what LyCORIS's own forward adds, layer by layer.

Ground truth: the installed `lycoris-lora` package (optional test extra) builds the adapters on a tiny
model (Linear + Conv2d), random weights; ΔW is read off its forward by probing the layer with the
identity (ΔWᵀ = f(I) − f(0) − I·W0ᵀ; a conv with padding 0 probed by one-hot kh×kw patches), in
float64 (OFT/BOFT: LyCORIS inverts in float32, so float32). Formulas (LoHa, LoKr's scale convention,
kohya OFT) are also checked written out in float64. Tolerance: `close` (1e-4 relative, 1e-5 of max|ΔW|).
"""
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
lycoris = pytest.importorskip("lycoris")

from deltaspec.errors import FormatError, MissingBaseError, NonFiniteError, ShapeMismatchError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from deltaspec.spectra import spectrum  # noqa: E402
from io_fixtures import close, snapshot  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.conv = torch.nn.Conv2d(16, 32, 3)
        self.fc2 = torch.nn.Linear(32, 64)


def probe(mod, W0):
    """ΔW (out, in·k) that the (adapted) layer applies, read off its forward."""
    n = W0[0].numel()
    X = torch.eye(n, dtype=W0.dtype).reshape(n, *W0.shape[1:])
    if W0.dim() == 2:
        return (mod(X) - mod(0 * X) - F.linear(X, W0)).T
    return (mod(X) - mod(0 * X) - F.conv2d(X, W0))[:, :, 0, 0].T


def build(tmp_path, algo, dtype=torch.float64, seed=0, **kw):
    """(adapter file, base file, {name: ΔW}) for one LyCORIS algorithm on Tiny."""
    from lycoris import create_lycoris

    torch.manual_seed(seed)
    m = Tiny().to(dtype)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    save_file(base, tmp_path / "base.safetensors")
    dim, alpha = kw.pop("dim", 4), kw.pop("alpha", 2)
    net = create_lycoris(m, 1.0, linear_dim=dim, linear_alpha=alpha, conv_dim=dim, conv_alpha=alpha, algo=algo, **kw)
    net.apply_to()
    net.to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_((0.3 if "oft" in n else 1.0) * torch.randn(p.shape, generator=g, dtype=p.dtype)
                    + (1.0 if "dora_scale" in n else 0.0))
    (tmp_path / "adapter").mkdir()
    net.save_weights(str(tmp_path / "adapter" / "a.safetensors"), None, {})
    with torch.no_grad():
        want = {f"lycoris_{k}": probe(getattr(m, k), base[f"{k}.weight"]) for k in ("fc1", "conv", "fc2")}
    net.restore()
    return tmp_path / "adapter" / "a.safetensors", tmp_path / "base.safetensors", want


CASES = {
    "lora": ("lora", {}, "lowrank"),
    "locon_tucker": ("locon", {"use_tucker": True}, "lowrank"),
    "loha": ("loha", {}, "lowrank"),
    "loha_tucker": ("loha", {"use_tucker": True}, "lowrank"),
    "lokr": ("lokr", {"factor": 4, "dim": 2}, "kronecker"),
    "lokr_both_tucker": ("lokr", {"factor": 4, "dim": 2, "decompose_both": True, "use_tucker": True}, "kronecker"),
    "lokr_full": ("lokr", {"factor": 8, "dim": 32, "alpha": 1}, "kronecker"),
    "full": ("full", {}, "dense"),
    "ia3": ("ia3", {}, "dense"),
    "oft": ("diag-oft", {"constraint": 0.05, "rescaled": True}, "dense"),
    "boft": ("boft", {}, "dense"),
    "glora": ("glora", {}, "dense"),
    "dora_lora": ("lora", {"dora_wd": True}, "dense"),
    "dora_loha_in": ("loha", {"dora_wd": True, "wd_on_output": False}, "dense"),
    "dora_lokr": ("lokr", {"dora_wd": True, "factor": 4, "dim": 2}, "dense"),
}
NEEDS_BASE = {"ia3", "oft", "boft", "glora", "dora_lora", "dora_loha_in", "dora_lokr"}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_lycoris_forward(tmp_path, case):
    algo, kw, kind = CASES[case]
    dtype = torch.float32 if "oft" in case else torch.float64
    path, base, want = build(tmp_path, algo, dtype, **dict(kw))
    before = snapshot(tmp_path)
    fmt = "kohya" if case == "lora" else "lycoris"  # plain LoRA files are kohya's format
    assert detect(path) == fmt and detect(path.parent) == fmt
    if case in NEEDS_BASE:
        with pytest.raises(MissingBaseError, match="needs|depends on the base") as e:
            load(path)
        assert str(path) in str(e.value) and "base=" in str(e.value) and "\n" not in str(e.value)
    u = load(path, base=base)
    assert u.format == fmt and sorted(x.name for x in u) == sorted(want)
    assert {x.kind for x in u} == {kind}
    for x in u:
        got = x.load()
        assert tuple(got.shape) == tuple(x.shape) == tuple(want[x.name].shape)
        close(got.materialize(), want[x.name])
    if case == "full":
        assert any("3 bias update(s) not analysed" in w for w in u.warnings)
    else:
        assert not u.warnings
    assert snapshot(tmp_path) == before  # nothing written next to the inputs


@pytest.mark.parametrize("case", ["loha_tucker", "lokr_both_tucker", "locon_tucker"])
def test_spectra_exact_without_materialising(tmp_path, case):
    algo, kw, _ = CASES[case]
    path, _, want = build(tmp_path, algo, **dict(kw))
    for x in load(path):
        sp = spectrum(x.load(), dtype="float64")
        ref = np.linalg.svd(want[x.name].numpy(), compute_uv=False)
        assert len(sp.sigma) <= x.rank_bound
        assert np.max(np.abs(sp.sigma - ref[: len(sp.sigma)])) <= 1e-6 * ref[0]
        assert np.all(ref[len(sp.sigma):] <= 1e-6 * ref[0])


def test_loha_and_lokr_formulas_in_float64(tmp_path):
    """The documented formulas written out: LoHa (α/r)(W1a W1b)⊙(W2a W2b); LoKr s·W1⊗W2 with s = α/r for a
    decomposed factor and s = 1 when neither factor is decomposed, whatever α says."""
    g = torch.Generator().manual_seed(0)
    t = {n: torch.randn(*s, generator=g, dtype=torch.float64) for n, s in [
        ("a.hada_w1_a", (10, 3)), ("a.hada_w1_b", (3, 12)), ("a.hada_w2_a", (10, 3)), ("a.hada_w2_b", (3, 12)),
        ("b.lokr_w1", (2, 3)), ("b.lokr_w2_a", (5, 2)), ("b.lokr_w2_b", (2, 4)),
        ("c.lokr_w1", (2, 2)), ("c.lokr_w2", (3, 5))]}
    t.update({"a.alpha": torch.tensor(6.0), "b.alpha": torch.tensor(5.0), "c.alpha": torch.tensor(7.0)})
    save_file(t, tmp_path / "f.safetensors")
    u = {x.name: x for x in load(tmp_path / "f.safetensors")}
    loha = 2.0 * (t["a.hada_w1_a"] @ t["a.hada_w1_b"]) * (t["a.hada_w2_a"] @ t["a.hada_w2_b"])
    lokr = 2.5 * torch.kron(t["b.lokr_w1"], t["b.lokr_w2_a"] @ t["b.lokr_w2_b"])
    full = torch.kron(t["c.lokr_w1"], t["c.lokr_w2"])
    for name, want in (("a", loha), ("b", lokr), ("c", full)):
        assert torch.allclose(u[name].load().materialize().double(), want, rtol=1e-12, atol=1e-12), name
    assert u["c"].meta["scale"] == 1.0 and u["b"].meta["scale"] == 2.5 and u["a"].rank_bound == 9


def test_kohya_oft_constraint_and_diffusers_base_folder(tmp_path):
    """kohya's own OFT (ss_network_module networks.oft): Q ← Q·(min(‖Q‖, α·out) + 1e-8)/(‖Q‖ + 1e-8),
    R = (I+Q)(I−Q)⁻¹, W' = blockdiag(R)ᵀ W0 over row blocks; a kohya name finds its base weight in a
    diffusers pipeline folder (unet/, text_encoder/), and IA3 (on_input) scales W0's columns."""
    g = torch.Generator().manual_seed(0)
    W_unet = torch.randn(8, 6, generator=g, dtype=torch.float64)
    W_te = torch.randn(4, 10, generator=g, dtype=torch.float64)
    (tmp_path / "base" / "unet").mkdir(parents=True)
    (tmp_path / "base" / "text_encoder").mkdir()
    save_file({"down_blocks.0.attentions.0.proj_in.weight": W_unet}, tmp_path / "base/unet/diffusion_pytorch_model.safetensors")
    save_file({"text_model.encoder.layers.0.self_attn.q_proj.weight": W_te}, tmp_path / "base/text_encoder/model.safetensors")
    (tmp_path / "base" / "model_index.json").write_text("{}")
    blocks = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    ia3 = torch.randn(10, generator=g, dtype=torch.float64)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks": blocks,
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(0.05, dtype=torch.float64),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.weight": ia3,
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.on_input": torch.tensor(1)},
              tmp_path / "oft.safetensors", metadata={"ss_network_module": "networks.oft"})
    u = {x.name: x for x in load(tmp_path / "oft.safetensors", base=tmp_path / "base")}
    Q = blocks - blocks.transpose(1, 2)
    norm, c = float(Q.norm()), 0.05 * 8
    assert norm > c  # the constraint is active
    Q = Q * ((min(norm, c) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(4, dtype=torch.float64)
    R = torch.stack([(eye + q) @ torch.linalg.inv(eye - q) for q in Q])
    want = torch.cat([R[k].T @ W_unet[4 * k: 4 * k + 4] for k in range(2)]) - W_unet
    got = u["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert got.meta["variant"] == "kohya_oft"
    close(got.load().materialize(), want)
    close(u["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"].load().materialize(), W_te * ia3[None, :])


def test_ia3_on_input(tmp_path):
    from lycoris.modules.ia3 import IA3Module

    torch.manual_seed(0)
    m = Tiny().double()
    save_file({k: v.clone() for k, v in m.state_dict().items()}, tmp_path / "base.safetensors")
    W0 = m.fc1.weight.detach().clone()
    mod = IA3Module("lycoris_fc1", m.fc1, 1.0, train_on_input=True).double()
    mod.apply_to()
    with torch.no_grad():
        mod.weight.copy_(torch.randn(mod.weight.shape, dtype=torch.float64))
    save_file({f"lycoris_fc1.{k}": v.contiguous() for k, v in mod.state_dict().items()}, tmp_path / "a.safetensors")
    (x,) = load(tmp_path / "a.safetensors", base=tmp_path / "base.safetensors")
    assert x.meta["on_input"] is True
    with torch.no_grad():
        close(x.load().materialize(), probe(m.fc1, W0))


def write(path, tensors, metadata=None):
    save_file({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, path, metadata=metadata)
    return path


def test_hostile_inputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    loha = {"m.hada_w1_a": r(8, 2), "m.hada_w1_b": r(2, 6), "m.hada_w2_a": r(8, 2), "m.hada_w2_b": r(2, 6)}
    cases = [
        ({k: v for k, v in loha.items() if k != "m.hada_w2_b"}, FormatError, "'m': LoHa has hada_w1_a, hada_w1_b, hada_w2_a but no hada_w2_b"),
        ({**loha, "m.hada_w2_b": r(3, 6)}, ShapeMismatchError, "LoHa shapes do not fit"),
        ({**loha, "m.alpha": torch.tensor(float("nan"))}, NonFiniteError, "'m.alpha': alpha is nan"),
        ({**loha, "m.alpha": torch.ones(2)}, ShapeMismatchError, "'m.alpha': expected a scalar"),
        ({"m.lokr_w1_a": r(2, 2), "m.lokr_w1_b": r(3, 4), "m.lokr_w2": r(2, 2)}, ShapeMismatchError, "LoKr shapes do not fit"),
        ({"m.lokr_w1": r(2, 2)}, FormatError, "LoKr has lokr_w1 but no lokr_w2_a, lokr_w2_b"),
        ({"m.lora_up.weight": r(8, 2), "m.lora_mid.weight": r(2, 2, 3, 3)}, FormatError, "has lora_up but no lora_down"),
        ({"m.lora_up.weight": r(8, 2), "m.lora_down.weight": r(3, 6), "m.dora_scale": r(8, 1)}, ShapeMismatchError, "do not fit"),
        ({"m.lora_up.weight": r(8, 2), "m.lora_down.weight": r(2, 6), "m.dora_scale": r(8, 1)}, MissingBaseError, "'m': DoRA (dora_scale) depends on the base"),
        ({"m.weight": r(8), "m.on_input": torch.tensor(0)}, MissingBaseError, "'m': IA3 depends on the base"),
        ({"m.oft_blocks": r(2, 3, 4)}, ShapeMismatchError, "expected (blocks, b, b)"),
        ({"m.q_layer.weight": r(2, 6), "m.p_layer.weight": r(8, 2), "m.lambda_layer": r(1, 2)}, FormatError,
         "T-LoRA (q_layer/p_layer/lambda_layer) is not supported"),
    ]
    for i, (tensors, err, msg) in enumerate(cases):
        p = write(tmp_path / f"h{i}.safetensors", tensors)
        with pytest.raises(err) as e:
            load(p)
        text = str(e.value)
        assert msg in text and str(p) in text and "\n" not in text, (i, text)


def test_base_mismatches_and_warnings(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    save_file({"fc.weight": r(8, 6), "a_b.weight": r(4, 4), "a.b.weight": r(4, 4)}, tmp_path / "base.safetensors")
    cases = [
        ({"lycoris_fc.weight": r(7), "lycoris_fc.on_input": torch.tensor(0)}, ShapeMismatchError, "IA3 vector of 7 values"),
        ({"lycoris_fc.oft_blocks": r(3, 2, 2)}, ShapeMismatchError, "do not cover the 8 output rows"),
        ({"lycoris_xx.weight": r(8), "lycoris_xx.on_input": torch.tensor(0)}, FormatError, "no weight in base="),
        ({"lycoris_a_b.weight": r(4), "lycoris_a_b.on_input": torch.tensor(0)}, FormatError, "several weights of base="),
        ({"lycoris_fc.lora_up.weight": r(8, 2), "lycoris_fc.lora_down.weight": r(2, 5), "lycoris_fc.dora_scale": r(8, 1)},
         ShapeMismatchError, "implies weight shape [8, 5]"),
    ]
    for i, (tensors, err, msg) in enumerate(cases):
        p = write(tmp_path / f"b{i}.safetensors", tensors)
        with pytest.raises(err, match=msg.replace("[", r"\[").replace("]", r"\]")):
            load(p, base=tmp_path / "base.safetensors")
    p = write(tmp_path / "w.safetensors", {"lora_te_text_model_embeddings_token_embedding.lora_up.weight": r(8, 2),
                                           "lora_te_text_model_embeddings_token_embedding.lora_down.weight": r(2, 6),
                                           "lora_unet_x.lora_up.weight": r(8, 2), "lora_unet_x.lora_down.weight": r(2, 6),
                                           "lora_unet_x.hada_w1_a": r(8, 2), "lora_unet_x.hada_w1_b": r(2, 6),
                                           "lora_unet_x.hada_w2_a": r(8, 2), "lora_unet_x.hada_w2_b": r(2, 6),
                                           "lora_unet_n.w_norm": r(8), "lora_unet_n.b_norm": r(8), "junk": r(2)})
    with pytest.raises(FormatError, match="'lora_unet_x'"):  # two algorithms in one module: never a guess
        load(p)


def test_warnings_name_what_is_skipped(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    p = write(tmp_path / "w.safetensors", {"lora_te_text_model_embeddings_token_embedding.lora_up.weight": r(8, 2),
                                           "lora_te_text_model_embeddings_token_embedding.lora_down.weight": r(2, 6),
                                           "lora_unet_x.hada_w1_a": r(8, 2), "lora_unet_x.hada_w1_b": r(2, 6),
                                           "lora_unet_x.hada_w2_a": r(8, 2), "lora_unet_x.hada_w2_b": r(2, 6),
                                           "lora_unet_n.w_norm": r(8), "lora_unet_n.b_norm": r(8), "junk": r(2)})
    u = load(p)
    assert [x.name for x in u] == ["lora_unet_x"]
    w = " | ".join(u.warnings + u.notes)
    assert "1 tensor(s) not understood, skipped: junk" in w
    assert "1 norm-layer update(s)" in w and "lora_unet_n" in w
    assert "1 embedding update(s) skipped (lora_te_text_model_embeddings_token_embedding)" in w
    assert len(load(p, include_embeddings=True)) == 2
    assert math.isclose(u[0].meta["scale"], 1.0)  # no alpha: scale 1


def test_cli_reads_lycoris_exactly(tmp_path):
    import json

    from click.testing import CliRunner

    from deltaspec_cli.main import cli

    path, _, want = build(tmp_path, "lokr", factor=4, dim=2)
    for args in ([str(path)], [str(path.parent), "--type", "lycoris"]):
        res = CliRunner().invoke(cli, ["analyze", *args, "--format", "json", "-q", "--dtype", "float64"])
        assert res.exit_code == 0, res.output
        for row in json.loads(res.stdout)["layers"]:
            ref = np.linalg.svd(want[row["name"]].numpy(), compute_uv=False)
            assert row["kind"] == "kronecker" and abs(row["metrics"]["spectral_norm"] - ref[0]) <= 1e-6 * ref[0]
    res = CliRunner().invoke(cli, ["analyze", str(path), "--type", "kohya"])
    assert res.exit_code == 2 and "--type lycoris" in res.output and "Traceback" not in res.output


def test_dora_saved_in_bf16_uses_the_training_eps(tmp_path):
    """A DoRA network trained in float32 and saved with save_weights(…, torch.bfloat16): the norm's eps is
    float32's, as in the network that was trained (bf16's eps, 0.0078, moved σ by ~1 %)."""
    from lycoris import create_lycoris

    torch.manual_seed(0)
    m = Tiny()
    base = {k: v.clone() for k, v in m.state_dict().items()}
    save_file(base, tmp_path / "base.safetensors")
    net = create_lycoris(m, 1.0, linear_dim=4, linear_alpha=2, conv_dim=4, conv_alpha=2, algo="lora", dora_wd=True)
    net.apply_to()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in net.named_parameters():  # values a bf16 file holds exactly
            p.copy_((torch.randn(p.shape, generator=g) + (1.0 if "dora_scale" in n else 0.0)).bfloat16().float())
    net.save_weights(str(tmp_path / "a.safetensors"), torch.bfloat16, {})
    with torch.no_grad():
        want = {f"lycoris_{k}": probe(getattr(m, k), base[f"{k}.weight"]) for k in ("fc1", "conv", "fc2")}
    net.restore()
    u = load(tmp_path / "a.safetensors", base=tmp_path / "base.safetensors")
    assert {x.dtype for x in u} == {"bfloat16"}
    for x in u:
        close(x.load().materialize(), want[x.name], rtol=2e-4, atol_rel=2e-5)
