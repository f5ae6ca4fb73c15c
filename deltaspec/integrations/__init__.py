"""Spectra while training: watch the balance of ΔW live, in the logger you already use.

    from deltaspec.integrations import SpectraCallback          # transformers Trainer
    trainer = Trainer(..., callbacks=[SpectraCallback(every=50)])

    from deltaspec.integrations.lightning import SpectraCallback  # Lightning
    pl.Trainer(..., callbacks=[SpectraCallback(every=50)])

    tracker = deltaspec.track(model, every=50)                   # any PyTorch loop: tracker.step()

Importing this package imports neither transformers nor lightning: each callback lives in its own
module (hf.py, lightning.py), loaded on first use. docs/TRAINING.md, "Watch spectra while training".
"""
import importlib

_LAZY = {"Tracker": "tracker", "track": "tracker", "SpectraCallback": "hf", "LightningSpectraCallback": "lightning"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'deltaspec.integrations' has no attribute {name!r}")
    mod = importlib.import_module(f".{_LAZY[name]}", __name__)
    return getattr(mod, "SpectraCallback" if name == "LightningSpectraCallback" else name)


__all__ = list(_LAZY)
