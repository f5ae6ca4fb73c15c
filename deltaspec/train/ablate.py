"""`deltaspec ablate`: evaluate a trained run with every selected layer's ΔW truncated, stripped of its
top-k directions, or of k random directions of the same energy (the math: deltaspec/ablation.py).

A run is a `deltaspec train` output (its train_info.json says how it was made): LoRA or MultiLoRA
adapters and full fine-tunes of the built-in GPT (`--base`) or of a local transformers model
(`--model`, e.g. SmolLM2-135M converted from GGUF by `python -m deltaspec.train.gguf`). The model is
rebuilt from the run's base (its SHA-256 must match train_info.json), the selected layers' weights are
set to W0 + ΔW', and the run is scored as `deltaspec train` scores it: exact-match accuracy per task
family on the held-out split of the built-in task mixture for the run's seed (greedy decoding), plus
the held-out loss, the mean cross-entropy over the response tokens of the same examples.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import ablation as A
from ..errors import DeltaspecError, reason
from . import data as D
from . import hf
from .layers import matches
from .trainer import DEFAULT_TARGETS, evaluate, tokenizer_and_len

RANDOM_SEED = 0  # the control's frames: seed + layer index (same for every run and k; --random-seed)


@dataclass
class Layer:
    name: str
    weight: torch.nn.Parameter  # the model's weight, overwritten with W0 + ΔW'
    w0: torch.Tensor
    sigma: np.ndarray  # exact SVD of ΔW (float64)
    U: np.ndarray
    V: np.ndarray

    @property
    def rank(self) -> int:
        return len(self.sigma)


@dataclass
class Run:
    path: str
    label: str
    method: str
    seed: int
    base: str
    model: torch.nn.Module
    layers: list[Layer]
    svd_seconds: float
    info: dict = field(repr=False, default_factory=dict)


def _info(path: str) -> dict:
    f = Path(path) / "train_info.json"
    if not f.is_file():
        raise DeltaspecError(f"{path}: no train_info.json; ablate takes `deltaspec train` runs (it rebuilds the model "
                             "and its evaluation from that file)")
    try:
        info = json.loads(f.read_text())
    except ValueError as e:
        raise DeltaspecError(f"{f}: not valid JSON ({reason(e)})") from None
    if info.get("method") not in ("full", "lora", "multilora"):
        raise DeltaspecError(f"{path}: a {info.get('method')!r} run; ablate takes full, lora or multilora fine-tunes")
    if info.get("data") != "built-in task mixture":
        raise DeltaspecError(f"{path}: trained on {info.get('data')!r}; ablate scores runs on the built-in task "
                             "mixture's held-out split, which this run has none of")
    return info


def is_builtin(info: dict) -> bool:
    return (info.get("model_config") or {}).get("model_type") == "deltaspec-gpt"


def _check_base(path: str, info: dict, base: Optional[str]) -> str:
    """The run's base as given (or train_info.json's), checked against the SHA-256 recorded there."""
    from .save import file_sha256

    base = base or info.get("base")
    if not base or not os.path.isdir(base):
        raise DeltaspecError(f"{path}: its base {base!r} (train_info.json) is not a directory here; pass --base "
                             "with the model it was trained from")
    files = [Path(base) / "model.safetensors"] if is_builtin(info) else hf.weight_files(base)
    if not all(f.is_file() for f in files):
        raise DeltaspecError(f"{base}: no model.safetensors; not the base of {path}")
    if info.get("base_sha256") and file_sha256(*files) != info["base_sha256"]:
        raise DeltaspecError(f"{base}: not the base {path} was trained from (SHA-256 differs from train_info.json)")
    return base


def load_model(path: str, info: dict):
    """The built-in GPT or a transformers causal LM in `path`, on CPU, evaluation mode."""
    from .model import load_model as load_gpt

    try:
        model = load_gpt(path) if is_builtin(info) else hf.load(path, info.get("max_len"), progress=False)
    except DeltaspecError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DeltaspecError(f"{path}: cannot rebuild the model ({reason(e, 200)})") from None
    return model.eval()


def selected(names: Sequence[str], modules: Optional[Sequence[str]], info: dict) -> list[str]:
    """Layers to ablate: `modules` patterns (None: the run's target modules, or the trainer's default
    targets q/k/v/o_proj for a full fine-tune of every parameter; ["all"]: every layer with an update)."""
    if modules == ["all"]:
        return list(names)
    pats = modules or info.get("target_modules") or list(DEFAULT_TARGETS)
    return [n for n in names if matches(n, pats)]


def open_run(path: str, label: str, *, base: Optional[str] = None, modules: Optional[Sequence[str]] = None) -> Run:
    """Rebuild the run: its model with the full ΔW in place, and the exact SVD of each selected ΔW."""
    import deltaspec as ds
    from ..spectra import spectrum

    info = _info(path)
    base = _check_base(path, info, base)
    full = info["method"] == "full"
    updates = ds.load(path, base=base if full else None)
    names = selected([u.name for u in updates], modules, info)
    if not names:
        raise DeltaspecError(f"{path}: no layer matches --modules {','.join(modules or [])}")
    model = load_model(path if full else base, info)
    w0 = load_model(base, info) if full else None
    target = hf.named(model)
    layers, t0 = [], time.perf_counter()
    with torch.no_grad():
        for u in updates:
            try:
                mod = target.get_submodule(u.name)
            except AttributeError:
                raise DeltaspecError(f"{path}: layer {u.name} is not a module of the rebuilt model") from None
            if not isinstance(mod, torch.nn.Linear) or tuple(mod.weight.shape) != tuple(u.shape):
                raise DeltaspecError(f"{path}: layer {u.name} {tuple(u.shape)} does not fit the rebuilt model")
            if full and u.name not in names:
                continue  # the fine-tuned weight stays
            delta = u.load()
            base_w = (hf.named(w0).get_submodule(u.name).weight if full else mod.weight).detach().clone()
            if not full:  # an adapter: the run's model is the base plus every ΔW
                mod.weight.add_(delta.materialize().to(mod.weight.dtype))
            if u.name in names:
                spec = spectrum(delta, device="cpu", dtype="float64", vectors=True)
                layers.append(Layer(u.name, mod.weight, base_w, spec.sigma, spec.U.numpy(), spec.V.numpy()))
    return Run(path, label, info["method"], int(info["seed"]), base, model, layers, time.perf_counter() - t0, info)


def resolve_k(run: Run, k) -> list[int]:
    """Per-layer k for a requested k ("full": each layer's rank); a k above a layer's rank is an error."""
    if k == "full":
        return [x.rank for x in run.layers]
    low = min(run.layers, key=lambda x: x.rank)
    if k > low.rank:
        raise DeltaspecError(f"{run.path}: k = {k} is larger than the rank of {low.name} ({low.rank}); "
                             "use k up to the update's rank, or 'full'")
    return [k] * len(run.layers)


@torch.no_grad()
def set_ablation(run: Run, mode: Optional[str], k, seed: int = RANDOM_SEED) -> tuple[float, float]:
    """Set every selected weight to W0 + ΔW' (mode None: the run's own ΔW). Returns (removed energy
    share Σ‖ΔW − ΔW'‖² / Σ‖ΔW‖², the control's mean scale c)."""
    total = removed = 0.0
    scales = []
    ks = resolve_k(run, k) if mode else [0] * len(run.layers)
    for i, (x, kk) in enumerate(zip(run.layers, ks)):
        a = A.ablate(x.sigma, x.U, x.V, mode or "remove", kk, seed + i)
        delta = torch.from_numpy(a.dense()).to(x.weight.dtype)
        x.weight.copy_(x.w0 + delta)
        total += float((x.sigma**2).sum())
        removed += a.removed_energy
        scales.append(a.scale)
    return (removed / total if total else 0.0), float(np.mean(scales))


@torch.no_grad()
def heldout_loss(model, seed: int, per_task: int, max_len: int, tok, batch: int = 64) -> float:
    """Mean cross-entropy over the response (and EOS) tokens of the held-out examples, teacher-forced."""
    rows = [D.encode_pair(tok, p, a, max_len) for _, p, a in D.eval_set(seed, per_task)]
    loss, n = 0.0, 0
    for i in range(0, len(rows), batch):
        x, y = D.collate(rows[i:i + batch], tok.pad)
        logits = model(x)
        loss += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum"))
        n += int((y != -100).sum())
    return loss / n


@torch.no_grad()
def accuracy(model, seed: int, per_task: int, max_len: int, tok) -> dict[str, float]:
    """`trainer.evaluate`'s exact-match accuracy (greedy, at most len(answer) + 2 new tokens, EOS ends)
    with all examples in one right-padded batch: each row reads the logits at its own last token and
    writes its next token after it, so (causal model, positions unchanged) every row computes what
    `evaluate` computes one example at a time. With the character tokenizer a row stops as soon as its
    text stops being a prefix of the answer (it can no longer match). Far faster on small models."""
    ex = D.eval_set(seed, per_task)
    rows = [[tok.bos] + tok.encode(p) for _, p, _ in ex]
    limit = [len(a) + 2 for _, _, a in ex]
    if max(len(r) + n for r, n in zip(rows, limit)) > max_len:  # would need evaluate's left cropping
        return evaluate(model, seed, per_task, max_len, torch.device("cpu"), tok)
    prefix_stop = isinstance(tok, D.CharTokenizer)  # its decode is a concatenation of per-token text
    x = torch.full((len(rows), max(len(r) + n for r, n in zip(rows, limit))), tok.pad, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    end = torch.tensor([len(r) for r in rows])  # next write position of each row
    outs: list[list[int]] = [[] for _ in ex]
    active = list(range(len(ex)))
    while active:
        idx = torch.tensor(active)
        width = int(end[idx].max())
        logits = model(x[idx, :width])
        nxt = logits[torch.arange(len(active)), end[idx] - 1].argmax(-1).tolist()
        keep = []
        for i, t in zip(active, nxt):
            if t == tok.eos:
                continue
            outs[i].append(t)
            x[i, end[i]] = t
            end[i] += 1
            if len(outs[i]) < limit[i] and not (prefix_stop and not ex[i][2].startswith(tok.decode(outs[i]))):
                keep.append(i)
        active = keep
    hits: dict[str, int] = {}
    for (task, _, answer), o in zip(ex, outs):
        hits[task] = hits.get(task, 0) + (tok.decode(o) == answer)
    return {t: hits[t] / per_task for t in sorted(hits)}


def score(model, seed: int, per_task: int) -> dict:
    """Held-out loss, per-task exact-match accuracy and their mean, as `deltaspec train` evaluates."""
    tok, max_len = tokenizer_and_len(model)
    acc = accuracy(model, seed, per_task, max_len, tok)
    return {"loss": heldout_loss(model, seed, per_task, max_len, tok), "accuracy": acc,
            "mean_accuracy": float(np.mean(list(acc.values())))}


_BASE_SCORES: dict = {}  # (base, seed, per_task) → score: runs of one seed share their base's


def base_score(run: Run, per_task: int) -> dict:
    key = (os.path.realpath(run.base), run.seed, per_task)
    if key not in _BASE_SCORES:
        _BASE_SCORES[key] = score(load_model(run.base, run.info), run.seed, per_task)
    return _BASE_SCORES[key]


def ablate_run(run: Run, ks: Sequence, modes: Sequence[str], per_task: int,
               step: Callable[[str], None] = lambda s: None, random_seed: int = RANDOM_SEED) -> dict:
    """JSON-ready results of one run: the base, the run itself, and every (mode, k)."""
    out = {"label": run.label, "path": run.path, "method": run.method, "seed": run.seed, "base": run.base,
           "layers": [x.name for x in run.layers], "ranks": sorted({x.rank for x in run.layers}),
           "svd_seconds": round(run.svd_seconds, 3), "results": []}
    step(f"{run.label}: base")
    out["base_model"] = base_score(run, per_task)
    done: dict = {}  # ΔW' already scored: k = rank is "full" (LoRA r=16: k=16), remove = random at full
    full = resolve_k(run, "full")
    for k in ks:
        for mode in modes:
            step(f"{run.label}: {mode} k={k}")
            t0 = time.perf_counter()
            share, c = set_ablation(run, mode, k, random_seed)
            at_full = resolve_k(run, k) == full
            key = ("run",) if at_full and mode == "trunc" else ("zero",) if at_full else (mode, k)
            reused = key in done
            if not reused:
                done[key] = score(run.model, run.seed, per_task)
            out["results"].append({"mode": mode, "k": k, **done[key], "removed_energy": share, "reused": reused,
                                   "random_scale": c if mode == "random" else None,
                                   "seconds": round(time.perf_counter() - t0, 3)})
    set_ablation(run, None, 0)  # the run's own weights again
    return out


def cost_per_k(runs: list[dict]) -> dict:
    """Mean seconds of one evaluation (set ΔW', score) at each k, over runs and modes (cells that reuse
    an identical ΔW' already scored are left out)."""
    acc: dict = {}
    for r in runs:
        for x in r["results"]:
            if not x.get("reused"):
                acc.setdefault(str(x["k"]), []).append(x["seconds"])
    return {k: round(float(np.mean(v)), 3) for k, v in acc.items()}


def summary(runs: list[dict]) -> dict:
    """label → {"n": runs, "base"/"run": {"loss", "acc"}, (mode, k): {"loss", "acc"}}: lists over the
    label's runs (its seeds), in input order; k as given ("full" stays a string)."""
    out: dict = {}
    for r in runs:
        s = out.setdefault(r["label"], {"n": 0, "base": {"loss": [], "acc": []}, "run": {"loss": [], "acc": []}})
        s["n"] += 1
        s["base"]["loss"].append(r["base_model"]["loss"])
        s["base"]["acc"].append(r["base_model"]["mean_accuracy"])
        for x in r["results"]:
            cell = s.setdefault((x["mode"], x["k"]), {"loss": [], "acc": []})
            cell["loss"].append(x["loss"])
            cell["acc"].append(x["mean_accuracy"])
            if x["mode"] == "trunc" and x["k"] == "full":
                s["run"]["loss"].append(x["loss"])
                s["run"]["acc"].append(x["mean_accuracy"])
    return out
