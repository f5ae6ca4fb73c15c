"""Names in single-file Stable Diffusion / SDXL / Flux checkpoints (the `.safetensors` users download), and
the names a LoRA of each weight has for its consumers: pure string logic, no imports.

Layouts read (keys end in `.weight`):
  SD 1.x / 2.x (LDM)  model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q, text encoder
                      cond_stage_model.transformer.text_model.… (CLIP, transformers names) or
                      cond_stage_model.model.transformer.resblocks.N.… (SD 2's OpenCLIP), VAE first_stage_model.…
  SDXL (SGM)          the same UNet names, conditioner.embedders.0.transformer.text_model.… (CLIP ViT-L) and
                      conditioner.embedders.1.model.transformer.resblocks.N.… (OpenCLIP bigG)
  Flux (BFL)          double_blocks.0.img_attn.qkv, single_blocks.0.linear1, …, maybe under model.diffusion_model.

What each weight becomes (SDName): the layer name `<component>.<module>` in diffusers / transformers module
names (Flux: `transformer.<BFL module>`), the kohya sd-scripts name, and the diffusers name (Flux's fused qkv /
linear1 / final adaLN: SDName.split gives each diffusers module its rows of the layer).
kohya names as sd-scripts makes them:
  SD 1.x/2.x UNet  lora_unet_ + the diffusers module (sd-scripts trains SD 1/2 on diffusers' UNet; diffusers'
                   SD loader does not remap LDM block numbers for SD 1, so the diffusers names are the ones
                   that load everywhere)
  SDXL UNet        lora_unet_ + the SGM module (sd-scripts' own SDXL UNet keeps the SGM names; diffusers maps
                   them with _maybe_map_sgm_blocks_to_diffusers)
  text encoders    lora_te_ (one encoder) or lora_te1_ / lora_te2_ + the transformers CLIP module; OpenCLIP's
                   fused attn.in_proj_weight is three layers (q_proj, k_proj, v_proj rows), as transformers has it
  Flux             lora_unet_ + the BFL module (qkv stays one layer: one lora_down, one lora_up of 3·d rows,
                   as sd-scripts' Flux LoRA and diffusers' _convert_kohya_flux_lora_to_diffusers have it)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

FAMILY_NAMES = {"sd": "SD 1.x/2.x (LDM)", "sdxl": "SDXL (SGM)", "flux": "Flux (BFL)"}
_UNET = "model.diffusion_model."
_FLUX_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
        "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
           "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}
_OPENCLIP = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_OPENCLIP_RE = re.compile(r"^(?:cond_stage_model|conditioner\.embedders\.1)\.model\.transformer\.resblocks\.(\d+)\."
                          r"(.+?)(?:\.weight|_weight)$")


@dataclass(frozen=True)
class SDName:
    name: str                          # layer name: `<component>.<module>`
    kohya: str                         # kohya sd-scripts LoRA name
    diffusers: Optional[str]           # `<component>.<module>` diffusers loads, None when it has no such module
    part: Optional[tuple] = None       # (i, n): rows i of n equal parts of the stored matrix
    split: Optional[tuple] = None      # Flux: ((diffusers names…), rule): the rows of one BFL layer that
    #                                    are several diffusers modules (rule: "thirds", "linear1", "swap")


def family(keys) -> Optional[str]:
    """"sd" (SD 1.x / 2.x, LDM), "sdxl" (SGM), "flux" (BFL) or None (not a single-file SD checkpoint).
    SDXL: conditioner.embedders.… keys, or, in a UNet-only file, label_emb (SDXL's added conditioning)."""
    keys = list(keys)
    if any(strip_flux(k).startswith("double_blocks.") for k in keys):
        return "flux"
    blocks = tuple(_UNET + b for b in ("input_blocks.", "middle_block.", "output_blocks."))
    if not any(k.startswith(blocks) for k in keys):
        return None
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if not any(k.startswith("cond_stage_model.") for k in keys) and any(k.startswith(_UNET + "label_emb.")
                                                                         for k in keys):
        return "sdxl"
    return "sd"


def layers_per_block(keys) -> int:
    """The UNet's layers_per_block, from where the first downsampler (`input_blocks.N.0.op`) sits."""
    ops = sorted(int(m[1]) for k in keys if (m := re.match(re.escape(_UNET) + r"input_blocks\.(\d+)\.0\.op\.", k)))
    if ops:
        return ops[0] - 1
    ins = [int(m[1]) for k in keys if (m := re.match(re.escape(_UNET) + r"input_blocks\.(\d+)\.", k))]
    return max(ins, default=1)


def unet_module(m: str, lpb: int) -> Optional[str]:
    """LDM/SGM UNet module (`input_blocks.1.1.proj_in`) → diffusers UNet2DConditionModel module
    (`down_blocks.0.attentions.0.proj_in`), as diffusers' convert_ldm_unet_checkpoint places weights; None if
    the name is not a UNet module."""
    if m in _TOP:
        return _TOP[m]
    p = m.split(".")
    if len(p) < 3 or p[0] not in ("input_blocks", "middle_block", "output_blocks") or not p[1].isdigit():
        return None
    if p[0] == "middle_block":
        j, rest = int(p[1]), p[2:]
        return {0: _resnet("mid_block.resnets.0", rest), 1: _join("mid_block.attentions.0", rest),
                2: _resnet("mid_block.resnets.1", rest)}.get(j)
    if not p[2].isdigit():
        return None
    i, j, rest = int(p[1]), int(p[2]), p[3:]
    if p[0] == "input_blocks":
        b, layer = divmod(i - 1, lpb + 1)
        if rest[:1] == ["op"]:
            return _join(f"down_blocks.{b}.downsamplers.0.conv", rest[1:])
        return _resnet(f"down_blocks.{b}.resnets.{layer}", rest) if j == 0 else _join(
            f"down_blocks.{b}.attentions.{layer}", rest)
    b, layer = divmod(i, lpb + 1)
    if j > 0 and rest[:1] == ["conv"]:
        return _join(f"up_blocks.{b}.upsamplers.0.conv", rest[1:])
    if j == 0:
        return _resnet(f"up_blocks.{b}.resnets.{layer}", rest)
    return _join(f"up_blocks.{b}.attentions.{layer}", rest)


def _join(prefix, rest):
    return ".".join([prefix, *rest])


def _resnet(prefix, rest):
    r = ".".join(rest)
    return next((f"{prefix}.{v}{r[len(k):]}" for k, v in _RESNET.items() if r == k or r.startswith(k + ".")), None)


def names(keys, fam: str) -> dict:
    """{checkpoint key: [SDName, …]} for the weights of a LoRA-able component (UNet / transformer, text
    encoders); keys of other parts (VAE, EMA copies, OpenCLIP's embeddings and projection) are absent."""
    keys = list(keys)
    if fam == "flux":
        return {k: [_flux(k)] for k in keys if k.endswith(".weight") and _flux_module(k)}
    lpb = layers_per_block(keys)
    two = fam == "sdxl"
    out = {}
    for k in keys:
        got = _sd_key(k, fam, lpb, two)
        if got:
            out[k] = got
    return out


def strip_flux(k: str) -> str:
    for p in _FLUX_PREFIXES:
        if k.startswith(p):
            return k[len(p):]
    return k


def _flux_module(k: str) -> Optional[str]:
    k = strip_flux(k)
    if k.startswith(("text_encoders.", "vae.", "first_stage_model.", "conditioner.", "cond_stage_model.")):
        return None
    return k[: -len(".weight")]


_FLUX_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
             "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
             "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
             "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
             "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
             "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
             "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2"}
_FLUX_DOUBLE = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear", "img_attn.proj": "attn.to_out.0",
                "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
                "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2"}
_FLUX_SPLIT = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


def _flux(k: str) -> SDName:
    """BFL module → names; diffusers' FluxTransformer2DModel modules as its convert_flux_transformer_checkpoint_
    to_diffusers places them (fused qkv / linear1 split by rows; final adaLN's (shift, scale) rows swapped)."""
    m = _flux_module(k)
    sd = lambda d=None, split=None: SDName("transformer." + m, "lora_unet_" + m.replace(".", "_"),  # noqa: E731
                                           d and "transformer." + d, None, split)
    if m in _FLUX_TOP:
        return sd(_FLUX_TOP[m])
    if m == "final_layer.adaLN_modulation.1":
        return sd(split=(("transformer.norm_out.linear",), "swap"))
    b = re.match(r"(double|single)_blocks\.(\d+)\.(.+)$", m)
    if not b:
        return sd()
    if b[1] == "double":
        pre = f"transformer.transformer_blocks.{b[2]}."
        if b[3] in _FLUX_SPLIT:
            return sd(split=(tuple(pre + x for x in _FLUX_SPLIT[b[3]]), "thirds"))
        return sd(f"transformer_blocks.{b[2]}.{_FLUX_DOUBLE[b[3]]}" if b[3] in _FLUX_DOUBLE else None)
    pre = f"single_transformer_blocks.{b[2]}."
    if b[3] == "linear1":
        return sd(split=(tuple(f"transformer.{pre}{x}" for x in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
                         "linear1"))
    return sd({"linear2": pre + "proj_out", "modulation.lin": pre + "norm.linear"}.get(b[3]))


def split_rows(rule: str, rows: int, cols: int) -> list:
    """Row ranges [(start, stop), …] of each part of a split BFL layer (see SDName.split)."""
    if rule == "thirds":
        d = rows // 3
        return [[(0, d)], [(d, 2 * d)], [(2 * d, rows)]]
    if rule == "linear1":  # q, k, v: d = the inner width (the input's); the MLP's up projection: the rest
        return [[(0, cols)], [(cols, 2 * cols)], [(2 * cols, 3 * cols)], [(3 * cols, rows)]]
    h = rows // 2  # "swap": BFL stores (shift, scale), diffusers (scale, shift)
    return [[(h, rows), (0, h)]]


def _sd_key(k: str, fam: str, lpb: int, two: bool) -> list:
    if k.startswith(_UNET) and k.endswith(".weight"):
        sgm = k[len(_UNET): -len(".weight")]
        mod = unet_module(sgm, lpb)
        if mod is None:
            return []
        kohya = "lora_unet_" + (sgm if fam == "sdxl" else mod).replace(".", "_")
        return [SDName("unet." + mod, kohya, "unet." + mod)]
    for prefix, comp in (("cond_stage_model.transformer.", "text_encoder"),
                         ("conditioner.embedders.0.transformer.", "text_encoder")):
        if k.startswith(prefix) and k.endswith(".weight"):
            mod = k[len(prefix): -len(".weight")]
            mod = mod if mod.startswith("text_model.") else "text_model." + mod  # old files: no text_model.
            return [_te(comp, mod, two)]
    m = _OPENCLIP_RE.match(k)
    if not m:
        return []
    comp = "text_encoder_2" if k.startswith("conditioner.") else "text_encoder"
    layer, part = f"text_model.encoder.layers.{m[1]}.", m[2]
    if part == "attn.in_proj":
        return [_te(comp, f"{layer}self_attn.{x}_proj", two, (i, 3)) for i, x in enumerate("qkv")]
    return [_te(comp, layer + _OPENCLIP[part], two)] if part in _OPENCLIP else []


def _te(comp: str, mod: str, two: bool, part=None) -> SDName:
    prefix = "lora_te_" if not two else ("lora_te1_" if comp == "text_encoder" else "lora_te2_")
    return SDName(f"{comp}.{mod}", prefix + mod.replace(".", "_"), f"{comp}.{mod}", part)
