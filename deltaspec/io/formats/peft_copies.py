"""PEFT `modules_to_save` copies and saved embeddings: ΔW = saved − W0 (needs the base).

- a resized vocabulary (`save_embedding_layers`, added tokens): ΔW over the rows both have; the added
  rows are counted in the layer's meta with their norms, and a warning says so;
- a module the base does not have, or whose shape changed outside the numbered blocks (a new
  `score` / classifier head): skipped with a warning naming it — the rest is analysed.
"""
from __future__ import annotations

from ...errors import ShapeMismatchError
from ...layernames import layer_index
from ...updates import Dense, LayerUpdate
from ..model.names import is_embedding, resized_vocab


def copy_layer(mod: str, key: str, ctx):
    f = ctx.f
    shape = tuple(f.shape(key))
    if len(shape) != 2:
        ctx.skipped.add("modules_to_save copies that are not 2-D weights", mod)
        return None
    if ctx.base_path is None:
        ctx.warnings.append(f"{f.path}: '{mod}' is a full copy (modules_to_save); pass base=PATH to analyse its "
                            "update, skipped")
        return None
    base = ctx.base
    bkey = base.find(mod)
    if bkey is None:
        ctx.skipped.add("full copies (modules_to_save) of modules the base does not have (a new head)", mod)
        return None
    bshape = tuple(base.shape(bkey))
    rows = None
    if bshape != shape:
        if is_embedding(mod) and shape[1] == bshape[1]:
            rows = (bshape[0], shape[0])
        elif layer_index(mod) is None:
            ctx.skipped.add("full copies (modules_to_save) whose shape differs from the base's (a new or resized "
                            "head)", f"{mod} {list(shape)} vs {list(bshape)}")
            return None
        else:
            raise ShapeMismatchError(f"'{mod}': {f.path} has a copy of shape {list(shape)} but "
                                     f"{base.source(bkey)} has '{bkey}' {list(bshape)}")
    meta = {"variant": "modules_to_save"}
    n = shape[0] if rows is None else min(rows)
    if rows is not None:
        meta.update(_resized(mod, key, rows, ctx))

    def load() -> Dense:
        return Dense(f.get(key)[:n] - base.get(bkey)[:n])

    return LayerUpdate(mod, (n, shape[1]), "dense", min(n, shape[1]), load, f.path, f.dtype(key), meta)


def _resized(mod, key, rows, ctx) -> dict:
    n_base, n_ft = rows
    meta, warning = resized_vocab(ctx.f.path, mod, n_base, n_ft, lambda: ctx.f.get(key)[n_base:])
    ctx.warnings.append(warning)
    return meta



