"""`Tracker`: spectra and balance metrics of a model's live updates every N optimizer steps.

The one engine behind the transformers and Lightning callbacks, `deltaspec train --track-every` and
`deltaspec.track` for hand-written loops. At a tracked step it reads the live adapter layers (or
W − W0 for full fine-tuning, see live.py), runs the same factored SVD and metrics as `analyze` on the
model's device, and
- returns scalars `spectra/<module type>/<metric>` (the mean over that module type's layers, NaNs
  left out, as `analyze`'s aggregates), plus `spectra/layer/<name>/<metric>` with per_layer=True;
- appends the whole analysis to a trajectory file (record.py) when `out` is given;
- passes the scalars to `log(scalars, step)` and, with a `histograms` writer (anything with
  TensorBoard's `add_histogram(tag, values, global_step)`), the singular values per module type.
Under torch.distributed only rank 0 measures, writes and logs (the other ranks only count steps).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .. import metrics as M
from ..errors import DeltaspecError
from . import record
from .live import DEFAULT_MAX_COPY_BYTES, FullSnapshot, adapter_layers, module_types, unsupported_sharding

DEFAULT_EVERY = 50
DEFAULT_METRICS = ("normalized_entropy", "effective_rank", "top1_energy", "frobenius_norm")
FOUND = "PEFT LoRA/DoRA or deltaspec LoRA/MultiLoRA layers"


def metric_names(energy_k: Sequence[int] = M.DEFAULT_TOP_K) -> list[str]:
    return list(M.all_metrics([1.0], (2, 2), 1e-7, 2, energy_k))


class Tracker:
    """Measure `model`'s ΔW every `every` optimizer steps; see the module docstring.

    modules / layers: which layers (module types such as "q_proj", layer indices), default all.
    metrics: the metric names logged as scalars (default: normalized entropy, effective rank, top-1
    energy, ‖ΔW‖_F; None: all); the trajectory file always holds every metric and the singular values.
    full=True: full fine-tuning, ΔW = W − W0 against a copy of the selected 2-D weights taken now,
    refused when it would exceed max_copy_bytes (default 1 GiB).
    n_ref / energy_k: as in `analyze`. label: the run's name in the trajectory file.
    """

    def __init__(self, model: nn.Module, every: int = DEFAULT_EVERY, *, modules: Optional[Sequence[str]] = None,
                 layers=None, metrics: Optional[Sequence[str]] = DEFAULT_METRICS, per_layer: bool = False,
                 out=None, full: bool = False, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES, n_ref="shape",
                 energy_k: Sequence[int] = M.DEFAULT_TOP_K, log: Optional[Callable[[dict, int], None]] = None,
                 histograms=None, label: Optional[str] = None):
        from ..analysis import AnalysisSettings, check_ks, check_n_ref
        from ..distributed import is_main
        from ..selection import select

        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise DeltaspecError(f"every={every!r}: expected a positive number of optimizer steps")
        why = unsupported_sharding(model)
        if why:
            raise DeltaspecError(f"cannot track spectra: {why}; deltaspec tracks single-device and DDP "
                                 "(or DeepSpeed ZeRO-1/2) training, where every rank holds whole weights")
        self.every, self.per_layer, self.out, self.log, self.histograms = every, per_layer, out, log, histograms
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.settings = AnalysisSettings(str(device), "float32", False, check_ks(energy_k, "energy_k"), check_n_ref(n_ref))
        known = metric_names(self.settings.energy_k)
        self.metrics = known if metrics is None else list(metrics)
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise DeltaspecError(f"metrics={unknown}: unknown; available: {', '.join(known)}")
        self.main = is_main()
        self.snapshot = None
        if full:
            self.snapshot = FullSnapshot(model, modules, layers, max_copy_bytes, copy=self.main)
            self.layers = self.snapshot.layers()
        else:
            found = adapter_layers(model)
            if not found:
                raise DeltaspecError(f"no adapter layers found in the model ({FOUND}); for full fine-tuning "
                                     "use full=True with modules=[...]")
            self.layers = select(found, modules, layers, where="model")
        self.count, self.history, self.last = 0, [], None
        self.label = label or (str(out) if out else "live")
        if self.out and self.main:
            record.start(self.out, {"run": self.label, "every": every, "modules": module_types(self.layers),
                                    "method": "full" if full else sorted({u.meta["variant"] for u in self.layers}),
                                    "settings": self._settings_dict()})

    def _settings_dict(self) -> dict:
        s = self.settings
        return {"dtype": s.dtype, "device": s.device, "n_ref": s.n_ref, "energy_k": list(s.energy_k), "vectors": False,
                "svd_top_k": None}

    def step(self, step: Optional[int] = None) -> Optional[dict]:
        """Call after each optimizer step (or give the global step). Returns the scalars at a tracked
        step on rank 0, else None."""
        self.count = self.count + 1 if step is None else int(step)
        if self.count % self.every or not self.main:
            return None
        return self.record(self.count)

    def record(self, step: int) -> dict:
        """Measure now as step `step`, whatever `every` says (e.g. the final step); rank 0 only."""
        if not self.main or (self.history and self.history[-1][0] == step):
            return self.history[-1][1] if self.history and self.main else {}
        result = self.measure()
        scalars = self.scalars(result)
        self.history.append((step, scalars))
        self.last = result
        if self.out:
            record.append(self.out, step, result.to_dict())
        if self.log is not None:
            self.log(scalars, step)
        if self.histograms is not None:
            for mod in result.modules():
                sig = [float(x) for r in result.layers if r.module == mod for x in r.singular_values]
                self.histograms.add_histogram(f"spectra/{mod}/singular_values", torch.tensor(sig), step)
        return scalars

    @torch.no_grad()
    def measure(self):
        """The AnalysisResult of the model as it is now (what `analyze` gives on a checkpoint of it)."""
        from ..analysis import analyze_layers
        from ..results import AnalysisResult

        results = analyze_layers(self.layers, self.settings)
        return AnalysisResult(results, {"path": str(self.out) if self.out else "live model", "format": "live",
                                        "base": None}, self._settings_dict())

    def scalars(self, result) -> dict:
        """`spectra/<module type>/<metric>` means over layers (+ per-layer values with per_layer=True)."""
        out = {}
        for mod, agg in result.aggregates().items():
            for m in self.metrics:
                out[f"spectra/{mod}/{m}"] = agg["mean"][m]
        if self.per_layer:
            for r in result.layers:
                for m in self.metrics:
                    out[f"spectra/layer/{r.name}/{m}"] = float(r.metrics[m])
        return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}

    def close(self) -> None:
        """Stop (removes an optimizer hook installed by `track`)."""
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(model: nn.Module, every: int = DEFAULT_EVERY, optimizer: Optional[torch.optim.Optimizer] = None,
          **kw) -> Tracker:
    """Watch `model`'s spectra in a hand-written training loop.

        tracker = deltaspec.track(model, every=50, out="run/spectra_trajectory.jsonl",
                                  log=lambda scalars, step: writer.add_scalars... )
        for batch in data:
            ...; optimizer.step()
            tracker.step()                 # counts optimizer steps, measures every 50th

    or let it hook the optimizer (`optimizer.register_step_post_hook`), no call in the loop:

        with deltaspec.track(model, every=50, optimizer=opt, out="spectra.jsonl"):
            train(...)

    Keyword arguments are Tracker's (modules, metrics, per_layer, out, full, log, histograms, …).
    """
    tracker = Tracker(model, every, **kw)
    if optimizer is not None:
        tracker._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: tracker.step())
    return tracker
