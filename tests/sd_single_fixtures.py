"""Tiny single-file Stable Diffusion / SDXL / Flux checkpoints for the extract tests: diffusers models built from
configs, their state dicts renamed to the original layouts (LDM/SGM, OpenCLIP, BFL). The renaming here is written
from the diffusers → original direction, independently of deltaspec's map; test_sd_single_file.py checks it
against diffusers' own single-file converters (convert_ldm_unet_checkpoint, convert_open_clip_checkpoint)."""
from __future__ import annotations

import re

import torch

_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def ldm_unet_key(key: str, lpb: int, attn_up: set) -> str:
    """diffusers UNet2DConditionModel key → LDM/SGM key (without model.diffusion_model.). attn_up: indices of
    up blocks with attentions (their upsampler sits at .2, else at .1)."""
    mod, _, param = key.rpartition(".")
    if mod in _TOP:
        return f"{_TOP[mod]}.{param}"
    res = lambda rest: _RES[rest.split(".")[0]] + rest[len(rest.split(".")[0]):]  # noqa: E731
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", mod):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (lpb + 1)}.0.op.{param}"
        i = 1 + b * (lpb + 1) + j
        return f"input_blocks.{i}.0.{res(rest)}.{param}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}.{param}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", mod):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{res(rest)}.{param}" if kind == "resnets" else f"middle_block.1.{rest}.{param}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", mod)
    b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == "upsamplers":
        return f"output_blocks.{b * (lpb + 1) + lpb}.{2 if b in attn_up else 1}.conv.{param}"
    i = b * (lpb + 1) + j
    return f"output_blocks.{i}.0.{res(rest)}.{param}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}.{param}"


def ldm_unet(unet) -> dict:
    lpb = unet.config.layers_per_block
    attn_up = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    return {"model.diffusion_model." + ldm_unet_key(k, lpb, attn_up): v.detach().clone()
            for k, v in unet.state_dict().items()}


def openclip(te, prefix: str) -> dict:
    """transformers CLIPTextModel(WithProjection) state dict → OpenCLIP keys under `prefix` (…model.)."""
    sd, out = te.state_dict(), {}
    for k, v in sd.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", k)
        if not m:
            continue
        n, rest = m[1], m[2]
        if rest.startswith("self_attn.q_proj."):
            p = rest.rsplit(".", 1)[1]
            qkv = [sd[f"text_model.encoder.layers.{n}.self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"{prefix}transformer.resblocks.{n}.attn.in_proj_{p}"] = torch.cat(qkv).clone()
        elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            for a, b in (("self_attn.", "attn."), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                rest = rest.replace(a, b)
            out[f"{prefix}transformer.resblocks.{n}.{rest}"] = v.clone()
    out[prefix + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"].clone()
    out[prefix + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"].clone()
    out[prefix + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"].clone()
    out[prefix + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"].clone()
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    return out


def clip(te, prefix: str) -> dict:
    """Keys as SD checkpoints have them (`…transformer.text_model.encoder…`; transformers 5's CLIPTextModel
    dropped the text_model. level)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v.detach().clone()
            for k, v in te.state_dict().items()}


def tiny_sdxl(seed: int = 0):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=8 * 6 + 16,
                                cross_attention_dim=40, norm_num_groups=4)
    cfg = dict(intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=1000)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=24, projection_dim=24, **cfg))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, projection_dim=16, **cfg))
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=EulerDiscreteScheduler())


def sdxl_single_file(pipe) -> dict:
    sd = ldm_unet(pipe.unet)
    sd.update(clip(pipe.text_encoder, "conditioner.embedders.0.transformer."))
    sd.update(openclip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    sd.update({"first_stage_model." + k: v.clone() for k, v in pipe.vae.state_dict().items()})
    return sd


def sd1_single_file(pipe) -> dict:
    sd = ldm_unet(pipe.unet)
    sd.update(clip(pipe.text_encoder, "cond_stage_model.transformer."))
    sd.update({"first_stage_model." + k: v.clone() for k, v in pipe.vae.state_dict().items()})
    return sd


# ---- Flux ------------------------------------------------------------------------------------------
def tiny_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=12,
                                  guidance_embeds=False, axes_dims_rope=(4, 2, 2))


_FLUX_TOP = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
_FLUX_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
                "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
                "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
                "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
_FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2", "attn.norm_q": "norm.query_norm",
                "attn.norm_k": "norm.key_norm"}


def flux_bfl(tr, prefix: str = "") -> dict:
    """diffusers FluxTransformer2DModel state dict → BFL keys (fused qkv / linear1, swapped final shift/scale)."""
    sd, out = {k: v.detach().clone() for k, v in tr.state_dict().items()}, {}
    for k, v in sd.items():
        mod, _, p = k.rpartition(".")
        p_bfl = "scale" if "norm_" in mod and p == "weight" else p
        if mod in _FLUX_TOP:
            out[f"{_FLUX_TOP[mod]}.{p}"] = v
        elif mod == "norm_out.linear":
            shift, scale = v.chunk(2)  # diffusers stores (scale, shift); BFL (shift, scale)
            out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([scale, shift])
        elif m := re.match(r"transformer_blocks\.(\d+)\.(.+)$", mod):
            i, rest = m[1], m[2]
            if rest in _FLUX_DOUBLE:
                out[f"double_blocks.{i}.{_FLUX_DOUBLE[rest]}.{p_bfl}"] = v
            elif rest == "attn.to_q":
                out[f"double_blocks.{i}.img_attn.qkv.{p}"] = torch.cat(
                    [sd[f"transformer_blocks.{i}.attn.to_{x}.{p}"] for x in "qkv"])
            elif rest == "attn.add_q_proj":
                out[f"double_blocks.{i}.txt_attn.qkv.{p}"] = torch.cat(
                    [sd[f"transformer_blocks.{i}.attn.add_{x}_proj.{p}"] for x in "qkv"])
        elif m := re.match(r"single_transformer_blocks\.(\d+)\.(.+)$", mod):
            i, rest = m[1], m[2]
            if rest in _FLUX_SINGLE:
                out[f"single_blocks.{i}.{_FLUX_SINGLE[rest]}.{p_bfl}"] = v
            elif rest == "attn.to_q":
                out[f"single_blocks.{i}.linear1.{p}"] = torch.cat(
                    [sd[f"single_transformer_blocks.{i}.{x}.{p}"] for x in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                            "proj_mlp")])
    return {prefix + k: v for k, v in out.items()}
