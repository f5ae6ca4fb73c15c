"""A small LLaMA-shaped GPT (nanoGPT spirit) whose module names match real LLMs, so analyses and
Figure-2 plots of its updates read exactly like those of LLaMA: `model.layers.N.self_attn.q_proj`, …

Pre-norm blocks with RMSNorm, causal self-attention, SwiGLU MLP, learned positions, untied lm_head.
Saved as a model directory: `config.json` + `model.safetensors` (state-dict names as keys).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


@dataclass
class GPTConfig:
    vocab_size: int = 100
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 344
    max_len: int = 64
    model_type: str = "deltaspec-gpt"


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c.d_model, c.d_model, bias=False) for _ in range(4))

    def forward(self, x):  # x: (B, T, D)
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, D/H)
        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.input_layernorm, self.self_attn = RMSNorm(c.d_model), Attention(c)
        self.post_attention_layernorm, self.mlp = RMSNorm(c.d_model), MLP(c)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.embed_positions = nn.Embedding(c.max_len, c.d_model)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)

    def forward(self, idx):
        x = self.embed_tokens(idx) + self.embed_positions(torch.arange(idx.shape[1], device=idx.device))
        for block in self.layers:
            x = block(x)
        return self.norm(x)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):  # idx: (B, T) → logits (B, T, vocab)
        return self.lm_head(self.model(idx))


def save_model(model: GPT, out: str) -> None:
    """config.json + model.safetensors, keys = state-dict names (`model.layers.0.self_attn.q_proj.weight`)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(asdict(model.config), f, indent=1)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))


def load_model(path: str) -> GPT:
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "deltaspec-gpt":
        raise ValueError(f"{path}: not a deltaspec-gpt model directory (model_type {cfg.get('model_type')!r})")
    model = GPT(GPTConfig(**cfg))
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return model
