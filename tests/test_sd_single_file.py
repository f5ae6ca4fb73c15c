"""`deltaspec extract` from two single-file checkpoints (SD 1.x LDM, SDXL SGM, Flux BFL): the LoRA it writes,
loaded and fused by diffusers (load_lora_weights / load_lora_adapter + fuse_lora) into tiny models built from
configs, equals the float64 numpy truncation of W_tuned − W_base within 1e-5·σ₁; names are the ones kohya's
sd-scripts uses (SDXL: SGM names, SD 1.x: diffusers names, Flux: BFL names with qkv fused)."""
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402

from deltaspec.io.model.sdsingle import family, layers_per_block, names, unet_module  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402
from sd_fixtures import tiny_pipeline, truncate  # noqa: E402
from sd_single_fixtures import (flux_bfl, ldm_unet, sd1_single_file, sdxl_single_file, tiny_flux,  # noqa: E402
                                tiny_sdxl)
from test_sd_resize import assert_close  # noqa: E402


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, *words):
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: "), r.output
    assert all(w in r.output for w in words), r.output


def perturb(model, modules, seed):
    """W += low rank (6) + a small full-rank tail, for each named module; {module: ΔW (out, in·k·k) float64}."""
    g = torch.Generator().manual_seed(seed)
    mods, out = dict(model.named_modules()), {}
    with torch.no_grad():
        for m in modules:
            w = mods[m].weight
            before = w.detach().double().clone()
            d = torch.randn(w.shape[0], 6, generator=g) @ torch.randn(6, w[0].numel(), generator=g) * 0.02
            w.add_((d + 1e-4 * torch.randn(d.shape, generator=g)).reshape(w.shape))
            out[m] = (w.detach().double() - before).flatten(1).numpy()
    return out


def weights(pipe, comps):
    return {f"{c}.{n.removesuffix('.base_layer')}": m.weight.detach().double().clone()
            for c in comps for n, m in getattr(pipe, c).named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and ".lora_" not in n}


def fused(pipe_fn, path, comps, prefixes=None):
    """diffusers' own ΔW of a LoRA file (or of its keys starting with one of `prefixes`): fused − base."""
    pipe = pipe_fn()
    before = weights(pipe, comps)
    pipe.load_lora_weights({k: v for k, v in load_file(path).items() if k.startswith(prefixes)} if prefixes
                           else str(path))
    pipe.fuse_lora(components=list(comps))
    after = weights(pipe, comps)
    return {n: (after[n] - before[n]).flatten(1).numpy() for n in before if not torch.equal(after[n], before[n])}


def test_ldm_names_match_diffusers_converter():
    """deltaspec's LDM/SGM → diffusers UNet map, against the LDM keys diffusers' convert_ldm_unet_checkpoint
    turns back into the tiny UNets (SD 1: layers_per_block 1, upsampler without attention; SDXL: 2, with)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    for pipe in (tiny_pipeline(), tiny_sdxl()):
        ldm = ldm_unet(pipe.unet)
        back = convert_ldm_unet_checkpoint(dict(ldm), pipe.unet.config)
        sd = pipe.unet.state_dict()
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)  # the fixture is LDM
        assert layers_per_block(ldm) == pipe.unet.config.layers_per_block
        by_value = {id(v): k for k, v in back.items()}
        for k, v in ldm.items():
            mod, _, p = k.removeprefix("model.diffusion_model.").rpartition(".")
            assert f"{unet_module(mod, layers_per_block(ldm))}.{p}" == by_value[id(v)], k
    sd2 = names(["cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight",  # SD 2's OpenCLIP
                 "cond_stage_model.model.transformer.resblocks.3.mlp.c_proj.weight",
                 "cond_stage_model.model.transformer.resblocks.3.ln_1.weight"], "sd")
    assert [(x.kohya, x.part) for v in sd2.values() for x in v] == [
        (f"lora_te_text_model_encoder_layers_3_self_attn_{x}_proj", (i, 3)) for i, x in enumerate("qkv")] + [
        ("lora_te_text_model_encoder_layers_3_mlp_fc2", None)]
    assert family(sdxl_single_file(tiny_sdxl())) == "sdxl" and family(sd1_single_file(tiny_pipeline())) == "sd"
    assert family(flux_bfl(tiny_flux(), "model.diffusion_model.")) == "flux" and family({"a.weight": 0}) is None


SDXL_UNET = ["down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",   # SGM input_blocks.4.1…
             "down_blocks.1.attentions.1.proj_in",                              # linear proj_in (SDXL)
             "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
             "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k",
             "up_blocks.1.resnets.2.conv1",                                     # 3×3: --conv-rank
             "down_blocks.1.resnets.0.time_emb_proj",
             "up_blocks.0.upsamplers.0.conv"]


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl()
    save_file(sdxl_single_file(pipe), d / "base.safetensors")
    changed = {"unet." + m: v for m, v in perturb(pipe.unet, SDXL_UNET, 1).items()}
    te1 = "text_model." if hasattr(pipe.text_encoder, "text_model") else ""  # transformers 5 has no text_model.
    changed.update({"text_encoder.text_model." + m.removeprefix(te1): v for m, v in perturb(
        pipe.text_encoder, [te1 + "encoder.layers.0.self_attn.q_proj"], 2).items()})
    changed.update({"text_encoder_2." + m: v for m, v in perturb(pipe.text_encoder_2, [
        "text_model.encoder.layers.0.self_attn.k_proj", "text_model.encoder.layers.0.mlp.fc1"], 3).items()})
    save_file(sdxl_single_file(pipe), d / "tuned.safetensors")
    return d, changed


def test_sdxl_single_files_to_kohya(sdxl_files):
    d, changed = sdxl_files
    out = d / "x.safetensors"
    r = run("extract", "--base", d / "base.safetensors", "--tuned", d / "tuned.safetensors", "--rank", "3",
            "--conv-rank", "2", "--to", "kohya", "--dtype", "float64", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    keys = {k.removesuffix(".lora_down.weight") for k in load_file(out) if k.endswith(".lora_down.weight")}
    # sd-scripts' SDXL names: the SGM UNet modules, lora_te1_ / lora_te2_ + transformers CLIP modules
    assert {"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", "lora_unet_input_blocks_5_1_proj_in",
            "lora_unet_output_blocks_5_0_in_layers_2", "lora_unet_output_blocks_2_2_conv",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te2_text_model_encoder_layers_0_self_attn_k_proj"} <= keys
    assert len(keys) == len(changed)  # unchanged layers (zero ΔW) are not written; in_proj's q and v are zero
    # diffusers 0.42 + transformers 5 load no kohya text-encoder attention keys (its to_k_lora keys are left
    # "UNEXPECTED"), nor any key into CLIPTextModel (transformers 5 dropped the text_model. level that SD
    # checkpoints and kohya names have): the UNet and text_encoder_2's mlp are fused by diffusers; the attention
    # layers are checked through diffusers' name converter and the kohya formula below
    got = fused(tiny_sdxl, out, ["unet", "text_encoder_2"], ("lora_unet_", "lora_te2_text_model_encoder_layers_0_mlp"))
    want = {k: v for k, v in changed.items() if k.startswith("unet.") or k.endswith("mlp.fc1")}
    assert set(got) == set(want)
    for mod, dW in want.items():
        assert_close(got[mod], truncate(dW, 2 if mod.endswith(("conv1", "upsamplers.0.conv")) else 3), mod)
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    sd = load_file(out)
    te = {k: v for k, v in sd.items() if k.startswith("lora_te")}
    conv, _ = _convert_non_diffusers_lora_to_diffusers(dict(te))
    placed = {re.sub(r"(_lora|\.lora_linear_layer|\.lora)\.(down|up)\.weight$", "", k).replace(
        "self_attn.to_q", "self_attn.q_proj").replace("self_attn.to_k", "self_attn.k_proj") for k in conv}
    assert placed == {m for m in changed if m.startswith("text_encoder")}
    for name, mod in (("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                       "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
                      ("lora_te2_text_model_encoder_layers_0_self_attn_k_proj",
                       "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj"),
                      ("lora_te2_text_model_encoder_layers_0_mlp_fc1",
                       "text_encoder_2.text_model.encoder.layers.0.mlp.fc1")):
        up, down = sd[f"{name}.lora_up.weight"].double(), sd[f"{name}.lora_down.weight"].double()
        assert_close(float(sd[f"{name}.alpha"]) / down.shape[0] * (up @ down).numpy(), truncate(changed[mod], 3), mod)


def test_sdxl_component_and_targets(sdxl_files, tmp_path):
    d, changed = sdxl_files
    args = ("extract", "--base", d / "base.safetensors", "--tuned", d / "tuned.safetensors", "--rank", "3")
    out = tmp_path / "u"
    r = run(*args, "--to", "peft", "--component", "unet", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    peft_keys = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                 for k in load_file(out / "adapter_model.safetensors") if k.endswith("lora_A.weight")}
    assert peft_keys == {m.removeprefix("unet.") for m in changed if m.startswith("unet.") and not m.endswith(
        ("conv1", "upsamplers.0.conv"))}  # 3×3 convs need --conv-rank
    one_line_error(run(*args, "--to", "peft", "-o", tmp_path / "p"), "--component", "--to kohya")
    r = run("resize", d / "tuned.safetensors", "--base", d / "base.safetensors", "--rank", "3", "--component",
            "text_encoder_2", "--to", "diffusers", "-o", tmp_path / "te2.safetensors", "-q")  # resize: the same
    assert r.exit_code == 0, r.output
    assert {k.rpartition(".lora_")[0] for k in load_file(tmp_path / "te2.safetensors")} == {
        m for m in changed if m.startswith("text_encoder_2.")}
    one_line_error(run(*args, "--component", "vae", "--to", "kohya", "-o", tmp_path / "v.safetensors"),
                   "--component vae", "text_encoder_2, unet")


def test_sd1_single_files_to_kohya_and_diffusers(tmp_path):
    pipe = tiny_pipeline()
    save_file(sd1_single_file(pipe), tmp_path / "base.safetensors")
    changed = {"unet." + m: v for m, v in perturb(pipe.unet, [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.proj_in",
        "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj", "mid_block.resnets.1.conv2",
        "up_blocks.0.upsamplers.0.conv", "up_blocks.1.resnets.0.conv_shortcut"], 4).items()}
    save_file(sd1_single_file(pipe), tmp_path / "tuned.safetensors")
    for to in ("kohya", "diffusers"):
        out = tmp_path / f"{to}.safetensors"
        r = run("extract", "--base", tmp_path / "base.safetensors", "--tuned", tmp_path / "tuned.safetensors",
                "--rank", "3", "--conv-rank", "2", "--to", to, "--dtype", "float64", "-o", out, "-q")
        assert r.exit_code == 0, r.output
        if to == "kohya":  # sd-scripts' SD 1 names are diffusers module names (its SD 1 UNet is diffusers')
            name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
            assert f"{name}.lora_down.weight" in load_file(out)
        got = fused(tiny_pipeline, out, ["unet"])
        assert set(got) == set(changed), to
        for mod, dW in changed.items():
            assert_close(got[mod], truncate(dW, 2 if mod.endswith(("conv2", "upsamplers.0.conv")) else 3), mod)


FLUX = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
        "transformer_blocks.1.attn.add_k_proj", "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.1.ff.net.0.proj",
        "transformer_blocks.0.norm1_context.linear", "single_transformer_blocks.1.proj_out",
        "single_transformer_blocks.0.norm.linear", "single_transformer_blocks.1.attn.to_v",
        "single_transformer_blocks.1.proj_mlp", "norm_out.linear"]
FUSED = {"img_attn_qkv": ("transformer_blocks.0.attn.", ("to_q", "to_k", "to_v")),
         "txt_attn_qkv": ("transformer_blocks.1.attn.", ("add_q_proj", "add_k_proj", "add_v_proj")),
         "linear1": ("single_transformer_blocks.1.", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))}


def flux_fused(path, keep=lambda k: True):
    """diffusers' ΔW per Linear of a tiny FluxTransformer2DModel after FluxPipeline.lora_state_dict (which
    converts kohya files) + load_lora_adapter + fuse_lora."""
    from diffusers import FluxPipeline

    model = tiny_flux()
    before = {n: m.weight.detach().double().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sd, meta = FluxPipeline.lora_state_dict({k: v for k, v in load_file(path).items() if keep(k)}
                                            if keep("linear1") is False else str(path), return_lora_metadata=True)
    model.load_lora_adapter(sd, prefix="transformer", metadata=meta)
    model.fuse_lora()
    return {n.removesuffix(".base_layer"): (m.weight.detach().double() - before[n.removesuffix(".base_layer")]).numpy()
            for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" not in n}


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    """BFL base (no prefix) vs a ComfyUI-saved tuned file (model.diffusion_model. prefix)."""
    d = tmp_path_factory.mktemp("flux")
    tr = tiny_flux()
    save_file(flux_bfl(tr), d / "base.safetensors")
    changed = perturb(tr, FLUX, 5)
    save_file(flux_bfl(tr, "model.diffusion_model."), d / "tuned.safetensors")
    return d, changed


def check_flux(got, changed):
    fused = {f"{pre}{x}" for pre, xs in FUSED.values() for x in xs}
    assert set(changed) <= {n for n, v in got.items() if np.abs(v).max() > 0} <= set(changed) | fused
    for pre, xs in FUSED.values():  # the truncation of the stacked ΔW, row blocks per q, k, v(, mlp)
        mods = [pre + x for x in xs]
        if any(n in got for n in mods):
            dW = np.concatenate([changed.get(n, np.zeros_like(got[n])) for n in mods])
            assert_close(np.concatenate([got[n] for n in mods]), truncate(dW, 3), pre)
    for n in set(changed) - fused:
        assert_close(got[n], truncate(changed[n], 3), n)


def test_flux_single_files_to_kohya(flux_files):
    """kohya: BFL names, the fused qkv (and linear1) one layer of 3·d rows: diffusers splits its lora_up.
    Left out of diffusers' load (the diffusers test below fuses them): linear1, whose split diffusers 0.42's
    converter fixes at Flux-dev's 3072 widths, and final_layer, which that converter drops."""
    d, changed = flux_files
    out = d / "f.safetensors"
    r = run("extract", "--base", d / "base.safetensors", "--tuned", d / "tuned.safetensors", "--rank", "3",
            "--to", "kohya", "--dtype", "float64", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    keys = {k.removesuffix(".lora_down.weight") for k in load_file(out) if k.endswith(".lora_down.weight")}
    assert keys == {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_1_txt_attn_qkv",
                    "lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_1_img_mlp_0",
                    "lora_unet_double_blocks_0_txt_mod_lin", "lora_unet_single_blocks_1_linear2",
                    "lora_unet_single_blocks_0_modulation_lin", "lora_unet_single_blocks_1_linear1",
                    "lora_unet_final_layer_adaLN_modulation_1"}
    got = flux_fused(out, keep=lambda k: "linear1" not in k and "final_layer" not in k)
    check_flux(got, {n: v for n, v in changed.items() if not n.startswith("single_transformer_blocks.1.attn")
                     and "proj_mlp" not in n and n != "norm_out.linear"})


def test_flux_single_files_to_diffusers_and_peft(flux_files, tmp_path):
    """diffusers: FluxTransformer2DModel names; the fused qkv / linear1 rows go to to_q, to_k, to_v (proj_mlp)
    with one shared lora_A, the final adaLN's rows swapped back to diffusers' (scale, shift)."""
    d, changed = flux_files
    args = ("extract", "--base", d / "base.safetensors", "--tuned", d / "tuned.safetensors", "--rank", "3",
            "--dtype", "float64")
    out = tmp_path / "f.safetensors"
    r = run(*args, "--to", "diffusers", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    check_flux(flux_fused(out), changed)
    r = run(*args, "--to", "peft", "-o", tmp_path / "p", "-q")
    assert r.exit_code == 0, r.output
    peft_keys = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                 for k in load_file(tmp_path / "p" / "adapter_model.safetensors") if k.endswith("lora_A.weight")}
    assert peft_keys == {k.removeprefix("transformer.").removesuffix(".lora_A.weight")
                         for k in load_file(out) if k.endswith("lora_A.weight")}


def test_mismatched_checkpoints_are_one_line_errors(sdxl_files, tmp_path):
    d, _ = sdxl_files
    sd1 = tiny_pipeline()
    save_file(sd1_single_file(sd1), tmp_path / "sd1.safetensors")

    def ex(base, tuned):
        return run("extract", "--base", base, "--tuned", tuned, "--rank", "2", "--to", "kohya",
                   "-o", tmp_path / "o.safetensors")

    one_line_error(ex(tmp_path / "sd1.safetensors", d / "tuned.safetensors"), "SDXL", "SD 1.x/2.x")
    other = sd1_single_file(sd1)  # same family, another cross-attention width (SD 1 vs SD 2): shapes differ
    k = next(k for k in other if k.endswith("attn2.to_k.weight"))
    other[k] = torch.randn(other[k].shape[0], other[k].shape[1] + 4)
    save_file(other, tmp_path / "wide.safetensors")
    one_line_error(ex(tmp_path / "sd1.safetensors", tmp_path / "wide.safetensors"), "shape", "different models")
    fewer = {k: v for k, v in sd1_single_file(sd1).items() if ".transformer_blocks.0.attn1." not in k
             or "input_blocks" not in k}  # the UNet's weights differ in name
    save_file(fewer, tmp_path / "fewer.safetensors")
    one_line_error(ex(tmp_path / "sd1.safetensors", tmp_path / "fewer.safetensors"), "unet weights differ")
    sd1.unet.save_pretrained(tmp_path / "unet")  # a single file vs a diffusers folder
    one_line_error(ex(tmp_path / "unet", tmp_path / "sd1.safetensors"), "same layout")
    one_line_error(ex(tmp_path / "sd1.safetensors", tmp_path / "unet"), "same layout")
    perturb(sd1.unet, ["down_blocks.0.attentions.0.proj_in"], 7)  # a UNet-only tuned file: the text encoder is
    unet_only = {k: v for k, v in sd1_single_file(sd1).items() if k.startswith("model.diffusion_model.")}  # left out
    save_file(unet_only, tmp_path / "unet_only.safetensors")
    r = run("extract", "--base", tmp_path / "sd1.safetensors", "--tuned", tmp_path / "unet_only.safetensors",
            "--rank", "2", "--to", "kohya", "-o", tmp_path / "u.safetensors", "-q")
    assert r.exit_code == 0 and "has text_encoder weights and" in r.output and "text_encoder left out" in r.output
    assert {k for k in load_file(tmp_path / "u.safetensors") if k.endswith("down.weight")} == {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"}
