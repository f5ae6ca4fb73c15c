"""HF PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors` (or legacy `.bin`).

DESIGN §2 is the spec. Per adapted module, in the orientation of the base model's stored weight:
  LoRA            s·B@A                  s = α/r, or α/√r with use_rslora; α from alpha_pattern
  fan_in_fan_out  (s·B@A)ᵀ               GPT-2 Conv1D stores (in, out); decided by the config flag
  embedding       s·(B@A)ᵀ               lora_embedding_A (r, vocab), lora_embedding_B (dim, r)
  Conv2d          s·B.flatten(1)@A.flatten(1), analysed as (out, in·kh·kw)
  AdaLoRA         B@(A⊙E)·α/(init_r+1e-5)
  DoRA            V = W0 + s·B@A, W' = m·V/‖V‖_row, ΔW = W' − W0 (needs the base)
  KaSA            s·B·diag(lora_diag)@A − (W0's r smallest singular components, which KaSA removes from the
                  base at init) (needs the base)
  VeLoRA, MonteCLoRA  merged by PEFT as plain LoRA: their extra per-module tensors do not enter ΔW
A tensor of an adapted module that is none of these is an error (`unknown`), never dropped.
  experts         s·B_e@A_e per expert of a 3-D parameter (`target_parameters`, see `peft_experts`)
  modules_to_save saved copy − W0 (needs the base); a resized embedding: the shared rows, the added
                  rows reported in meta; a head the base does not have (a new `score`): skipped
  trainable tokens new rows − W0[rows] (needs the base), see `peft_tokens`
Every config value used is validated (`validate`): a bad one is a one-line error naming the key.
Key layouts are in `peft_keys`.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

from ...errors import FormatError, MissingBaseError, ShapeMismatchError
from ...updates import Dense, LayerUpdate, LowRank, Updates
from ..model.experts import Layout
from ..model.names import Skipped, is_embedding, sorted_layers, summarize
from .peft_adalora import adalora_masks, pruned_layer
from .peft_copies import copy_layer
from .peft_experts import adapter_layout, expert_layers, targeted_params
from .peft_tokens import split_token_keys, token_layer
from .peft_keys import PREFIX, adapter_weights, parse_keys, strip_prefix  # noqa: F401 (re-exported)
from ..files.tensors import TensorFile, TensorStore, open_file, open_model
from .unknown import owner, refuse_parts, refuse_unknown, unknown_error
from ..files.validate import (check_scale, get_flag, get_int, get_number, get_patterns, get_str, get_str_list,
                       match_pattern, read_json)

_BASE_MODIFYING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")
# PEFT 0.21 LoRA variants whose stored factors are not ΔW = s·B@A (or whose update is no fixed weight)
_UNREAD_VARIANTS = {"use_qalora": "QALoRA (lora_A acts on pooled input groups; PEFT cannot merge it)",
                    "use_bdlora": "BD-LoRA (block-diagonal lora_A or lora_B stored as blocks)",
                    "arrow_config": "Arrow (a router over several adapters; PEFT cannot merge it)"}
# per-module tensors of LoRA variants that PEFT's merge does not use (VeLoRA, MonteCLoRA): not part of ΔW
_NOT_IN_DELTA = (".lora_velora_embed", ".lora_monteclora_sampler.")
_LORA_PARTS = ("lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
               "lora_diag")
SUPPORTED = ("LORA", "ADALORA", "TRAINABLE_TOKENS")



class _Ctx:
    """What the per-module builders share: the adapter file, the validated config, the base (opened on
    first use), and what was skipped."""

    def __init__(self, f: TensorFile, cfg: dict, cfg_path: Path, base, require_base: bool) -> None:
        self.f, self.cfg, self.cfg_path, self.base_path, self.require_base = f, cfg, cfg_path, base, require_base
        self._base: Optional[TensorStore] = None
        self.cached_get = functools.lru_cache(maxsize=4)(f.get)  # one small cache per adapter (MoE experts)
        self.warnings: list[str] = []
        self.skipped = Skipped()
        self.unsplit: list[str] = []
        self.doubled: set[str] = set()
        self.rank_mismatch: list[str] = []
        self.pruned: list[str] = []
        c, p = cfg, cfg_path
        self.peft_type = (get_str(c, "peft_type", p) or "LORA").upper()
        self.lora_alpha = get_number(c, "lora_alpha", p, 8)  # PEFT's default
        self.r = get_int(c, "r", p, 8)
        self.alpha_pattern = get_patterns(c, "alpha_pattern", p)
        self.init_r = get_int(c, "init_r", p, None) if self.peft_type == "ADALORA" else None
        # AdaLoRA: rank_pattern holds the pruning masks (per module, which of init_r ranks were kept)
        self.masks = adalora_masks(c, p, self.init_r) if self.peft_type == "ADALORA" else {}
        self.rank_pattern = {} if self.peft_type == "ADALORA" else get_patterns(c, "rank_pattern", p, "int")
        self.use_rslora = get_flag(c, "use_rslora", p)
        self.fan_in_fan_out = get_flag(c, "fan_in_fan_out", p)
        self.target_parameters = get_str_list(c, "target_parameters", p)

    @property
    def base(self) -> TensorStore:
        if self._base is None:
            self._base = open_model(self.base_path)
        return self._base

    def base_key(self, mod: str, stored_shape: tuple, why: str) -> str:
        key = self.base.find(mod)
        if key is None:
            raise FormatError(f"{self.base_path}: no weight for '{mod}' ({why} needs it); "
                              "is base= the model this adapter was trained on?")
        if tuple(self.base.shape(key)) != tuple(stored_shape):
            raise ShapeMismatchError(f"'{mod}': {self.f.path} implies weight shape {list(stored_shape)} but "
                                     f"{self.base.source(key)} has '{key}' {list(self.base.shape(key))}")
        return key

    def base_param_shape(self, name: str):
        """Shape of parameter `name` in the base (None without a base or if it has no such key)."""
        if self.base_path is None:
            return None
        key = next((k for k in (name, "model." + name, name.partition(".")[2]) if k in self.base), None)
        return tuple(self.base.shape(key)) if key else None

    def layout(self) -> Layout:
        return adapter_layout(self.cfg, self.cfg_path.parent, self.base_path)


def read_peft(path, base=None, include_embeddings: bool = False, require_base: bool = True) -> Updates:
    d = Path(path)
    cfg_path = d / "adapter_config.json"
    cfg = read_json(cfg_path, "adapter config (adapter_config.json)")
    ctx = _Ctx(open_file(adapter_weights(d), keep_open=True), cfg, cfg_path, base, require_base)
    if ctx.peft_type not in SUPPORTED:
        from .peft_tuners import TUNERS  # (it imports this module)
        raise FormatError(f"{cfg_path}: peft_type {ctx.peft_type} is not supported yet (deltaspec reads PEFT "
                          f"LORA (incl. rsLoRA, DoRA), ADALORA, {', '.join(TUNERS)}, TRAINABLE_TOKENS and "
                          "MULTILORA adapters; see docs/FORMATS.md)")
    if "peft_type" not in cfg and "lora_alpha" not in cfg:
        raise FormatError(f"{cfg_path}: has neither peft_type nor lora_alpha: not a PEFT adapter config, so the "
                          "scale α/r is unknown")
    if ctx.peft_type == "LORA" and "lora_alpha" not in cfg:
        ctx.warnings.append(f"{cfg_path}: no lora_alpha: PEFT's default 8 is used for the scale α/r")
    init = cfg.get("init_lora_weights")
    if not isinstance(init, (bool, str)) and init is not None:
        raise FormatError(f"{cfg_path}: init_lora_weights: expected true, false or a method name, got {init!r}")
    if (isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS)) or cfg.get("loftq_config"):
        ctx.warnings.append(f"{cfg_path}: init_lora_weights={init!r}: PiSSA/OLoRA/LoftQ-style adapters are relative "
                            "to a modified base unless converted; ΔW is reported as the plain adapter product"
                            + ("" if cfg.get("loftq_config") or str(init).lower().startswith("loftq") else
                               "; pass initial=DIR (the adapter saved before training) for the exact "
                               "ΔW = s(BA − B0A0) relative to the original base"))
    for key, what in _UNREAD_VARIANTS.items():
        if cfg.get(key) and ctx.peft_type == "LORA":
            raise FormatError(f"{cfg_path}: {key}: {what} is not supported: its ΔW is not s·B@A")
    if get_flag(cfg, "lora_bias", cfg_path):
        ctx.warnings.append(f"{cfg_path}: lora_bias is set: bias updates are not analysed")
    f = ctx.f
    if not f.keys():
        raise FormatError(f"{f.path}: holds no tensors (an empty adapter)")
    modules, copies, other = parse_keys(f, ctx.skipped)
    _mha_out_proj(modules, ctx)
    tokens, other = split_token_keys(other, strip_prefix)
    other = [k for k in other if not any(t in strip_prefix(k) + "." for t in _NOT_IN_DELTA)]
    read = {mod for mod, _ in modules}
    other = refuse_unknown(f.path, other, read, strip_prefix)
    for mod in [m for m in copies if owner(m, read)]:  # `<lora module>.<something>.weight`
        raise unknown_error(f.path, copies[mod], owner(mod, read))
    if other:
        ctx.warnings.append(f"{f.path}: {len(other)} tensor(s) not understood, skipped: {summarize(other)}")
    if not modules and not copies and not tokens:
        raise FormatError(f"{f.path}: no LoRA tensors (lora_A / lora_B) among its {len(f.keys())} tensor(s) "
                          f"({summarize(f.keys(), 3)})")
    kept, skipped = [], []
    for u in _module_layers(modules, ctx):
        if include_embeddings or not (is_embedding(u.name) or u.meta.get("embedding")):
            kept.append(u)
        else:
            skipped.append(u.name)
    for mod, key in copies.items():
        if is_embedding(mod) and not include_embeddings:
            skipped.append(mod)
        elif (u := copy_layer(mod, key, ctx)) is not None:
            kept.append(u)
    for mod, key in tokens.items():
        if not include_embeddings:
            skipped.append(mod)
        elif (u := token_layer(mod, key, ctx)) is not None:
            kept.append(u)
    if skipped:
        ctx.warnings.append(f"{d}: {len(skipped)} embedding update(s) skipped ({summarize(skipped)}): "
                            "pass include_embeddings=True to analyse them")
    if ctx.unsplit:
        ctx.warnings.append(f"{d}: {len(ctx.unsplit)} fused expert parameter(s) analysed whole per expert, not split "
                            f"into gate/up halves ({summarize(ctx.unsplit)}): the base architecture is unknown "
                            "(pass base= with its config.json)")
    if ctx.pruned:
        ctx.warnings.append(f"{d}: {len(ctx.pruned)} layer(s) pruned by AdaLoRA to rank 0 ({summarize(ctx.pruned)}): "
                            "ΔW = 0 there")
    if ctx.rank_mismatch:
        ctx.warnings.append(f"{cfg_path}: {len(ctx.rank_mismatch)} module(s) whose factors' rank is not the "
                            f"config's r / rank_pattern ({summarize(ctx.rank_mismatch, 3)}): α/r uses the factors' "
                            "rank; PEFT would refuse to load this adapter")
    ctx.warnings += ctx.skipped.messages(f.path)
    if not kept and skipped and not include_embeddings:  # an adapter of embeddings only (lm_head, …)
        u = read_peft(path, base, include_embeddings=True, require_base=require_base)
        u.warnings.append(f"{d}: holds embedding updates only ({summarize(skipped)}): analysed as if "
                          "include_embeddings=True")
        return u
    if not kept:
        raise FormatError(f"{d}: nothing to analyse: " + "; ".join(w.partition(": ")[2] for w in ctx.warnings))
    return Updates(sorted_layers(kept), str(path), "peft", str(base) if base is not None else None, ctx.warnings)


def _mha_out_proj(modules: dict, ctx: _Ctx) -> None:
    """LoRA on nn.MultiheadAttention: PEFT wraps the out_proj inside it (`mha.base_layer.out_proj.lora_A`),
    and its merge, which its forward also uses, adds that out_proj update twice (PEFT 0.21: explicitly,
    then through out_proj.merge()): the model computes with W0 + 2·s·BA. Named `mha.out_proj`."""
    for key in [k for k in modules if ".base_layer." in k[0]]:
        outer, _, inner = key[0].partition(".base_layer.")
        if (outer, 0) in modules and inner == "out_proj":
            name = f"{outer}.{inner}"
            modules[(name, key[1])] = modules.pop(key)
            ctx.doubled.add(name)
    if ctx.doubled:
        ctx.warnings.append(f"{ctx.cfg_path.parent}: LoRA on nn.MultiheadAttention ({summarize(sorted(ctx.doubled))}): "
                            "PEFT's merge and forward add the out_proj update twice, so ΔW = 2·s·BA there, as the "
                            "fine-tuned model computes it")


def _module_layers(modules: dict, ctx: _Ctx) -> list[LayerUpdate]:
    by_mod: dict[str, dict[int, dict]] = {}
    for (mod, depth), parts in modules.items():
        by_mod.setdefault(mod, {})[depth] = parts
    layers, layout = [], None
    for mod, wrappers in by_mod.items():
        params = targeted_params(mod, ctx.target_parameters)
        if params and params != ["weight"] or len(wrappers) > 1 or 0 not in wrappers:
            layout = layout or ctx.layout()
            layers += expert_layers(mod, wrappers, ctx, layout)
        elif (u := _adapter_layer(mod, wrappers[0], ctx)) is not None:
            layers.append(u)
    return layers


def _adapter_layer(mod: str, parts: dict, ctx: _Ctx) -> Optional[LayerUpdate]:
    f = ctx.f
    refuse_parts(f.path, mod, parts, _LORA_PARTS)
    emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    ka, kb = (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else \
        (parts.get("lora_A"), parts.get("lora_B"))
    if ka is None or kb is None:
        found = ", ".join(sorted(parts))
        raise FormatError(f"{f.path}: module '{mod}' has {found} but not both LoRA factors (A and B)")
    sa, sb = f.shape(ka), f.shape(kb)
    r = sa[0] if sa else 0
    if mod in ctx.masks and ctx.masks[mod] != r:
        raise ShapeMismatchError(f"{f.path}: AdaLoRA module '{mod}' holds {r} ranks but adapter_config.json's "
                                 f"rank_pattern keeps {ctx.masks[mod]}")
    if r == 0:
        if ctx.peft_type != "ADALORA" and "lora_E" not in parts:
            raise FormatError(f"{f.path}: LoRA module '{mod}' has rank 0")
        return pruned_layer(mod, parts, ctx)
    if len(sa) < 2 or len(sb) < 2 or sb[1] != r or math.prod(sb[2:]) != 1:
        raise ShapeMismatchError(f"{f.path}: '{mod}' lora_B {list(sb)} does not fit lora_A {list(sa)} "
                                 "(expected B (out, r[, 1, 1]) and A (r, in[, kh, kw]))")
    ke = parts.get("lora_E")
    adalora = ke is not None or ctx.peft_type == "ADALORA"
    if not adalora and r != (want := match_pattern(ctx.rank_pattern, mod, ctx.r)):
        ctx.rank_mismatch.append(f"{mod} ({r} vs {want})")
    alpha = match_pattern(ctx.alpha_pattern, mod, ctx.lora_alpha)
    if adalora:
        if ke is None:
            raise FormatError(f"{f.path}: AdaLoRA module '{mod}' has no lora_E")
        init_r = ctx.init_r or r
        alpha = ctx.lora_alpha if ctx.lora_alpha > 0 else float(init_r)  # AdaLoRA ignores alpha_pattern
        scale, variant, how = alpha / (init_r + 1e-5), "adalora", "α/(init_r + 1e-5)"
    elif ctx.use_rslora:
        scale, variant, how = alpha / math.sqrt(r), "rslora", "α/√r"
    else:
        scale, variant, how = alpha / r, "lora", "α/r"
    if mod in ctx.doubled:  # see _mha_out_proj
        scale, how = 2 * scale, f"2·{how}"
    check_scale(scale, ctx.cfg_path, "lora_alpha", how)
    d_out, d_in = sb[0], math.prod(sa[1:])
    transposed = emb or (ctx.fan_in_fan_out and len(sa) == 2)
    shape = (d_in, d_out) if transposed else (d_out, d_in)
    stored_shape = shape if len(sa) == 2 else (d_out, *sa[1:])
    km, kd = parts.get("lora_magnitude_vector"), parts.get("lora_diag")
    meta = {"variant": variant, "scale": scale, "r": r, "alpha": alpha}
    if emb:
        meta["embedding"] = True
    if transposed and not emb:
        meta["fan_in_fan_out"] = True
    if len(sa) > 2:
        meta["conv_kernel"] = "x".join(map(str, sa[2:]))

    def factors():
        A = f.get(ka).flatten(1)  # (r, d_in)
        B = f.get(kb).flatten(1)  # (d_out, r)
        if ke is not None:
            A = A * f.get(ke).reshape(-1, 1)  # A ⊙ E
        if kd is not None:
            B = B * f.get(kd).reshape(1, -1)  # B·diag(d) (KaSA)
        return B, A

    if kd is not None:
        return _kasa(mod, ctx, kd, km, factors, shape, sa, meta, emb or transposed or len(sa) > 2 or ke is not None)
    if km is None:
        def load() -> LowRank:
            B, A = factors()
            return LowRank(A.T, B.T, scale) if transposed else LowRank(B, A, scale)

        return LayerUpdate(mod, shape, "lowrank", min(r, *shape), load, f.path, f.dtype(ka), meta)

    # DoRA: the update depends on W0 through the row norm of V = W0 + s·B@A.
    meta["variant"] = "dora"
    if tuple(f.shape(km)) not in ((d_out,), (1, d_out), (d_out, 1)) and math.prod(f.shape(km)) != d_out:
        raise ShapeMismatchError(f"{f.path}: '{mod}' lora_magnitude_vector {list(f.shape(km))} does not match "
                                 f"the {d_out} output rows")
    need = (f"{f.path}: DoRA adapter needs base=PATH (the base model weights) to form "
            f"ΔW = m·V/‖V‖ − W0 (module '{mod}')")
    if ctx.base_path is None:
        return _without_base(ctx, need, mod, shape, f.dtype(ka), meta)
    bkey = ctx.base_key(mod, stored_shape, "DoRA")
    base = ctx.base

    def load_dora() -> Dense:
        B, A = factors()
        W0 = base.get(bkey).double()
        W0m = W0.T if transposed else W0.reshape(d_out, -1)  # (d_out, d_in)
        V = W0m + scale * (B.double() @ A.double())
        m = f.get(km).double().reshape(-1)
        delta = (m / V.norm(dim=1))[:, None] * V - W0m
        return Dense((delta.T if transposed else delta).contiguous().float())

    return LayerUpdate(mod, shape, "dense", min(shape), load_dora, f.path, f.dtype(ka), meta)


def _kasa(mod, ctx, kd, km, factors, shape, sa, meta, unusual) -> LayerUpdate:
    """KaSA: PEFT replaces W0 by its top (k − r) singular components at init and merges s·B·diag(d)@A
    into that, so relative to the base ΔW = s·B·diag(d)@A − (W0's r smallest singular components)."""
    f, r = ctx.f, sa[0]
    if km is not None or unusual:
        raise FormatError(f"{f.path}: '{mod}': lora_diag (KaSA) is read on plain Linear LoRA layers only")
    if tuple(f.shape(kd)) != (r,):
        raise ShapeMismatchError(f"{f.path}: '{kd}': {list(f.shape(kd))} is not one value per rank ({r})")
    meta["variant"] = "kasa"
    need = (f"{f.path}: a KaSA adapter (lora_diag) needs base=PATH: KaSA removes the base weight's {r} smallest "
            f"singular components, which are part of ΔW (module '{mod}')")
    if ctx.base_path is None:
        return _without_base(ctx, need, mod, shape, f.dtype(kd), meta)
    bkey = ctx.base_key(mod, shape, "KaSA")
    base = ctx.base

    def load() -> Dense:
        import torch
        B, A = factors()
        W0 = base.get(bkey).double()
        U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
        k = S.shape[0] - r
        dropped = (U[:, k:] * S[k:]) @ Vh[k:]
        return Dense((meta["scale"] * (B.double() @ A.double()) - dropped).float())

    return LayerUpdate(mod, shape, "dense", min(shape), load, f.path, f.dtype(kd), meta)


def _without_base(ctx, need: str, mod: str, shape, dtype, meta) -> LayerUpdate:
    """A layer whose ΔW needs W0 (DoRA, KaSA), read without a base: MissingBaseError now, or, for
    `deltaspec info` (require_base=False), the layer listed from the headers with a loader that raises."""
    if ctx.require_base:
        raise MissingBaseError(need)

    def load():
        raise MissingBaseError(need)

    return LayerUpdate(mod, shape, "dense", min(shape), load, ctx.f.path, dtype, meta)
