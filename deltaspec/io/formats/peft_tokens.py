"""PEFT trainable tokens (`trainable_token_indices` next to LoRA, or peft_type TRAINABLE_TOKENS).

The saved `trainable_tokens_delta` (n_tokens, dim) holds the *new values* of the listed embedding rows:
PEFT merges with `index_copy`, so ΔW is zero except ΔW[idx] = saved − W0[idx] (needs the base). We
analyse that (n_tokens, dim) block: it has exactly the nonzero singular values of the full (vocab, dim)
ΔW. Indices past the base's vocabulary are added tokens: counted with their norms in the layer's meta.
"""
from __future__ import annotations

import re

from ...errors import FormatError, ShapeMismatchError
from ...updates import Dense, LayerUpdate

_TOKENS_RE = re.compile(r"^(?P<mod>.+?)(?:\.token_adapter)?\.trainable_tokens_delta(?:\.[^.]+)?$")


def split_token_keys(keys: list[str], strip) -> tuple[dict[str, str], list[str]]:
    """({module: key} of trainable-token deltas, the remaining keys)."""
    found, rest = {}, []
    for key in keys:
        m = _TOKENS_RE.match(strip(key))
        if m:
            found[m["mod"]] = key
        else:
            rest.append(key)
    return found, rest


def _indices_for(mod: str, ctx) -> list[int]:
    cfg, path = ctx.cfg, ctx.cfg_path
    key = "token_indices" if ctx.peft_type == "TRAINABLE_TOKENS" else "trainable_token_indices"
    spec = cfg.get(key)
    if isinstance(spec, dict):
        hits = [v for k, v in spec.items() if isinstance(k, str) and (mod == k or mod.endswith("." + k))]
        if len(hits) != 1:
            raise FormatError(f"{path}: {key}: no entry for module '{mod}' (keys: {', '.join(map(str, spec))})")
        spec = hits[0]
    if not isinstance(spec, list) or not spec or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         and i >= 0 for i in spec):
        raise FormatError(f"{path}: {key}: expected a non-empty list of token indices ≥ 0 "
                          f"(or a dict of such lists by module), got {str(spec)[:80]}")
    if len(set(spec)) != len(spec):
        raise FormatError(f"{path}: {key}: token indices repeat")
    return spec


def token_layer(mod: str, key: str, ctx):
    """The LayerUpdate of one trainable-token delta, or None (skipped with a warning: no base)."""
    f = ctx.f
    idx = _indices_for(mod, ctx)
    shape = tuple(f.shape(key))
    if len(shape) != 2 or shape[0] != len(idx):
        raise ShapeMismatchError(f"{f.path}: '{mod}' trainable_tokens_delta {list(shape)} does not match the "
                                 f"{len(idx)} token indices in {ctx.cfg_path.name}")
    if ctx.base_path is None:
        ctx.warnings.append(f"{f.path}: '{mod}' holds trainable tokens (new values of {len(idx)} row(s)); pass "
                            "base=PATH to analyse their update, skipped")
        return None
    base = ctx.base
    bkey = base.find(mod)
    if bkey is None:
        raise FormatError(f"{ctx.base_path}: no weight for '{mod}' (trainable tokens need it); is base= the model "
                          "this adapter was trained on?")
    n_base, dim = base.shape(bkey)
    if dim != shape[1]:
        raise ShapeMismatchError(f"'{mod}': {f.path} has trainable tokens of width {shape[1]} but "
                                 f"{base.source(bkey)} has '{bkey}' {[n_base, dim]}")
    shared = [i for i, t in enumerate(idx) if t < n_base]
    meta = {"variant": "trainable_tokens", "token_rows": len(shared)}
    if len(shared) < len(idx):
        added = [i for i, t in enumerate(idx) if t >= n_base]
        norms = f.get(key)[added].double().norm(dim=1)
        meta.update(added_rows=len(added), added_row_norm_mean=float(norms.mean()),
                    added_row_norm_max=float(norms.max()))
        ctx.warnings.append(f"{f.path}: '{mod}' trains {len(added)} token(s) past the base's {n_base} rows (added "
                            f"tokens; row norms mean {norms.mean():.4g}, max {norms.max():.4g}): ΔW covers the "
                            f"{len(shared)} existing token row(s), the added ones are in the layer's meta")
    if not shared:
        return None

    def load() -> Dense:
        import torch

        rows = torch.tensor([idx[i] for i in shared])
        new = f.get(key)[shared].double()
        return Dense((new - base.get(bkey).double()[rows]).float())

    return LayerUpdate(mod, (len(shared), dim), "dense", min(len(shared), dim), load, f.path, f.dtype(key), meta)
