"""Full fine-tuning: ΔW = W_ft − W0 for every 2-D `*.weight` tensor present in both checkpoints.

Both sides may be a model directory (single, sharded + index json, legacy `pytorch_model.bin`) or
a single `.safetensors` / `.bin` file. Tensors are matched by name; both are upcast to float32
before subtracting (bf16 − bf16 would lose most of the update), W0 one block of rows at a time, so
loading a layer holds one float32 matrix. 1-D tensors (norms, biases) are not layers. Embeddings
(see `tensors.is_embedding`) are layers only with `include_embeddings`.
"""
from __future__ import annotations

import torch

from ..errors import MissingBaseError, ShapeMismatchError
from ..updates import Dense, LayerUpdate, Updates
from .names import is_embedding, sorted_layers, summarize
from .tensors import FLOAT_DTYPES, TensorStore, check_finite, compute_dtype, open_model, upcast


def read_full(path, base=None, include_embeddings: bool = False) -> Updates:
    if base is None:
        raise MissingBaseError(f"{path}: full fine-tuning checkpoint needs the base weights: pass base=PATH")
    ft, b0 = open_model(path), open_model(base)
    warnings: list[str] = []
    pairs = _pairs(ft, b0)
    matched_ft = {k for k, _ in pairs}
    matched_b = {k for _, k in pairs}
    extra = [k for k in ft.keys() if k not in matched_ft]
    missing = [k for k in b0.keys() if k not in matched_b]
    if extra:
        warnings.append(f"{path}: {len(extra)} tensor(s) not in the base, skipped: {summarize(extra)}")
    if missing:
        warnings.append(f"{base}: {len(missing)} base tensor(s) not in the fine-tuned checkpoint: {summarize(missing)}")
    layers, skipped_embed = [], []
    for k, bk in pairs:
        s_ft, s_b = ft.shape(k), b0.shape(bk)
        if s_ft != s_b:
            raise ShapeMismatchError(f"tensor '{k}': shape {list(s_ft)} in {ft.source(k)} but {list(s_b)} in "
                                     f"{b0.source(bk)}; is the base the model this checkpoint was fine-tuned from?")
        if not k.endswith(".weight") or len(s_ft) != 2 or ft.dtype(k) not in FLOAT_DTYPES:
            continue
        name = k[: -len(".weight")]
        if is_embedding(name) and not include_embeddings:
            skipped_embed.append(name)
            continue
        layers.append(LayerUpdate(
            name=name, shape=tuple(s_ft), kind="dense", rank_bound=min(s_ft),
            loader=_dense_loader(ft, b0, k, bk), source=ft.source(k), dtype=ft.dtype(k),
            meta={"variant": "full", "base_dtype": b0.dtype(bk)}))
    return Updates(sorted_layers(layers), str(path), "full", str(base), warnings)


def _pairs(ft: TensorStore, b0: TensorStore) -> list[tuple[str, str]]:
    """(ft key, base key) pairs: same names, else names differing by one leading component
    (`transformer.h.0…` vs `h.0…`, a head model against its bare backbone)."""
    same = [(k, k) for k in ft.keys() if k in b0]
    if same:
        return same
    for variants in (lambda k: [k.partition(".")[2]], lambda k: ["model." + k, "transformer." + k]):
        out = []
        for k in ft.keys():
            c = next((c for c in variants(k) if c and c in b0), None)
            if c is not None:
                out.append((k, c))
        if out:
            return out
    return []


ROW_BLOCK = 128  # rows of W0 upcast at a time while subtracting (2 MiB at 4096 columns: small
# temporaries are served from, and returned to, the heap, instead of keeping ~50 MiB of it resident)


def _dense_loader(ft: TensorStore, b0: TensorStore, k: str, bk: str):
    def load() -> Dense:
        return Dense(subtract_upcast(ft, k, b0, bk))

    return load


def subtract_upcast(ft: TensorStore, k: str, b0: TensorStore, bk: str) -> torch.Tensor:
    """W_ft − W0 in float32 (float64 if either is stored in float64), checked finite.

    Built in place in one private matrix: W_ft upcast, then W0 (as stored, e.g. bf16) subtracted
    ROW_BLOCK rows at a time. `W_ft.float() − W0.float()` would hold three float32 matrices at once.
    """
    raw = ft.raw(k)
    w0 = b0.raw(bk)
    dtype = torch.promote_types(compute_dtype(raw.dtype), compute_dtype(w0.dtype))
    delta = raw.to(dtype)
    if delta.data_ptr() == raw.data_ptr():  # already in dtype: .to() returned the stored tensor itself
        delta = delta.clone()
    check_finite(delta, ft.source(k), k)
    for r0 in range(0, delta.shape[0], ROW_BLOCK):
        delta[r0:r0 + ROW_BLOCK].sub_(w0[r0:r0 + ROW_BLOCK].to(dtype))
    if not bool(torch.isfinite(delta.sum())):  # W0 has NaN/Inf (W_ft was checked), or W_ft − W0 overflowed
        check_finite(upcast(w0), b0.source(bk), bk)
        check_finite(delta, f"{ft.source(k)} − {b0.source(bk)}", k)
    return delta
