"""`run(cfg)`: build → train → evaluate → save, and the facts that go into train_info.json."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict

import torch

from .. import __version__
from . import hf
from .save import file_sha256, save_run
from ..spectra import pick_device
from .trainer import (TrainConfig, batches, build, check, describe_groups, evaluate, param_groups, tokenizer_and_len,
                      train_loop)

REPO_BASE = os.path.join(os.path.dirname(__file__), "..", "..", "sample_checkpoints", "base")


def default_base() -> str | None:
    """The bundled sample base model, when deltaspec runs from a checkout (or editable install)."""
    p = os.path.normpath(REPO_BASE)
    return p if os.path.exists(os.path.join(p, "model.safetensors")) else None


_WRITTEN = ("spectra_trajectory.jsonl", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
            "model.safetensors.index.json", "train_info.json")


def clear_out(cfg: TrainConfig) -> None:
    """With --force: remove what an earlier run wrote into OUT (its adapter or model files and step
    folders), so a LoRA adapter left there cannot be read as this run's full fine-tune."""
    if not (cfg.force and os.path.isdir(cfg.out)):
        return
    import shutil

    for name in os.listdir(cfg.out):
        p = os.path.join(cfg.out, name)
        if name in _WRITTEN or (name.startswith("model-") and name.endswith(".safetensors")):
            os.remove(p)
        elif name.startswith("checkpoint-") and os.path.isfile(os.path.join(p, "train_info.json")):
            shutil.rmtree(p)


def run(cfg: TrainConfig, log=lambda s: print(s, file=sys.stderr)) -> dict:
    for note in check(cfg):
        log(f"warning: {note}")
    clear_out(cfg)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_flush_denormal(True)  # tiny gradients late in a cosine schedule must not slow the CPU 10×
    device = pick_device(cfg.device)
    model, wrapped = build(cfg)
    tok, max_len = tokenizer_and_len(model)
    facts = base_facts(cfg, model)  # before training: the hash is of the base as it was read
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kind = "trained" if cfg.method == "full" else "adapted"
    log(f"{cfg.method}: {n_train:,} trainable parameters" + (f" in {len(wrapped)} {kind} modules" if wrapped else "")
        + f", {cfg.steps} steps on {device}")
    adapted = cfg.method in ("lora", "multilora")
    info = {
        "deltaspec_version": __version__, "method": cfg.method, "rank": cfg.rank if adapted else None,
        "heads": cfg.heads if cfg.method == "multilora" else None,
        "per_head_rank": cfg.per_head_rank if adapted else None,
        "lora_alpha": cfg.resolved_alpha() if adapted else None, "lora_dropout": cfg.dropout if adapted else None,
        "target_modules": list(cfg.target_modules) if wrapped else None, "steps": cfg.steps, "lr": cfg.resolved_lr(),
        "scaling_lr_mult": cfg.scaling_lr_mult if cfg.method == "multilora" else None,
        "full_targets": cfg.full_targets if cfg.method == "full" else None,  # full FT of target_modules only
        "optimizer": {"name": "AdamW", "schedule": f"linear warmup {cfg.warmup:g} of steps, cosine decay to 0",
                      "grad_clip": cfg.clip, "param_groups": describe_groups(param_groups(model, cfg))},
        "batch_size": cfg.batch_size, "seed": cfg.seed, "device": str(device),
        "data": cfg.data or ("generated pretraining corpus" if cfg.method == "pretrain" else "built-in task mixture"),
        "save_every": cfg.save_every or None, "track_every": cfg.track_every or None,
        "trainable_parameters": n_train, **facts,
    }

    def checkpoint(step: int, losses: list[float]) -> None:  # OUT/checkpoint-<step>/: OUT's layout, earlier
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            save_run(model, cfg, {**info, "step": step, "loss": sum(losses[-20:]) / len(losses[-20:])},
                     os.path.join(cfg.out, f"checkpoint-{step}"))

    if adapted:  # the adapter before any step: `analyze RUN --initial RUN/checkpoint-0` splits off ΔW_0
        save_run(model, cfg, {**info, "step": 0, "loss": None}, os.path.join(cfg.out, "checkpoint-0"))

    tracker = make_tracker(cfg, model, wrapped, device)

    def on_step(step: int, losses: list[float]) -> None:
        checkpoint(step, losses)
        if tracker is not None and (step % cfg.track_every == 0 or step == cfg.steps):
            tracker.record(step)

    t0 = time.perf_counter()
    losses = train_loop(model, batches(cfg, max_len, tok), cfg, device, on_step=on_step)
    train_s = time.perf_counter() - t0
    acc = {}
    if cfg.method != "pretrain" and not cfg.data:  # held-out accuracy, with its own bar ('evaluation')
        acc = evaluate(model, cfg.seed, cfg.eval_per_task, max_len, device, tok, progress=cfg.progress)
    if acc:
        log("held-out exact match: " + ", ".join(f"{t} {a:.0%}" for t, a in acc.items()))
    info.update({"step": cfg.steps, "per_task_accuracy": acc, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                 "train_seconds": round(train_s, 1)})
    save_run(model.cpu(), cfg, info)
    log(f"wrote {cfg.out} ({train_s:.0f} s of training)")
    return info


def make_tracker(cfg: TrainConfig, model, wrapped: list[str], device):
    """--track-every: the same Tracker as the Trainer callbacks, writing OUT/spectra_trajectory.jsonl.
    Full fine-tuning tracks the trained nn.Linear weights (a copy of W0, within the Tracker's budget)."""
    if not cfg.track_every or cfg.method == "pretrain":
        return None
    from ..integrations.record import TRAJECTORY_FILE
    from ..integrations.tracker import Tracker
    from ..updates import module_type

    model.to(device)  # the tracker measures (and copies W0) where training happens
    modules = sorted({module_type(n) for n in wrapped}) if cfg.method == "full" and wrapped else None
    return Tracker(hf.named(model), cfg.track_every, out=os.path.join(cfg.out, TRAJECTORY_FILE),
                   full=cfg.method == "full", modules=modules, label=os.path.basename(os.path.normpath(cfg.out)))


def base_facts(cfg: TrainConfig, model) -> dict:
    """Which base was fine-tuned (path as given, SHA-256 of its weights) and the model's config."""
    if isinstance(model, hf.HFCausalLM):  # the HF config dict; sha over the weight file(s), maybe sharded
        return {"base": cfg.hf_model, "base_sha256": file_sha256(*hf.weight_files(cfg.hf_model)),
                "model_config": model.config_dict(), "max_len": model.max_len}
    return {"base": cfg.base,
            "base_sha256": file_sha256(os.path.join(cfg.base, "model.safetensors")) if cfg.base else None,
            "model_config": asdict(model.config)}
