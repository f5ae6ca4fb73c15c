"""diffusers LoRA files: names are diffusers module names, ΔW equals PEFT's own merge, layer by layer.

Files are written by diffusers itself (`save_lora_weights` of the SD / Flux loader mixins, optional test
extra) from tiny UNet / CLIP / Flux models with PEFT LoRA layers; the reference is PEFT's merge of each
layer (merged weight − base weight). The old attention-processor layout is written by renaming keys as
diffusers ≤ 0.24 did, and its names are checked against diffusers' own converter. Tolerance: `close`.
"""
import json
import os
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

from deltaspec.errors import FormatError, MissingBaseError, NonFiniteError, ShapeMismatchError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from io_fixtures import close, snapshot  # noqa: E402

FILE = "pytorch_lora_weights.safetensors"


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1))


def merged_deltas(model, base_state, strip=""):
    """PEFT's merge of every LoRA layer: {module name: merged weight − base weight} (float64)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
            name = name.removeprefix(strip)
            w = m.get_base_layer().weight.detach().double()
            out[name] = (w - base_state[name + ".weight"].double()).reshape(w.shape[0], -1)
    return out


def sd_lora(tmp_path, unet_cfg, te_cfg, metadata=True):
    """A SD-style diffusers LoRA file from a UNet and a CLIP text encoder; {layer name: PEFT's ΔW}."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    unet, te = tiny_unet(), tiny_text_encoder()
    unet_base = {k: v.clone() for k, v in unet.state_dict().items()}
    te_base = {k: v.clone() for k, v in te.state_dict().items()}
    unet.add_adapter(unet_cfg)
    te = get_peft_model(te, te_cfg)
    te_sd = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(te).items()}
    meta = dict(unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                text_encoder_lora_adapter_metadata=te.peft_config["default"].to_dict()) if metadata else {}
    StableDiffusionLoraLoaderMixin.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(unet),
                                                     text_encoder_lora_layers=te_sd, **meta)
    want = {f"unet.{k}": v for k, v in merged_deltas(unet, unet_base).items()}
    want.update({f"text_encoder.{k}": v for k, v in merged_deltas(te, te_base, "base_model.model.").items()})
    return tmp_path / FILE, want, unet_base


def check(u, want):
    assert sorted(x.name for x in u) == sorted(want)
    for x in u:
        got = x.load().materialize()
        assert tuple(got.shape) == tuple(x.shape) == tuple(want[x.name].shape)
        close(got, want[x.name])


UNET_T = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.2"]


def test_sd_peft_style_with_metadata(tmp_path):
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_T, rank_pattern={"to_k": 2}, alpha_pattern={"conv1": 3},
                          init_lora_weights=False)
    te_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "fc1"], use_rslora=True, init_lora_weights=False)
    path, want, _ = sd_lora(tmp_path, unet_cfg, te_cfg)
    before = snapshot(tmp_path)
    assert detect(path) == "diffusers" and detect(tmp_path) == "diffusers"
    u = load(tmp_path)
    assert u.format == "diffusers" and not u.warnings
    check(u, want)
    names = {x.name: x for x in u}
    q = names["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert q.meta["scale"] == 2.0 and q.kind == "lowrank"
    conv = names["unet.down_blocks.0.resnets.0.conv1"]
    assert conv.shape == (8, 72) and conv.meta["scale"] == pytest.approx(3 / 4)
    te_q = next(n for n in names if n.startswith("text_encoder.") and n.endswith("layers.0.self_attn.q_proj"))
    assert names[te_q].meta["variant"] == "rslora"
    assert snapshot(tmp_path) == before


def test_no_metadata_means_scale_one_and_alpha_keys_count(tmp_path):
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    path, want, _ = sd_lora(tmp_path, cfg, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], init_lora_weights=False),
                            metadata=False)
    u = load(path)
    assert {x.meta["scale"] for x in u} == {1.0}
    check(u, want)
    sd = load_file(path)  # per-module alphas, as kohya→diffusers conversions keep them
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    sd[name + ".alpha"] = torch.tensor(2.0)
    save_file(sd, tmp_path / "alphas.safetensors")
    x = {x.name: x for x in load(tmp_path / "alphas.safetensors")}[name]
    assert x.meta["scale"] == 0.5
    close(x.load().materialize(), 0.5 * want[name])


def old_unet_key(k):
    """diffusers ≤ 0.24 keys: attention projections under `.processor.<proj>_lora`, others `.lora.down/up`."""
    k = k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
    for p in ("to_q", "to_k", "to_v"):
        k = k.replace(f".{p}.lora.", f".processor.{p}_lora.")
    return k.replace(".to_out.0.lora.", ".processor.to_out_lora.")


def old_te_key(k):
    k = k.replace(".lora_A.weight", ".lora_linear_layer.down.weight").replace(".lora_B.weight", ".lora_linear_layer.up.weight")
    for p, q in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("out_proj", "to_out")):
        k = k.replace(f".self_attn.{p}.lora_linear_layer.", f".self_attn.{q}_lora.")
    return k


def test_old_attention_processor_layout(tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_out.0", "proj_in"], init_lora_weights=False)
    path, want, _ = sd_lora(tmp_path, cfg, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "out_proj", "fc1"],
                                                      init_lora_weights=False), metadata=False)
    sd = load_file(path)
    unet_old = {old_unet_key(k.removeprefix("unet.")): v for k, v in sd.items() if k.startswith("unet.")}
    te_old = {old_te_key(k.removeprefix("text_encoder.")): v for k, v in sd.items() if k.startswith("text_encoder.")}
    assert any("processor.to_q_lora.down.weight" in k for k in unet_old) and any("to_out_lora" in k for k in te_old)
    # diffusers' own converter maps these keys back to the module names we must report
    peft_names = {k.rsplit(".lora_", 1)[0] for k in convert_unet_state_dict_to_peft(dict(unet_old))}
    peft_names |= {"text_encoder." + k.rsplit(".lora_", 1)[0] for k in convert_state_dict_to_peft(dict(te_old))}
    (tmp_path / "old").mkdir()
    torch.save({**unet_old, **{"text_encoder." + k: v for k, v in te_old.items()}}, tmp_path / "old" / "pytorch_lora_weights.bin")
    assert detect(tmp_path / "old") == "diffusers"
    u = load(tmp_path / "old")
    assert {x.name.removeprefix("unet.") for x in u} == peft_names
    check(u, want)


def test_flux_transformer(tmp_path):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import FluxLoraLoaderMixin

    torch.manual_seed(0)
    m = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    base = {k: v.clone() for k, v in m.state_dict().items()}
    m.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=["to_q", "to_k", "proj_mlp", "ff.net.2"], init_lora_weights=False))
    FluxLoraLoaderMixin.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(m),
                                          transformer_lora_adapter_metadata=m.peft_config["default"].to_dict())
    want = {f"transformer.{k}": v for k, v in merged_deltas(m, base).items()}
    u = load(tmp_path / FILE)
    assert "transformer.single_transformer_blocks.0.attn.to_q" in {x.name for x in u}
    assert {x.meta["scale"] for x in u} == {4.0}
    check(u, want)


def test_dora_needs_the_base_folder(tmp_path):
    unet = tiny_unet()
    (tmp_path / "base").mkdir()
    unet.save_pretrained(tmp_path / "base" / "unet")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "proj_in"], use_dora=True, init_lora_weights=False)
    path, want, _ = sd_lora(tmp_path, cfg, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], init_lora_weights=False))
    sd = load_file(path)
    g = torch.Generator().manual_seed(0)
    for k in [k for k in sd if "lora_magnitude_vector" in k]:
        sd[k] = sd[k] * (1 + 0.3 * torch.randn(sd[k].shape, generator=g))  # an untouched magnitude is plain LoRA
    save_file(sd, path, metadata={"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4,
                                                                         "text_encoder.lora_alpha": 2, "text_encoder.r": 2})})
    with pytest.raises(MissingBaseError, match="DoRA .* needs base="):
        load(path)
    # reference: PEFT's DoRA merge with the perturbed magnitudes, recomputed on a fresh copy
    unet2 = tiny_unet()
    base_state = {k: v.clone() for k, v in unet2.state_dict().items()}
    unet2.add_adapter(cfg)
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(unet2, {k.removeprefix("unet."): v for k, v in sd.items() if k.startswith("unet.")})
    want.update({f"unet.{k}": v for k, v in merged_deltas(unet2, base_state).items()})
    u = load(path, base=tmp_path / "base")
    dora = [x for x in u if x.name.startswith("unet.")]
    assert {x.meta["variant"] for x in dora} == {"dora"} and {x.kind for x in dora} == {"dense"}
    check(u, want)


def test_hostile_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A, B = "unet.mid_block.attentions.0.proj_in.lora_A.weight", "unet.mid_block.attentions.0.proj_in.lora_B.weight"
    cases = [
        ({A: r(2, 6)}, {}, FormatError, "'unet.mid_block.attentions.0.proj_in': has lora_A but not both LoRA factors"),
        ({A: r(2, 6), B: r(8, 3)}, {}, ShapeMismatchError, "up/B [8, 3] does not fit down/A [2, 6]"),
        ({A: r(2, 6), B: r(8, 2)}, {"lora_adapter_metadata": "{oops"}, FormatError, "'lora_adapter_metadata': not valid JSON"),
        ({A: r(2, 6), B: r(8, 2)}, {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": "x"})}, FormatError,
         "lora_alpha: expected a finite number, found 'x'"),
        ({A: r(2, 6), B: r(8, 2), "unet.mid_block.attentions.0.proj_in.alpha": torch.tensor(float("inf"))}, {},
         NonFiniteError, "alpha must be one finite number"),
    ]
    for i, (tensors, meta, err, msg) in enumerate(cases):
        p = tmp_path / f"h{i}.safetensors"
        save_file(tensors, p, metadata=meta or None)
        with pytest.raises(err) as e:
            load(p)
        assert msg in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value), (i, str(e.value))
    p = tmp_path / "extra.safetensors"
    save_file({A: r(2, 6), B: r(8, 2), "unet.mid_block.attentions.0.proj_in.lora_B.bias": r(8), "junk.alpha": r(1)}, p)
    u = load(p)
    assert len(u) == 1 and "2 tensor(s) not analysed" in u.warnings[0] and "lora_B.bias" in u.warnings[0]


def test_cli_info_names_and_type(tmp_path):
    from click.testing import CliRunner

    from deltaspec_cli.main import cli

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], init_lora_weights=False)
    sd_lora(tmp_path, cfg, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], init_lora_weights=False))
    res = CliRunner().invoke(cli, ["info", str(tmp_path), "--type", "diffusers", "--format", "json"])
    assert res.exit_code == 0, res.output
    names = {r["name"] for r in json.loads(res.stdout)["layers"]}
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in names
    assert any(n.startswith("text_encoder.") and n.endswith("self_attn.q_proj") for n in names)


def test_sdxl_second_text_encoder(tmp_path):
    """SDXL files carry `text_encoder_2.` keys and metadata; both text encoders stay apart."""
    from safetensors import safe_open

    te_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False)
    path, want, _ = sd_lora(tmp_path, LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], init_lora_weights=False), te_cfg)
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    sd = load_file(path)
    sd.update({k.replace("text_encoder.", "text_encoder_2.", 1): v.clone() for k, v in sd.items() if k.startswith("text_encoder.")})
    meta.update({k.replace("text_encoder.", "text_encoder_2.", 1): v for k, v in meta.items() if k.startswith("text_encoder.")})
    meta["text_encoder_2.lora_alpha"] = 4  # a different α for the second encoder
    save_file(sd, tmp_path / "xl.safetensors", metadata={"lora_adapter_metadata": json.dumps(meta)})
    u = {x.name: x for x in load(tmp_path / "xl.safetensors")}
    for name, w in want.items():
        if name.startswith("text_encoder."):
            two = u[name.replace("text_encoder.", "text_encoder_2.", 1)]
            assert u[name].meta["scale"] == 3.0 and two.meta["scale"] == 2.0
            close(two.load().materialize(), w * 2 / 3)


def test_subspace_finds_w0_by_diffusers_and_kohya_names(tmp_path):
    """`deltaspec subspace FILE --base PIPELINE`: W0 of `unet.…` (diffusers) and `lora_unet_…` (kohya) layer
    names comes from the pipeline's component folder, conv flattened like the update; amplification equals
    ‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F computed here in float64 numpy from PEFT's merge."""
    import numpy as np
    from click.testing import CliRunner

    from deltaspec_cli.main import cli

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "conv1"], init_lora_weights=False)
    path, want, unet_base = sd_lora(tmp_path / "d", cfg, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"],
                                                                    init_lora_weights=False))
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "base" / "unet")
    (tmp_path / "base" / "model_index.json").write_text("{}")
    sd = load_file(path)
    kohya = {}
    for k, v in sd.items():
        if k.startswith("unet."):
            mod, _, part = k.removeprefix("unet.").partition(".lora_")
            stem = "lora_unet_" + mod.replace(".", "_")
            kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = v
            kohya[f"{stem}.alpha"] = torch.tensor(8.0)
    save_file(kohya, tmp_path / "kohya.safetensors")
    for lora, prefix in ((path, "unet."), (tmp_path / "kohya.safetensors", "lora_unet_")):
        r = CliRunner().invoke(cli, ["subspace", str(lora), "--base", str(tmp_path / "base"), "--modules", "to_q,conv1",
                                     "--format", "json", "-q"])
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)["rows"]
        n_unet = sum(1 for n in want if n.startswith("unet.") and n.endswith(("to_q", "conv1")))
        assert len(rows) == n_unet > 4 and all(row["layer"].startswith(prefix) for row in rows)
        for row in rows:
            name = next(n for n in want if n.startswith("unet.") and
                        n.removeprefix("unet.").replace(".", "_") == row["layer"].removeprefix(prefix).replace(".", "_"))
            d = want[name].numpy()
            U, s, Vt = np.linalg.svd(d, full_matrices=False)
            w0 = unet_base[name.removeprefix("unet.") + ".weight"].double().reshape(d.shape[0], -1).numpy()
            amp = np.linalg.norm(d) / np.linalg.norm(U[:, :4].T @ w0 @ Vt[:4].T)
            assert row["amplification"] == pytest.approx(amp, rel=1e-4), name


def test_missing_component_folder_is_named(tmp_path):
    """A kohya/LyCORIS module of a component the base pipeline folder lacks: the error names the module and
    the missing subfolder (it used to advise analysing one component of the pipeline)."""
    from deltaspec.io.model.basemap import BaseLookup

    tiny_unet().save_pretrained(tmp_path / "base" / "unet")
    (tmp_path / "base" / "model_index.json").write_text("{}")
    look = BaseLookup(tmp_path / "base", "a.safetensors")
    with pytest.raises(FormatError, match="'lora_te2_text_model_encoder_layers_0_mlp_fc1' belongs to the "
                                          "text_encoder_2 component, .* has no text_encoder_2/ subfolder"):
        look.by_kohya_name("lora_te2_text_model_encoder_layers_0_mlp_fc1", None, "DoRA")
    store, key = look.by_kohya_name("lora_unet_down_blocks_0_resnets_0_conv1", None, "DoRA")
    assert key == "down_blocks.0.resnets.0.conv1.weight"
