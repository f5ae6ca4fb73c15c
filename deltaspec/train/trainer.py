"""One training loop for pretraining, full fine-tuning, LoRA and MultiLoRA (controlled comparisons:
same base, data stream, steps and seed; only the method differs).

AdamW, linear warmup then cosine decay, gradient clipping, seeded and deterministic on CPU, CUDA when
present. Progress (loss, tokens/s) on stderr. The model is the built-in GPT or a local transformers
causal LM (`hf.HFCausalLM`, same interface: `model(idx)` → logits, a tokenizer with bos/eos/pad ids).
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DeltaspecError
from ..progress import Progress
from . import data as D
from . import hf
from .layers import frozen_targets, wrap
from .model import GPT, GPTConfig, load_model

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_LR = {"pretrain": 3e-3, "full": 3e-4, "lora": 2e-3, "multilora": 2e-3}
DEFAULT_SCALING_LR_MULT = 30.0  # docs/TRAINING.md: zero-initialised scalings at 1x lr barely move


@dataclass
class TrainConfig:
    method: str  # pretrain | full | lora | multilora
    out: str
    base: Optional[str] = None  # base model dir (fine-tuning); None for pretrain
    hf_model: Optional[str] = None  # local transformers causal LM dir, fine-tuned instead of a built-in base
    max_len: Optional[int] = None  # tokens per sequence, hf_model only [default: min(128, its positions)]
    rank: int = 16  # total rank (MultiLoRA: heads × per-head rank)
    heads: int = 4
    lora_alpha: Optional[float] = None  # default: 2 × per-head rank
    force: bool = False  # write into a non-empty `out`, replacing the checkpoint files there
    target_modules: tuple = DEFAULT_TARGETS
    full_targets: bool = False  # full FT: train only the target_modules' weights (False: every parameter)
    scaling_lr_mult: float = DEFAULT_SCALING_LR_MULT  # MultiLoRA: the scalings' lr = this × lr
    steps: int = 400
    save_every: int = 0  # keep OUT/checkpoint-<step>/ every N steps (0: only the final checkpoint)
    track_every: int = 0  # analyse ΔW live every N steps into OUT/spectra_trajectory.jsonl (0: off)
    lr: Optional[float] = None
    batch_size: int = 32
    warmup: float = 0.05  # fraction of steps
    clip: float = 1.0
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    data: Optional[str] = None  # JSONL path; default: the built-in task mixture
    eval_per_task: int = 40
    model: GPTConfig = field(default_factory=GPTConfig)  # size of a pretrained base
    progress: Optional[bool] = None

    @property
    def per_head_rank(self) -> int:
        return self.rank // self.heads if self.method == "multilora" else self.rank

    def resolved_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.per_head_rank

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check(cfg: TrainConfig) -> list[str]:
    """Settings that cannot go together: raised before anything is loaded. Returns warnings (settings
    that are ignored)."""
    if cfg.method not in ("pretrain", "full", "lora", "multilora"):
        raise ValueError(f"unknown method {cfg.method!r}")
    for flag, value, low in (("--steps", cfg.steps, 1), ("-r/--rank", cfg.rank, 1), ("--heads", cfg.heads, 1),
                             ("--batch-size", cfg.batch_size, 1)):
        if value < low:
            raise DeltaspecError(f"{flag} must be at least {low}, got {value}")
    if cfg.lr is not None and not 0 < cfg.lr < 10:
        raise DeltaspecError(f"--lr must be in (0, 10), got {cfg.lr}")
    if cfg.lora_alpha is not None and not cfg.lora_alpha > 0:
        raise DeltaspecError(f"--lora-alpha must be positive (ΔW = α/r·BA), got {cfg.lora_alpha}")
    if cfg.method != "pretrain" and not cfg.target_modules:
        raise DeltaspecError("--target-modules is empty; name modules such as q_proj,v_proj")
    if not cfg.scaling_lr_mult > 0:
        raise DeltaspecError(f"--scaling-lr-mult must be positive, got {cfg.scaling_lr_mult}")
    if cfg.save_every < 0:
        raise DeltaspecError(f"--save-every must be 0 (off) or a number of steps, got {cfg.save_every}")
    if cfg.hf_model and cfg.base:
        raise DeltaspecError(f"--model {cfg.hf_model} and --base {cfg.base} both name the model to fine-tune; pass one")
    if cfg.hf_model and cfg.method == "pretrain":
        raise DeltaspecError("--method pretrain trains the built-in GPT from scratch; --model fine-tunes "
                             "(full, lora, multilora)")
    if cfg.max_len is not None and not cfg.hf_model:
        raise DeltaspecError("--max-len applies to --model only (the built-in GPT's length is fixed by its positions)")
    if cfg.method != "pretrain" and not (cfg.base or cfg.hf_model):
        raise ValueError("fine-tuning needs a base model: pass --base or --model (or pretrain one with --method pretrain)")
    base = cfg.hf_model or cfg.base
    if base and os.path.abspath(cfg.out) == os.path.abspath(base):
        raise DeltaspecError(f"--out {cfg.out} is the base model's directory; writing there would overwrite it")
    from ..io.write.outputs import check_writable, refuse_inputs

    target = refuse_inputs(cfg.out, [base, cfg.data], what="--out")
    if target.exists() and not target.is_dir():
        raise DeltaspecError(f"--out {cfg.out} is a file; give a folder")
    if target.is_dir() and any(target.iterdir()) and not cfg.force:
        raise DeltaspecError(f"--out {cfg.out} is not empty; choose a new folder, or pass --force to replace the "
                             "checkpoint files in it (earlier adapter, model and checkpoint-<step>/ files go)")
    check_writable(target, cfg.out)
    notes = []
    if cfg.method != "multilora" and cfg.heads != TrainConfig.heads:
        notes.append(f"--heads {cfg.heads} applies to --method multilora; ignored")
    if cfg.method != "multilora" and cfg.scaling_lr_mult != TrainConfig.scaling_lr_mult:
        notes.append(f"--scaling-lr-mult {cfg.scaling_lr_mult:g} applies to --method multilora; ignored")
    if cfg.track_every < 0 or cfg.save_every < 0:
        raise DeltaspecError("--save-every and --track-every must be 0 (off) or a number of steps")
    if cfg.track_every and cfg.method == "pretrain":
        notes.append("--track-every applies to fine-tuning (full, lora, multilora); ignored")
    if cfg.save_every > cfg.steps:
        notes.append(f"--save-every {cfg.save_every} is more than --steps {cfg.steps}: no step checkpoints")
    return notes


def build(cfg: TrainConfig) -> tuple[nn.Module, list[str]]:
    """The model to train: a fresh GPT (pretrain), the base (full), or the base wrapped with adapters.
    A transformers model is wrapped on its own modules (`model.hf`), so adapter names are the HF ones."""
    seed_everything(cfg.seed)
    if cfg.method == "pretrain":
        return GPT(cfg.model), []
    model = hf.load(cfg.hf_model, cfg.max_len, cfg.progress) if cfg.hf_model else load_model(cfg.base)
    if cfg.method == "full":
        return model, (only_targets(hf.named(model), cfg.target_modules) if cfg.full_targets else [])
    names = wrap(hf.named(model), cfg.target_modules, cfg.method, cfg.rank, cfg.resolved_alpha(), cfg.heads, cfg.dropout)
    return model, names


def only_targets(model: nn.Module, targets) -> list[str]:
    """Full fine-tuning of the target modules only (the layers an adapter would get, for a comparison
    of the same projections): freeze everything but the nn.Linear modules matching `targets`."""
    names = frozen_targets(model, targets)
    for n in names:
        model.get_submodule(n).requires_grad_(True)
    return names


def tokenizer_and_len(model: nn.Module):
    """(tokenizer, tokens per sequence) that go with the model."""
    if isinstance(model, hf.HFCausalLM):
        return model.tok, model.max_len
    return D.CharTokenizer(), model.config.max_len


def batches(cfg: TrainConfig, max_len: int, tok=None):
    tok = tok or D.CharTokenizer()
    if cfg.method == "pretrain":
        return D.TextBatches(D.pretrain_text(cfg.seed), cfg.seed, cfg.batch_size, max_len, tok)
    if cfg.data:
        return D.JsonlBatches(cfg.data, cfg.seed, cfg.batch_size, max_len, tok)
    return D.MixtureBatches(cfg.seed, cfg.batch_size, max_len, tok)


def lr_lambda(steps: int, warmup: float):
    w = max(1, int(warmup * steps))
    return lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, steps - w)))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: MultiLoRA's scalings (`lora_scaling`) in their
    own group at scaling_lr_mult × lr, everything else at lr; no weight decay (as the MTL-LoRA reference).
    Each group has a "name", recorded in train_info.json with its lr, weight decay and size."""
    lr, named = cfg.resolved_lr(), [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scal = [p for n, p in named if n.endswith("lora_scaling")]
    rest = [p for n, p in named if not n.endswith("lora_scaling")]
    groups = [{"name": "adapter" if cfg.method in ("lora", "multilora") else "weights", "params": rest, "lr": lr,
               "weight_decay": 0.0}]
    if scal:
        groups.append({"name": "scaling", "params": scal, "lr": lr * cfg.scaling_lr_mult, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def describe_groups(groups: list[dict]) -> list[dict]:
    """JSON-ready summary of optimizer groups (peak lr, weight decay, number of parameters)."""
    return [{"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"],
             "parameters": sum(p.numel() for p in g["params"])} for g in groups]


def train_loop(model, stream, cfg: TrainConfig, device: torch.device, on_step=None) -> list[float]:
    """Returns the loss per step. on_step(step, losses) runs after optimizer step `step` (1-based), e.g. to save."""
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.resolved_lr(), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps, cfg.warmup))
    bar = Progress(cfg.steps, "steps", enabled=cfg.progress, label="training")
    model.to(device).train()
    losses, tokens, t0 = [], 0, time.perf_counter()
    for _ in range(cfg.steps):
        x, y = (t.to(device) for t in next(stream))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        tokens += x.numel()
        bar.update(1, f"loss {losses[-1]:.3f}  {tokens / (time.perf_counter() - t0):,.0f} tok/s")
        if on_step is not None:
            on_step(len(losses), losses)
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def generate(model, tok, prompt: str, max_new: int, max_len: int, device) -> str:
    ids = [tok.bos] + tok.encode(prompt)
    out = []
    for _ in range(max_new):
        logits = model(torch.tensor([ids[-max_len:]], device=device))[0, -1]
        nxt = int(logits.argmax())
        if nxt == tok.eos:
            break
        ids.append(nxt)
        out.append(nxt)
    return tok.decode(out)


def evaluate(model, seed: int, per_task: int, max_len: int, device, tok=None,
             progress: Optional[bool] = False) -> dict[str, float]:
    """Exact-match accuracy per task family on the held-out split (greedy decoding).
    progress: a bar labelled 'evaluation' (None: when stderr is a terminal), so this phase is not silent."""
    tok, hits, counts = tok or D.CharTokenizer(), {}, {}
    items = D.eval_set(seed, per_task)
    bar = Progress(len(items), "prompts", enabled=progress, label="evaluation")
    try:
        for task, prompt, answer in items:
            bar.status(task)
            got = generate(model, tok, prompt, len(answer) + 2, max_len, device)
            hits[task] = hits.get(task, 0) + (got == answer)
            counts[task] = counts.get(task, 0) + 1
            bar.update(1)
    finally:
        bar.close()
    return {t: hits[t] / counts[t] for t in sorted(counts)}
