"""Null models for MultiLoRA's balance: how much of its flat spectrum is learned, and how much comes
with the random Kaiming-uniform A_i⁰, B_i⁰ every head starts with (issue 14 item 2, docs/TRAINING.md).

Every MultiLoRA head starts with random A_i⁰ AND B_i⁰; only the zero scalings keep ΔW = 0 at step 0.
`deltaspec train` saves that initial adapter as RUN/checkpoint-0/; for runs without one, `write_initial`
rebuilds it from the run's train_info.json (the trainer seeds, loads the base, then initialises the
adapters, in that order) — bit-exact on the same torch build only (other builds may draw other numbers).
With s_i the learned scalings (deltaspec/init_split.py computes these factored, `analyze --initial`):

    trained       ΔW   = (α/r) Σ diag(s_i) B_i A_i
    init factors  ΔW_0 = (α/r) Σ diag(s_i) B_i⁰ A_i⁰      init share = ‖ΔW_0‖² / ‖ΔW‖²  (0 for LoRA)

and `train_scalings_only` is the "0 effective steps" null model: the same run with A_i, B_i frozen.
Used by sample_checkpoints/null_model.py and examples/smollm2/null_model.py.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .. import metrics as M
from ..init_split import inner
from ..spectra import spectrum
from . import hf
from .layers import adapters
from .save import save_run
from .trainer import TrainConfig, batches, build, evaluate, tokenizer_and_len, train_loop

_RESULTS = ("per_task_accuracy", "final_loss", "train_seconds", "loss")  # facts of the trained run, not of step 0


def run_config(run_dir: Path, *, base: Optional[str] = None, hf_model: Optional[str] = None,
               out: str = "unused") -> TrainConfig:
    """The TrainConfig a LoRA / MultiLoRA run was made with (from its train_info.json), on CPU, quiet."""
    info = json.loads((Path(run_dir) / "train_info.json").read_text())
    if info["method"] not in ("lora", "multilora"):
        raise ValueError(f"{run_dir}: a {info['method']} run; its initial weights are its base")
    return TrainConfig(method=info["method"], out=out, base=base, hf_model=hf_model,
                       max_len=info.get("max_len") if hf_model else None, rank=info["rank"], heads=info.get("heads") or 4,
                       lora_alpha=info["lora_alpha"], target_modules=tuple(info["target_modules"]), steps=info["steps"],
                       lr=info["lr"], batch_size=info["batch_size"], seed=info["seed"],
                       dropout=info.get("lora_dropout") or 0.0, scaling_lr_mult=info.get("scaling_lr_mult") or 1.0,
                       device="cpu", progress=False)


def initial_adapters(cfg: TrainConfig) -> dict:
    """Module name → adapter layer holding the run's initial factors (rebuilt from its seed)."""
    return adapters(hf.named(build(cfg)[0]))


def write_initial(run_dir, out, *, base: Optional[str] = None, hf_model: Optional[str] = None) -> Path:
    """Rebuild the run's initial adapter from its seed and save it to `out` in the run's layout, as the
    trainer's RUN/checkpoint-0/ (train_info.json: step 0, "rebuilt_from_seed": true). Exact on the torch
    build that trained the run; `deltaspec train` now saves checkpoint-0 itself."""
    cfg = run_config(run_dir, base=base, hf_model=hf_model, out=str(out))
    info = json.loads((Path(run_dir) / "train_info.json").read_text())
    info = {k: v for k, v in info.items() if k not in _RESULTS}
    model = build(cfg)[0]
    save_run(model, cfg, {**info, "step": 0, "rebuilt_from_seed": True, "torch_version": torch.__version__}, str(out))
    return Path(out)


def initial_dir(run_dir, *, base: Optional[str] = None, hf_model: Optional[str] = None, scratch=None) -> Path:
    """RUN/checkpoint-0 when the run has one, else the initial adapter rebuilt from the seed into `scratch`
    (default: a new temporary folder)."""
    own = Path(run_dir) / "checkpoint-0"
    if (own / "train_info.json").is_file():
        return own
    scratch = Path(scratch or tempfile.mkdtemp(prefix="deltaspec_init_"))
    return write_initial(run_dir, scratch / f"{Path(run_dir).name}_checkpoint-0", base=base, hf_model=hf_model)


def balance(update, n_ref: int) -> dict:
    """Balance metrics of one (factored) update from its exact float64 spectrum."""
    s = spectrum(update, device="cpu", dtype="float64").sigma
    return {"top1_energy": M.top_k_energy(s, 1), "normalized_entropy": M.normalized_entropy(s, n_ref),
            "effective_rank": M.effective_rank(s), "frobenius_norm": M.frobenius_norm(s)}


def cosine(a, b) -> float:
    """⟨a, b⟩_F / (‖a‖ ‖b‖) of two factored updates (Gram products); NaN when either is zero."""
    (La, Ra), (Lb, Rb) = a.factors(), b.factors()
    na, nb = inner(La, Ra, La, Ra), inner(Lb, Rb, Lb, Rb)  # may round to ≤ 0 for a zero update
    return inner(La, Ra, Lb, Rb) / (na * nb) ** 0.5 if na > 0 and nb > 0 else float("nan")


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
