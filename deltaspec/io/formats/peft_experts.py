"""PEFT LoRA on parameters (`target_parameters`, PEFT ≥ 0.17 `lora.ParamWrapper`): MoE expert stacks.

For a 3-D parameter with E experts PEFT stores one pair of factors for all of them:
  lora_A (r·E, in)  expert e's A_e = lora_A[e·r:(e+1)·r]   (reshape (E, r, in))
  lora_B (out, r·E) expert e's B_e = lora_B[:, e::E]        (reshape (out, r, E), expert last)
  ΔW_e = s · B_e @ A_e, (out, in), s = α/r (α/√r with use_rslora); r and α per parameter from
  rank_pattern / alpha_pattern matched against `<module>.<parameter>`.
PEFT's `in`/`out` are the expert's real input and output sizes when transformers flags a transposed
stack (`is_transposed`), so s·B_e@A_e is (out, in) — the orientation `experts` uses for full
fine-tunes too; for Llama 4, whose experts lack the flag, PEFT's product is the stored (in, out)
slice and is transposed here (`Layout.peft_flipped`).
Several targeted parameters of one module are nested wrappers, the first registered innermost
(`experts.REGISTRATION_ORDER`); shapes are checked against that assignment, never guessed.
Layers are named as in `experts`: `….experts.3.gate_proj`, `….experts.3.up_proj`, `….experts.3.down_proj`.
"""
from __future__ import annotations

import math

from ...errors import FormatError, ShapeMismatchError
from ...updates import LayerUpdate, LowRank
from ..model.experts import FUSED, Layout, expert_names, half_rows, order_params
from ..files.validate import check_scale, match_pattern
from .unknown import refuse_parts


def targeted_params(mod: str, targets: list[str]) -> list[str]:
    """Names of the parameters of module `mod` that `target_parameters` selects (PEFT's matching:
    `<module>.<param>` equal to a target or ending with `.<target>`), in registration order."""
    names = []
    for t in targets:
        p = t.rpartition(".")[2]
        key = f"{mod}.{p}"
        if (key == t or key.endswith("." + t)) and p not in names:
            names.append(p)
    return order_params(names)


def expert_layers(mod: str, wrappers: dict, ctx, layout: Layout) -> list[LayerUpdate]:
    """Layers of module `mod` whose LoRA wrappers are `wrappers` {depth: {part: key}}."""
    f = ctx.f
    params = targeted_params(mod, ctx.target_parameters)
    if sorted(wrappers) != list(range(len(wrappers))) or len(params) != len(wrappers):
        raise FormatError(f"{f.path}: '{mod}' has {len(wrappers)} nested LoRA wrapper(s) but adapter_config.json's "
                          f"target_parameters select {len(params)} parameter(s) of it ({', '.join(params) or 'none'}); "
                          "cannot tell which wrapper adapts which parameter")
    k = len(params)
    dims = {}
    for depth, parts in wrappers.items():
        p = params[k - 1 - depth]  # innermost = first registered
        refuse_parts(f.path, f"{mod}.{p}", parts, ("lora_A", "lora_B"))
        ka, kb = parts.get("lora_A"), parts.get("lora_B")
        if ka is None or kb is None or len(f.shape(ka)) != 2 or len(f.shape(kb)) != 2:
            raise FormatError(f"{f.path}: '{mod}' ({p}): expected 2-D lora_A and lora_B, "
                              f"found {', '.join(sorted(parts))}")
        pin, pout = f.shape(ka)[1], f.shape(kb)[0]
        dims[p] = (pout, pin) if layout.peft_flipped else (pin, pout)  # the expert's (in, out)
    _check_nesting(mod, dims, f.path)
    get = ctx.cached_get  # the experts of a stack are loaded one after another: read its factors once
    layers = []
    for depth, parts in wrappers.items():
        layers += _param_layers(mod, params[k - 1 - depth], parts, ctx, layout, get)
    return layers


def _check_nesting(mod: str, dims: dict, path) -> None:
    """gate_up_proj maps hidden → 2·I and down_proj I → hidden: the nesting order must agree."""
    if "gate_up_proj" in dims and "down_proj" in dims:
        (gi, go), (di, do) = dims["gate_up_proj"], dims["down_proj"]
        if go != 2 * di or gi != do:
            raise ShapeMismatchError(f"{path}: '{mod}': the LoRA factors do not fit gate_up_proj (in {gi}, out {go}) "
                                     f"and down_proj (in {di}, out {do}) in PEFT's nesting order")


def _param_layers(mod, param, parts, ctx, layout: Layout, get) -> list[LayerUpdate]:
    f, cfg = ctx.f, ctx.cfg
    ka, kb = parts["lora_A"], parts["lora_B"]
    (rE, d_in), (d_out, rE_b) = f.shape(ka), f.shape(kb)
    flip = layout.peft_flipped
    if flip:
        d_in, d_out = d_out, d_in
    name = f"{mod}.{param}"
    r = match_pattern(ctx.rank_pattern, name, ctx.r)
    alpha = match_pattern(ctx.alpha_pattern, name, ctx.lora_alpha)
    if rE != rE_b or r <= 0 or rE % r:
        raise ShapeMismatchError(f"{f.path}: '{name}': lora_A {list(f.shape(ka))} and lora_B {list(f.shape(kb))} "
                                 f"do not hold r = {r} rows per expert (adapter_config.json r / rank_pattern)")
    n_exp = rE // r
    base_shape = ctx.base_param_shape(name)
    if base_shape is not None and (len(base_shape) != 3 or base_shape[0] != n_exp
                                   or sorted(base_shape[1:]) != sorted((d_in, d_out))):
        raise ShapeMismatchError(f"{f.path}: '{name}': {n_exp} experts of ({d_out}, {d_in}) do not fit the base's "
                                 f"{list(base_shape)}; is base= the model this adapter was trained on?")
    rs = ctx.use_rslora
    scale = check_scale(alpha / math.sqrt(r) if rs else alpha / r, ctx.cfg_path, "lora_alpha",
                        "α/√r" if rs else "α/r")
    if param in FUSED and not layout.known:
        ctx.unsplit.append(name)
    layers = []
    for lname, e, half in expert_names(name, n_exp, layout):
        shape = (d_out // 2 if half is not None else d_out, d_in)
        meta = {"variant": "rslora" if rs else "lora", "scale": scale, "r": r, "alpha": alpha, "expert": e,
                "experts": n_exp, "stack": name}
        if half is not None:
            meta["half"] = ("gate", "up")[half]

        def load(e=e, half=half) -> LowRank:
            A = get(ka)[e * r:(e + 1) * r]      # (r, PEFT's in)
            B = get(kb)[:, e::n_exp]            # (PEFT's out, r)
            L, R = (A.T, B.T) if flip else (B, A)  # ΔW_e (out, in) = s·L@R
            if half is not None:
                L = L[half_rows(d_out, half, layout)]
            return LowRank(L.contiguous(), R.contiguous(), scale)

        layers.append(LayerUpdate(lname, shape, "lowrank", min(r, *shape), load, f.path, f.dtype(ka), meta))
    return layers


def adapter_layout(cfg: dict, adapter_dir, base) -> Layout:
    """The base architecture of an adapter, from the first of: --base's config.json, a config.json in
    the adapter folder, the local Hub cache of `base_model_name_or_path` (never downloads), PEFT's
    `auto_mapping.parent_library` (`transformers.models.<type>.modeling_<type>`)."""
    from ..files import hub
    from ..files.validate import model_config

    config, path = model_config(base, adapter_dir)
    if path is not None:
        return Layout.of(config, path)
    name = cfg.get("base_model_name_or_path")
    snap = hub.local_snapshot(name) if isinstance(name, str) else None
    if snap is not None:
        config, path = model_config(snap)
        if path is not None:
            return Layout.of(config, path)
    lib = (cfg.get("auto_mapping") or {}).get("parent_library") if isinstance(cfg.get("auto_mapping"), dict) else None
    if isinstance(lib, str) and lib.startswith("transformers.models."):
        return Layout(lib.split(".")[2], "adapter_config.json auto_mapping")
    return Layout()
