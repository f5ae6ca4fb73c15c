"""deltaspec: what did fine-tuning do to the weights?

    import deltaspec as ds
    updates = ds.load("adapter/")                 # lazy, named per-layer updates (any supported format)
    result = ds.analyze(updates, device="auto")   # exact singular values + balance metrics per layer
    result.table()                                # per-layer metrics (pandas DataFrame if installed)
    ds.compare([ds.analyze("lora/"), ds.analyze("multilora/")], ["LoRA", "MultiLoRA"]).format_table()
    tracker = ds.track(model, every=50)           # spectra while training (deltaspec.integrations)

`import deltaspec` is cheap: the public names below are imported on first use (module `__getattr__`),
so reading headers (`ds.detect`, `deltaspec info`) never imports torch. Never imports click or
matplotlib: plotting lives in `deltaspec.plots`, the CLI in `deltaspec_cli`.
"""
import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (submodule, attribute); None means the submodule itself
_LAZY = {
    "analyze": ("analysis", "analyze"),
    "compare": ("compare", "compare"),
    "heads": ("head_analysis", "heads"),  # per-head anatomy of MultiLoRA
    "HeadsResult": ("head_results", "HeadsResult"),  # the function; the module stays importable as deltaspec.compare
    "metrics": ("metrics", None),
    "AnalysisResult": ("results", "AnalysisResult"),
    "LayerResult": ("results", "LayerResult"),
    "DeltaspecError": ("errors", "DeltaspecError"),
    "Dense": ("updates", "Dense"),
    "LayerUpdate": ("updates", "LayerUpdate"),
    "LowRank": ("updates", "LowRank"),
    "SumOfLowRank": ("updates", "SumOfLowRank"),
    "Updates": ("updates", "Updates"),
    "track": ("integrations.tracker", "track"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'deltaspec' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    object.__setattr__(sys.modules[__name__], name, value)  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the submodule `deltaspec.compare` must not replace the function `ds.compare`."""

    def __setattr__(self, name, value):
        if name == "compare" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load(path, base=None, format="auto", lora_alpha=None, include_embeddings=False, initial=None):
    """Read a checkpoint's per-layer updates lazily (an `Updates`); see `deltaspec.io.load`."""
    from .io import load as _load

    return _load(path, base=base, format=format, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                 initial=initial)


def detect(path) -> str:
    """The checkpoint format deltaspec would use for `path` ("full", "peft", "multilora", …)."""
    from .io import detect as _detect

    return _detect(path)


__all__ = ["load", "detect", "analyze", "compare", "heads", "HeadsResult", "track", "metrics", "AnalysisResult",
           "LayerResult", "Updates", "LayerUpdate", "Dense", "LowRank", "SumOfLowRank", "DeltaspecError", "__version__"]
