"""Tiny Stable Diffusion pieces built from configs (no downloads) and hand-made LoRA files for the SD tests."""
from __future__ import annotations

import numpy as np
import torch

KOHYA_MODULES = {  # diffusers module -> kohya name (lora_unet_ + dots as underscores)
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
    "down_blocks.0.attentions.0.proj_in": "lora_unet_down_blocks_0_attentions_0_proj_in",      # 1x1 conv
    "down_blocks.0.resnets.0.conv1": "lora_unet_down_blocks_0_resnets_0_conv1",                # 3x3 conv (LoCon)
}
# CLIP text-encoder module (transformers >= 5 names: no `text_model.` level) -> kohya name, which keeps transformers
# 4's `text_model_` as every kohya-trained file does. All six linears of the layer: diffusers 0.42's kohya converter
# picks one key layout for the whole text encoder (its `to_out_lora` test), so a file with self_attn layers but no
# out_proj loses them (q/k/v only: "Could not automatically infer state dict type"; q + mlp: q silently dropped).
TE_MODULES = {f"encoder.layers.0.{m}": f"lora_te_text_model_encoder_layers_0_{m.replace('.', '_')}"
              for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                        "mlp.fc2")}
# kohya name -> "<component>.<module>" as module_weights names it
TO_MODULE = {**{k: "unet." + m for m, k in KOHYA_MODULES.items()}, **{k: "text_encoder." + m for m, k in TE_MODULES.items()}}


def tiny_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                                attention_head_dim=2, norm_num_groups=4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=24, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                      vocab_size=49408, projection_dim=24))
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def module_weights(pipe) -> dict:
    """{"unet.<module>" / "text_encoder.<module>": weight (float64 copy)} of every Linear/Conv2d."""
    out = {}
    for comp in ("unet", "text_encoder"):
        for n, m in getattr(pipe, comp).named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and ".lora_" not in n:
                out[f"{comp}.{n.removesuffix('.base_layer')}"] = m.weight.detach().double().clone()
    return out


def spectrum_factors(out_shape, in_shape, r, seed, decay=0.5):
    """up (out, r), down (r, in…) whose product has singular values decay**i (distinct, well separated)."""
    g = torch.Generator().manual_seed(seed)
    d_in = int(np.prod(in_shape))
    U = torch.linalg.qr(torch.randn(out_shape, r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))[0]
    s = torch.tensor([decay**i for i in range(r)], dtype=torch.float64) * (1 + 0.1 * torch.rand(r, generator=g))
    s = s.sort(descending=True).values
    return (U * s).float().contiguous(), V.T.reshape(r, *in_shape).float().contiguous()


def kohya_lora(pipe, r: int = 6, alpha: float = 3.0, seed: int = 0, te: bool = False, unet: bool = True) -> dict:
    """A kohya LoRA state dict (lora_down / lora_up / alpha) for KOHYA_MODULES (unet) and TE_MODULES (te)."""
    mods = []
    if unet:
        u = dict(pipe.unet.named_modules())
        mods += [(u[m].weight, k) for m, k in KOHYA_MODULES.items()]
    if te:
        t = dict(pipe.text_encoder.named_modules())
        mods += [(t[m].weight, k) for m, k in TE_MODULES.items()]
    sd = {}
    for i, (w, key) in enumerate(mods):
        up, down = spectrum_factors(w.shape[0], tuple(w.shape[1:]), min(r, *w.shape[:2]), seed + i)
        sd[f"{key}.lora_up.weight"] = up.reshape(w.shape[0], -1, *([1, 1] if w.dim() == 4 else []))
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def kohya_delta(sd: dict, key: str) -> np.ndarray:
    """ΔW (out, in·kh·kw) of one kohya module, in float64 numpy, from the formula (α/r)·up@down."""
    up, down = sd[f"{key}.lora_up.weight"].double(), sd[f"{key}.lora_down.weight"].double()
    r = down.shape[0]
    return (float(sd[f"{key}.alpha"]) / r) * (up.flatten(1) @ down.flatten(1)).numpy()


def truncate(M: np.ndarray, k: int) -> np.ndarray:
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vt[:k]
