"""`SpectraCallback` for Lightning: deltaspec metrics in the Trainer's loggers every N optimizer steps.

    from deltaspec.integrations.lightning import SpectraCallback
    trainer = L.Trainer(..., callbacks=[SpectraCallback(every=50)])

At `trainer.global_step % every == 0` it measures the LightningModule's live adapter layers (Tracker)
and hands the scalars to each of `trainer.loggers` (`log_metrics(metrics, step=global_step)`, the
call Lightning itself makes): CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger… all receive
them at that step. Not through `pl_module.log`, which only reaches the loggers on steps that are
multiples of `log_every_n_steps`. Lightning's loggers write on rank 0 only; the Tracker measures
only there. histograms=True writes the singular values through a TensorBoardLogger's
`experiment.add_histogram`. The trajectory goes to `<trainer.log_dir>/spectra_trajectory.jsonl`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError("deltaspec.integrations.lightning needs Lightning: pip install 'deltaspec[lightning]'") from None

from .live import DEFAULT_MAX_COPY_BYTES
from .record import TRAJECTORY_FILE
from .tracker import DEFAULT_EVERY, DEFAULT_METRICS, Tracker


class SpectraCallback(Callback):
    """Log spectra of ΔW every `every` optimizer steps; options as the transformers SpectraCallback."""

    def __init__(self, every: int = DEFAULT_EVERY, *, modules: Optional[Sequence[str]] = None, layers=None,
                 metrics: Optional[Sequence[str]] = DEFAULT_METRICS, per_layer: bool = False, histograms: bool = False,
                 trajectory=True, full: bool = False, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES, n_ref="shape"):
        self.every, self.histograms, self.trajectory = every, histograms, trajectory
        self.options = dict(modules=modules, layers=layers, metrics=metrics, per_layer=per_layer, full=full,
                            max_copy_bytes=max_copy_bytes, n_ref=n_ref)
        self.tracker: Optional[Tracker] = None

    def on_train_start(self, trainer, pl_module):
        out = self.trajectory
        if out is True:
            out = os.path.join(trainer.log_dir or trainer.default_root_dir, TRAJECTORY_FILE)
        writer = None
        if self.histograms:
            writer = next((lg.experiment for lg in trainer.loggers if type(lg).__name__ == "TensorBoardLogger"), None)
        self.tracker = Tracker(pl_module, self.every, out=out or None, histograms=writer,
                               log=lambda scalars, step: self._log(trainer, scalars, step), **self.options)

    @staticmethod
    def _log(trainer, scalars: dict, step: int) -> None:
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.tracker is None or step == 0 or step % self.every:
            return
        self.tracker.record(step)  # rank 0 only; a step seen twice (gradient accumulation) is measured once
