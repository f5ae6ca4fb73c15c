"""`heads`: the per-head anatomy of every MultiLoRA layer of a checkpoint (read → batch → head_anatomy).

Layers are loaded one at a time and held per shape (d_out, d_in, n, r) until a chunk reaches a memory
budget, then solved as one batch (as spectra.py does for dense updates): at LLaMA-7B shapes a chunk is
dozens of layers, so the Python overhead per layer stays small next to reading the file.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .errors import DeltaspecError
from .head_anatomy import ZERO_TOL, anatomy, head_factors, scaling_stats
from .head_results import HeadLayer, HeadsResult
from .updates import Updates

MULTILORA_FORMATS = ("multilora", "mtl-multilora")
CHUNK_BYTES = 16 << 20  # bytes of factors held per batched call (per shape); 64 MB: no faster, +400 MB RSS
FULL = "a full model has no heads (full fine-tuning gives one dense ΔW per layer)"
LORA = "a LoRA-style adapter has one head per layer"


def not_multilora(path, what: str) -> DeltaspecError:
    return DeltaspecError(f"{path}: {what}; heads needs a MultiLoRA checkpoint (deltaspec or MTL-LoRA layout)")


def _check_format(path) -> None:
    """Before any tensor is read: a full fine-tune or a LoRA-like adapter gets a one-line explanation."""
    from .io import detect

    fmt = detect(path)
    if fmt == "full":
        raise not_multilora(path, FULL)
    if fmt not in MULTILORA_FORMATS:
        raise not_multilora(path, LORA if fmt in ("peft", "kohya", "diffusers", "lycoris")
                            else f"a {fmt} checkpoint has no MultiLoRA heads")


def heads(
    updates: Union[Updates, str, os.PathLike],
    *,
    format: str = "auto",
    lora_alpha: Optional[float] = None,
    modules: Optional[Sequence[str]] = None,
    layers: Optional[Sequence[int]] = None,
    device: str = "auto",
    dtype: str = "float32",
    zero_tol: float = ZERO_TOL,
    progress: Optional[bool] = None,
) -> HeadsResult:
    """Per-head anatomy of a MultiLoRA checkpoint: energy shares, head spectra, interference,
    effective number of heads, overlaps of the heads' column/row spaces, scalings' statistics.

    `updates`: what `deltaspec.load` returns, or a checkpoint path (deltaspec MultiLoRA dir, MTL-LoRA
    `final_checkpoint.pt` or its run dir; then `format` and `lora_alpha` are passed to load).
    zero_tol: a scaling counts as near 0 when |s| ≤ zero_tol · the layer's largest |s|.
    progress: None shows a bar on stderr only when it is a terminal.
    A LoRA or full fine-tuning input is an error (one head, or none). Metrics: docs/METRICS.md "Heads".
    """
    import torch

    from .metrics import default_rtol
    from .spectra import pick_device, pick_dtype

    dev, dt = pick_device(device), pick_dtype(dtype)
    if not (isinstance(zero_tol, (int, float)) and 0 <= zero_tol < 1):
        raise DeltaspecError(f"zero_tol={zero_tol!r}: expected a number in [0, 1)")
    if not isinstance(updates, Updates):
        from .io import load

        if format == "auto":
            _check_format(updates)
        updates = load(updates, format=format, lora_alpha=lora_alpha)
    if modules or layers is not None:
        updates = updates.select(modules, layers)
    todo = [u for u in updates if u.meta.get("variant") == "multilora"]
    if not todo:
        if updates.format in MULTILORA_FORMATS:
            raise DeltaspecError(f"{updates.path}: no MultiLoRA layers selected")
        kinds = {u.kind for u in updates}
        raise not_multilora(updates.path, FULL if kinds == {"dense"} else LORA if kinds == {"lowrank"}
                            else f"a {updates.format} checkpoint has no MultiLoRA heads")
    warnings = list(updates.warnings)
    if len(todo) < len(updates):
        from .layernames import summarize

        other = [u.name for u in updates if u not in todo]
        warnings.append(f"{updates.path}: {len(other)} layer(s) without heads skipped: {summarize(other)}")
    from .io.files.tensors import float64_reads
    from .progress import Progress

    out: list[Optional[HeadLayer]] = [None] * len(todo)
    bar = Progress(len(todo), "layers", enabled=progress)
    try:
        with float64_reads(dt == torch.float64):  # float64: factors read as float64, scalings folded exactly
            for batch in _batches(todo, lambda: bar.update(1)):
                L = torch.stack([b[1] for b in batch]).to(dev, dt)  # (b, d_out, n·r)
                R = torch.stack([b[2] for b in batch]).to(dev, dt)  # (b, n·r, d_in)
                r = batch[0][4]
                stats = anatomy(L, R, r, default_rtol((L.shape[1], R.shape[2]), torch.finfo(dt).eps))
                for j, (i, _, _, S, _) in enumerate(batch):
                    out[i] = _layer(todo[i], stats, j, S, zero_tol)
    finally:
        bar.close()
    resolved = str(dev) if device == "auto" else device
    return HeadsResult(out, {"path": updates.path, "format": updates.format},
                       {"dtype": str(dt).replace("torch.", ""), "device": resolved, "zero_tol": zero_tol}, warnings)


def _batches(todo, on_load, budget: int = None):
    """Yield lists of (index, L, R, scalings, r) of layers of one shape (d_out, d_in, n, r), loaded one at
    a time and held until their factors reach `budget` bytes (default CHUNK_BYTES)."""
    budget = CHUNK_BYTES if budget is None else budget
    pending: dict[tuple, list] = {}
    size: dict[tuple, int] = {}
    for i, u in enumerate(todo):
        update = u.load()
        L, R, r = head_factors(update)
        key = (*update.shape, len(update.terms), r)
        pending.setdefault(key, []).append((i, L, R, update.scalings, r))
        size[key] = size.get(key, 0) + (L.numel() + R.numel()) * L.element_size()
        on_load()
        if size[key] >= budget:
            size.pop(key)
            yield pending.pop(key)
    yield from pending.values()


def _layer(u, stats, j, S, zero_tol) -> HeadLayer:
    n = stats.inner.shape[1]
    mean_abs, frac = scaling_stats(S, n, zero_tol)
    return HeadLayer(
        name=u.name, module=u.module, layer=u.layer, shape=tuple(u.shape), r=int(u.meta.get("r", stats.sigma.shape[2])),
        singular_values=stats.sigma[j], inner=stats.inner[j], ranks=stats.ranks[j],
        overlap_col=stats.overlap_col[j], overlap_row=stats.overlap_row[j], cos_col=stats.cos_col[j],
        cos_row=stats.cos_row[j], mean_abs_s=mean_abs, frac_s_small=frac)

