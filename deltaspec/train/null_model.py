"""Null models for MultiLoRA's balance: how much of its flat spectrum is learned, and how much comes
with the random Kaiming-uniform A_i⁰, B_i⁰ every head starts with (issue 14 item 2, docs/TRAINING.md).

Every MultiLoRA head starts with random A_i⁰ AND B_i⁰; only the zero scalings keep ΔW = 0 at step 0.
A run's initial factors are rebuilt exactly from its train_info.json (the trainer seeds, loads the base,
then initialises the adapters, in that order), so with s_i the learned scalings

    trained       ΔW   = (α/r) Σ diag(s_i) B_i A_i
    init factors  ΔW_0 = (α/r) Σ diag(s_i) B_i⁰ A_i⁰      init share = ‖ΔW_0‖² / ‖ΔW‖²  (0 for LoRA)

and `train_scalings_only` is the "0 effective steps" null model: the same run with A_i, B_i frozen.
Used by sample_checkpoints/null_model.py and examples/smollm2/null_model.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import metrics as M
from . import hf
from .layers import adapters
from .trainer import TrainConfig, batches, build, evaluate, tokenizer_and_len, train_loop


def run_config(run_dir: Path, *, base: Optional[str] = None, hf_model: Optional[str] = None,
               out: str = "unused") -> TrainConfig:
    """The TrainConfig a MultiLoRA run was made with (from its train_info.json), on CPU, quiet."""
    info = json.loads((Path(run_dir) / "train_info.json").read_text())
    if info["method"] != "multilora":
        raise ValueError(f"{run_dir}: a {info['method']} run; the null model is about MultiLoRA")
    return TrainConfig(method="multilora", out=out, base=base, hf_model=hf_model, max_len=info.get("max_len") if hf_model
                       else None, rank=info["rank"], heads=info["heads"], lora_alpha=info["lora_alpha"],
                       target_modules=tuple(info["target_modules"]), steps=info["steps"], lr=info["lr"],
                       batch_size=info["batch_size"], seed=info["seed"], dropout=info.get("lora_dropout") or 0.0,
                       scaling_lr_mult=info.get("scaling_lr_mult") or 1.0, device="cpu", progress=False)


def initial_adapters(cfg: TrainConfig) -> dict:
    """Module name → MultiLoRA layer holding the run's initial A_i⁰, B_i⁰ (rebuilt from its seed)."""
    return adapters(hf.named(build(cfg)[0]))


def multilora_delta(scale: float, S, B, A) -> np.ndarray:
    """(α/r) Σ_i diag(s_i) B_i A_i in float64; S: (n, d_out), B: (n, d_out, r), A: (n, r, d_in)."""
    S, B, A = (np.asarray(t.detach() if hasattr(t, "detach") else t, dtype=np.float64) for t in (S, B, A))
    return scale * np.einsum("no,nor,nri->oi", S, B, A)


def balance(delta: np.ndarray) -> dict:
    """Balance metrics of one update from a float64 numpy SVD (n_ref = min(d_out, d_in))."""
    s = np.linalg.svd(delta, compute_uv=False)
    return {"top1_energy": M.top_k_energy(s, 1), "normalized_entropy": M.normalized_entropy(s, min(delta.shape)),
            "effective_rank": M.effective_rank(s), "frobenius_norm": M.frobenius_norm(s)}


def train_scalings_only(cfg: TrainConfig) -> tuple[torch.nn.Module, list[float], dict]:
    """(model, losses, per-task accuracy) of the run `cfg` with A_i, B_i frozen at init: only the
    scalings learn (same data, steps, seed and learning rates)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_flush_denormal(True)
    model, _ = build(cfg)
    for n, p in model.named_parameters():
        if n.endswith(("lora_A", "lora_B")):
            p.requires_grad_(False)
    tok, max_len = tokenizer_and_len(model)
    cpu = torch.device("cpu")
    losses = train_loop(model, batches(cfg, max_len, tok), cfg, cpu)
    return model, losses, evaluate(model, cfg.seed, cfg.eval_per_task, max_len, cpu, tok)
