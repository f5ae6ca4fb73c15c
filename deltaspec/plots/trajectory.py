"""Spectra over training: a balance metric of ΔW against the training step, one line per method.

A trajectory is a list of (step, AnalysisResult), one per step checkpoint. `deltaspec train
--save-every N` writes `RUN/checkpoint-<N>/` (each readable by analyze) and RUN itself is the last step;
HF Trainer / PEFT runs write `checkpoint-<N>/` folders too. The step is taken from the folder name,
else trainer_state.json (`global_step`), else deltaspec's train_info.json (`step`). A run tracked
live (`deltaspec train --track-every`, the training callbacks, `deltaspec.track`) has no step
checkpoints but a `spectra_trajectory.jsonl` holding the analysis of every tracked step: the file, or
a run folder holding it, is one run whose points are already analysed (AnalysisResults, not paths).

Each point is the mean of the metric over the selected layers (e.g. the 4 k_proj and v_proj layers).
At step 0 (`RUN/checkpoint-0/`, which `deltaspec train` writes for LoRA and MultiLoRA) the update is
exactly zero (LoRA's B = 0, MultiLoRA's scalings = 0): ‖ΔW‖_F = 0 is drawn there, the ratio metrics are
undefined and left out, and every panel shares the step axis. With log_x, step 0 is left out.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import DeltaspecError
from .style import color, legend, panel_axes, pick, styled

METRICS = ("top1_energy", "normalized_entropy", "effective_rank", "frobenius_norm")
YLABELS = {"top1_energy": "top-1 energy share", "normalized_entropy": "normalized entropy",
           "effective_rank": "effective rank", "frobenius_norm": "‖ΔW‖$_F$"}
_CKPT = re.compile(r"checkpoint-(\d+)$")
_WEIGHTS = ("adapter_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def step_of(path) -> Optional[int]:
    """The training step of a checkpoint folder (or of `checkpoint-<N>.json`): from the name, else
    trainer_state.json's global_step, else train_info.json's step; None when none says."""
    p = Path(path)
    m = _CKPT.search(p.stem if p.suffix.lower() == ".json" else p.name)
    if m:
        return int(m.group(1))
    for name, key in (("trainer_state.json", "global_step"), ("train_info.json", "step")):
        f = p / name
        if p.is_dir() and f.is_file():
            try:
                v = json.loads(f.read_text()).get(key)
            except ValueError:
                raise DeltaspecError(f"{f}: not valid JSON") from None
            if isinstance(v, int):
                return v
    return None


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in _WEIGHTS)


def checkpoint_steps(path) -> list[tuple[int, str]]:
    """(step, path) of the checkpoints of one run, by step: the `checkpoint-<N>` folders in `path`, plus
    `path` itself when it is a checkpoint whose step is known (a deltaspec run: its final step)."""
    p = Path(path)
    found = {}
    if p.is_dir():
        for d in p.iterdir():
            if _CKPT.search(d.name) and _is_checkpoint(d):
                found[int(_CKPT.search(d.name).group(1))] = str(d)
    if _is_checkpoint(p) and step_of(p) is not None:
        found.setdefault(step_of(p), str(p))
    if not found:
        raise DeltaspecError(f"{path}: no step checkpoints (checkpoint-<N>/ folders, from `deltaspec train "
                             "--save-every N` or a HF Trainer run) and no step recorded for the folder itself")
    return sorted(found.items())


def _name(p: Path) -> str:
    return p.stem if p.suffix.lower() == ".json" else p.name


def series_key(path) -> tuple[str, int]:
    """(run label, step) of one checkpoint folder or saved analysis: `runs/lora/checkpoint-300` →
    ("lora", 300). A saved analysis is named by the checkpoint path recorded in it (`source.path`)
    when that tells the step, else like a folder (`lora/checkpoint-300.json`). Raises when the step cannot be told."""
    where = Path(str(path).rstrip("/\\"))
    if where.suffix.lower() == ".json":  # the checkpoint it was made from names its run best
        try:
            src = json.loads(where.read_text()).get("source", {}).get("path")
        except (OSError, ValueError, AttributeError):
            src = None
        if src and (step_of(Path(src)) is not None or step_of(where) is None):
            where = Path(src)
    step = step_of(where)
    if step is None:
        raise DeltaspecError(f"{path}: cannot tell its training step; name it checkpoint-<step> (folder or .json)")
    return (where.parent.name if _CKPT.search(_name(where)) else _name(where)) or str(where), step


def _tracked(p: Path):
    """(label, [(step, AnalysisResult)]) of a trajectory file, or of a run folder with one and no step
    checkpoints (checkpoint-0/, the adapter before training that every run keeps, does not count);
    None for anything else."""
    from ..integrations import record

    f = p if record.is_trajectory(p) else None
    if f is None and p.is_dir() and not any(_CKPT.search(d.name) and d.name != "checkpoint-0"
                                            for d in p.iterdir() if d.is_dir()):
        f = record.in_folder(p)
    if f is None:
        return None
    label = f.resolve().parent.name if f.name == record.TRAJECTORY_FILE else f.stem
    return label, record.read(f)[1]


def collect(inputs: Sequence) -> dict[str, list[tuple[int, str]]]:
    """label → [(step, path)] from the inputs: a run folder holding checkpoint-<N>/ folders stands for
    all of them (and itself, when its step is known); a single checkpoint folder or saved analysis is
    one point of the run it names. Points of one run are merged; a step given twice is an error. Two
    runs with the same folder name (seed0/lora, seed1/lora) are labelled with their paths.
    A tracked run's points (`_tracked`) come as AnalysisResults in place of paths."""
    out: dict[str, dict[int, str]] = {}
    owner: dict[str, str] = {}  # label → the run folder it came from
    for path in inputs:
        p = Path(path)
        tracked = _tracked(p)
        if tracked is not None:
            label = tracked[0] if tracked[0] not in out else str(path)
            points = [(label, s, res) for s, res in tracked[1]]
        elif p.is_dir() and any(_CKPT.search(d.name) for d in p.iterdir() if d.is_dir()):
            label = p.resolve().name
            if owner.get(label, str(p.resolve())) != str(p.resolve()):
                label = str(path)
            owner[label] = str(p.resolve())
            points = [(label, s, q) for s, q in checkpoint_steps(p)]
        else:
            points = [(*series_key(p), str(p))]
        for label, step, q in points:
            have = out.setdefault(label, {})
            if step in have and have[step] != q:
                raise DeltaspecError(f"{label}: step {step} given twice ({have[step]} and {q})")
            have[step] = q
    return {lab: sorted(d.items()) for lab, d in out.items()}


def trajectory_data(series: Mapping[str, Sequence], *, metrics: Sequence[str] = METRICS, modules=None,
                    layers=None) -> dict:
    """label → {"step": array, metric: array of the mean over the selected layers}, sorted by step.

    `series`: label → [(step, AnalysisResult), …]. Layers whose metric is NaN (an all-zero update)
    are left out of the mean; a step with none left is left out.
    """
    out = {}
    for label, points in series.items():
        rows = []
        for step, res in sorted(points, key=lambda t: t[0]):
            sel = pick(res, modules, layers)
            if not sel:
                raise DeltaspecError(f"{label} step {step}: no layers for modules {modules}; "
                                     f"available: {', '.join(res.modules())}")
            means = []
            for m in metrics:
                if m not in res.metric_names:
                    raise DeltaspecError(f"unknown metric '{m}'; available: {', '.join(res.metric_names)}")
                v = [float(r.metrics[m]) for r in sel if r.metrics[m] is not None and math.isfinite(r.metrics[m])]
                means.append(float(np.mean(v)) if v else math.nan)
            if not all(math.isnan(x) for x in means):
                rows.append((step, means))
        out[label] = {"step": np.array([s for s, _ in rows], dtype=np.int64),
                      **{m: np.array([v[i] for _, v in rows]) for i, m in enumerate(metrics)}}
    return out


def _as_data(data, metrics, modules, layers) -> dict:
    """Accept either trajectory_data's output (e.g. read back from JSON) or label → [(step, result)]."""
    first = next(iter(data.values()), None) if isinstance(data, Mapping) else None
    if first is None:
        raise DeltaspecError("nothing to plot: no trajectories")
    if isinstance(first, Mapping) and "step" in first:
        missing = [m for m in metrics if m not in first]
        if missing:
            raise DeltaspecError(f"the trajectory data has no {', '.join(missing)}; it has {', '.join(first)}")
        return {lab: {k: np.asarray(v) for k, v in d.items()} for lab, d in data.items()}
    return trajectory_data(data, metrics=metrics, modules=modules, layers=layers)


@styled
def trajectory(data, *, metrics: Sequence[str] = METRICS, modules=None, layers: Optional[Sequence[int]] = None,
               log_x: bool = False, title: Optional[str] = None, ax=None, size=None, height=None) -> list:
    """One panel per metric, one line (with markers) per method: the metric against the training step.

    data: label → [(step, AnalysisResult), …], or `trajectory_data`'s output. ax: None (a new figure,
    double-column for 2+ panels), one Axes (one metric) or one per metric. Returns the list of Axes.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    d = _as_data(data, metrics, modules, layers)
    own = ax is None
    fig, axes = panel_axes(ax, metrics, "metrics", size, height)
    steps = np.concatenate([t["step"] for t in d.values()]) if d else np.zeros(0)
    steps = steps[steps > 0] if log_x else steps
    for a, m in zip(axes, metrics):
        for n, (lab, t) in enumerate(d.items()):
            keep = t["step"] > 0 if log_x else slice(None)
            a.plot(t["step"][keep], np.asarray(t[m])[keep], color=color(n), marker="o", ms=2.5, label=lab)
        if log_x:
            a.set_xscale("log")
        elif steps.size:  # ratio metrics are NaN at step 0: keep every panel on the same steps
            lo, hi = float(steps.min()), float(steps.max())
            pad = 0.04 * (hi - lo) or 0.5
            a.set_xlim(lo - pad, hi + pad)
        a.set_xlabel("training step")
        a.set_ylabel(YLABELS.get(m, m))
    if own and len(axes) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(d), frameon=False)
    else:
        legend(axes[0])
    if title is None and own:
        title = _averaged(data, modules, layers)
    if title:
        axes[0].figure.suptitle(title) if len(axes) > 1 else axes[0].set_title(title)
    return axes


def _averaged(data, modules, layers) -> str:
    """Default title: what each point averages ('each point: mean over 8 layers (k_proj, v_proj)')."""
    first = next(iter(data.values()))
    if isinstance(first, Mapping):  # precomputed trajectory_data: the layers are not known here
        return "each point: mean over the selected layers of one checkpoint"
    sel = pick(first[0][1], modules, layers)
    mods = ", ".join(dict.fromkeys(r.module for r in sel))
    return f"each point: mean over {len(sel)} layer{'s' if len(sel) != 1 else ''} ({mods}) of one checkpoint"
