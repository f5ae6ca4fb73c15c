"""`SpectraCallback`: a transformers `TrainerCallback` logging deltaspec metrics through `Trainer.log`.

    trainer = Trainer(model=peft_model, args=args, train_dataset=ds,
                      callbacks=[SpectraCallback(every=50)])

Every `every` optimizer steps (global steps) it measures the live adapter layers (Tracker) and calls
`trainer.log({"spectra/q_proj/normalized_entropy": …, …})`: the same path as the loss, so every
`report_to` integration (TensorBoard, Weights & Biases, MLflow, CSV, …) receives the values at that
global step, and they land in `trainer.state.log_history`. The trainer is the one running the
callback (found on the call stack at `on_train_begin`; pass `trainer=` to name it). The analysis of
each tracked step is appended to `<output_dir>/spectra_trajectory.jsonl`.

Why `Trainer.log` and not the `logs` dict of `on_log`: the Trainer calls user callbacks after its
reporting callbacks, so a value added to `logs` there would never reach TensorBoard or W&B.
"""
from __future__ import annotations

import inspect
import os
from typing import Optional, Sequence

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("deltaspec.integrations.hf needs transformers: pip install 'deltaspec[hf]'") from None

from .live import DEFAULT_MAX_COPY_BYTES
from .record import TRAJECTORY_FILE
from .tracker import DEFAULT_EVERY, DEFAULT_METRICS, Tracker


def _running_trainer() -> Optional[Trainer]:
    """The Trainer whose callback handler is calling us (a frame of one of its methods)."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


class SpectraCallback(TrainerCallback):
    """Log spectra of ΔW every `every` global steps (see the module docstring).

    modules / layers / metrics / per_layer / full / max_copy_bytes / n_ref: as `deltaspec.track`.
    histograms=True: also the singular values per module type in TensorBoard's histogram tab (through
    the Trainer's TensorBoard writer; needs report_to=["tensorboard"]). trajectory: True writes
    <output_dir>/spectra_trajectory.jsonl, a path writes there, False writes nothing.
    """

    def __init__(self, every: int = DEFAULT_EVERY, *, modules: Optional[Sequence[str]] = None, layers=None,
                 metrics: Optional[Sequence[str]] = DEFAULT_METRICS, per_layer: bool = False, histograms: bool = False,
                 trajectory=True, full: bool = False, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES, n_ref="shape",
                 trainer: Optional[Trainer] = None):
        self.every, self.trainer, self.histograms, self.trajectory = every, trainer, histograms, trajectory
        self.options = dict(modules=modules, layers=layers, metrics=metrics, per_layer=per_layer, full=full,
                            max_copy_bytes=max_copy_bytes, n_ref=n_ref)
        self.tracker: Optional[Tracker] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainer = self.trainer or _running_trainer()
        out = self.trajectory
        if out is True:
            out = os.path.join(args.output_dir, TRAJECTORY_FILE)
        self.tracker = Tracker(model, self.every, out=out or None, histograms=self._histogram_writer(),
                               label=os.path.basename(os.path.normpath(args.output_dir)), **self.options)

    def _histogram_writer(self):
        if not self.histograms or self.trainer is None:
            return None
        for cb in self.trainer.callback_handler.callbacks:
            if type(cb).__name__ == "TensorBoardCallback":
                return _LazyWriter(cb)
        return None

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.tracker is None or not state.is_world_process_zero:
            return
        if step % self.every and step != state.max_steps:
            return
        scalars = self.tracker.record(step)
        if not scalars:
            return
        if self.trainer is not None:
            should_log = control.should_log  # Trainer.log resets it: keep this step's loss logging
            self.trainer.log(dict(scalars))
            control.should_log = should_log
        else:  # no trainer found: the values still reach state.log_history
            state.log_history.append({**scalars, "step": step})


class _LazyWriter:
    """The TensorBoard callback's SummaryWriter, looked up at each use (it is opened after train begins)."""

    def __init__(self, callback):
        self.callback = callback

    def add_histogram(self, tag, values, step):
        w = getattr(self.callback, "tb_writer", None)
        if w is not None:
            w.add_histogram(tag, values, step)
