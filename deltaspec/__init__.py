"""deltaspec: what did fine-tuning do to the weights?

    import deltaspec as ds
    updates = ds.load("adapter/")                 # lazy, named per-layer updates (any supported format)
    result = ds.analyze(updates, device="auto")   # exact singular values + balance metrics per layer
    result.table()                                # per-layer metrics (pandas DataFrame if installed)
    ds.compare([ds.analyze("lora/"), ds.analyze("multilora/")], ["LoRA", "MultiLoRA"]).format_table()

Never imports click or matplotlib: plotting lives in `deltaspec.plots`, the CLI in `deltaspec_cli`.
"""
__version__ = "0.1.0"

from . import metrics  # noqa: E402
from .analysis import analyze  # noqa: E402
from .compare import compare  # noqa: E402  (the function; the module stays importable as deltaspec.compare)
from .errors import DeltaspecError  # noqa: E402
from .results import AnalysisResult, LayerResult  # noqa: E402
from .updates import Dense, LayerUpdate, LowRank, SumOfLowRank, Updates  # noqa: E402


def load(path, base=None, format="auto", lora_alpha=None, include_embeddings=False, initial=None) -> Updates:
    """Read a checkpoint's per-layer updates lazily; see `deltaspec.io.load`."""
    from .io import load as _load

    return _load(path, base=base, format=format, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                 initial=initial)


def detect(path) -> str:
    """The checkpoint format deltaspec would use for `path` ("full", "peft", "multilora", …)."""
    from .io import detect as _detect

    return _detect(path)


__all__ = ["load", "detect", "analyze", "compare", "metrics", "AnalysisResult", "LayerResult", "Updates", "LayerUpdate",
           "Dense", "LowRank", "SumOfLowRank", "DeltaspecError", "__version__"]
