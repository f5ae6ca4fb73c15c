"""HF PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors` (or legacy `.bin`).

DESIGN §2 is the spec. Per adapted module, in the orientation of the base model's stored weight:
  LoRA            s·B@A                  s = α/r, or α/√r with use_rslora; α from alpha_pattern
  fan_in_fan_out  (s·B@A)ᵀ               GPT-2 Conv1D stores (in, out); decided by the config flag
  embedding       s·(B@A)ᵀ               lora_embedding_A (r, vocab), lora_embedding_B (dim, r)
  Conv2d          s·B.flatten(1)@A.flatten(1), analysed as (out, in·kh·kw)
  AdaLoRA         B@(A⊙E)·α/(init_r+1e-5)
  DoRA            V = W0 + s·B@A, W' = m·V/‖V‖_row, ΔW = W' − W0 (needs the base)
  modules_to_save saved copy − W0 (needs the base)
Keys are accepted with or without `base_model.model.` and with the adapter name left in
(`lora_A.default.weight`); `base_layer` copies are not updates.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from ..errors import FormatError, MissingBaseError, ShapeMismatchError
from ..updates import Dense, LayerUpdate, LowRank, Updates
from .names import is_embedding, sorted_layers, summarize
from .tensors import TensorFile, TensorStore, open_file, open_model, read_json

PREFIX = "base_model.model."
_PARTS = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_scaling", "lora_A", "lora_B", "lora_E")
_KEY_RE = re.compile(r"^(?P<mod>.+?)\.(?P<part>" + "|".join(_PARTS) + r")(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
_BASE_MODIFYING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")
SUPPORTED = ("LORA", "ADALORA")


def strip_prefix(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def parse_keys(f: TensorFile):
    """Group adapter keys by module: ({module: {part: key}}, {module: full-copy key}, other keys)."""
    modules: dict[str, dict[str, str]] = {}
    copies: dict[str, str] = {}
    other: list[str] = []
    adapters: set[str] = set()
    for key in f.keys():
        k = strip_prefix(key)
        if k.endswith(".bias") or ".base_layer." in k or ".original_module." in k or ".ranknum" in k:
            continue
        m = _KEY_RE.match(k)
        if m:
            if m["adapter"] not in (None, "weight"):
                adapters.add(m["adapter"])
            modules.setdefault(m["mod"], {})[m["part"]] = key
        elif ".modules_to_save." in k:
            mod, _, rest = k.partition(".modules_to_save.")
            adapter, _, param = rest.partition(".")
            adapters.add(adapter)
            if param == "weight":
                copies[mod] = key
        elif k.endswith(".weight"):
            copies[k[: -len(".weight")]] = key
        else:
            other.append(key)
    for mod in [m for m in copies if m in modules]:  # a base copy saved next to its own LoRA factors
        del copies[mod]
    if len(adapters) > 1:
        raise FormatError(f"{f.path}: holds several adapters ({', '.join(sorted(adapters))}); "
                          "save one adapter per directory")
    return modules, copies, other


def adapter_weights(d: Path) -> Path:
    for n in ("adapter_model.safetensors", "adapter_model.bin"):
        if (d / n).is_file():
            return d / n
    raise FormatError(f"{d}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin")


def pattern_value(patterns: Optional[dict], name: str, default):
    """PEFT ≥ 0.15: first key k (dict order) with re.match(rf"(.*\\.)?({k})$", name)."""
    for k, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({k})$", name):
            return v
    return default


class _Ctx:
    """What the per-module builders share: the adapter file, config, base (opened on first use)."""

    def __init__(self, f: TensorFile, cfg: dict, base) -> None:
        self.f, self.cfg, self.base_path = f, cfg, base
        self._base: Optional[TensorStore] = None
        self.warnings: list[str] = []

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


def read_peft(path, base=None, include_embeddings: bool = False) -> Updates:
    d = Path(path)
    cfg_path = d / "adapter_config.json"
    cfg = read_json(cfg_path, "adapter config (adapter_config.json)")
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type not in SUPPORTED:
        raise FormatError(f"{cfg_path}: peft_type {peft_type} is not supported yet "
                          "(deltaspec reads LORA (incl. rsLoRA, DoRA), ADALORA and MULTILORA adapters)")
    ctx = _Ctx(open_file(adapter_weights(d), keep_open=True), cfg, base)
    init = cfg.get("init_lora_weights")
    if (isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS)) or cfg.get("loftq_config"):
        ctx.warnings.append(f"{cfg_path}: init_lora_weights={init!r}: PiSSA/OLoRA/LoftQ-style adapters are relative "
                            "to a modified base unless converted; ΔW is reported as the plain adapter product")
    if cfg.get("lora_bias"):
        ctx.warnings.append(f"{cfg_path}: lora_bias is set: bias updates are not analysed")
    modules, copies, other = parse_keys(ctx.f)
    if other:
        ctx.warnings.append(f"{ctx.f.path}: {len(other)} tensor(s) not understood, skipped: {summarize(other)}")
    layers = [u for mod, parts in modules.items() if (u := _adapter_layer(mod, parts, ctx, peft_type)) is not None]
    layers += [u for mod, key in copies.items() if (u := _copy_layer(mod, key, ctx)) is not None]
    kept, skipped = [], []
    for u in layers:
        (kept if include_embeddings or not (is_embedding(u.name) or u.meta.get("embedding")) else skipped).append(u)
    if skipped:
        ctx.warnings.append(f"{d}: {len(skipped)} embedding update(s) skipped ({summarize([u.name for u in skipped])}): "
                            "pass include_embeddings=True to analyse them")
    return Updates(sorted_layers(kept), str(path), "peft", str(base) if base is not None else None, ctx.warnings)


def _adapter_layer(mod: str, parts: dict, ctx: _Ctx, peft_type: str) -> Optional[LayerUpdate]:
    f, cfg = ctx.f, ctx.cfg
    emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    ka, kb = (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else (parts.get("lora_A"), parts.get("lora_B"))
    if ka is None or kb is None:
        found = ", ".join(sorted(parts))
        raise FormatError(f"{f.path}: module '{mod}' has {found} but not both LoRA factors (A and B)")
    sa, sb = f.shape(ka), f.shape(kb)
    r = sa[0] if sa else 0
    if r == 0:
        ctx.warnings.append(f"{f.path}: '{mod}' has rank 0 (pruned), skipped")
        return None
    if len(sa) < 2 or len(sb) < 2 or sb[1] != r or math.prod(sb[2:]) != 1:
        raise ShapeMismatchError(f"{f.path}: '{mod}' lora_B {list(sb)} does not fit lora_A {list(sa)} "
                                 "(expected B (out, r[, 1, 1]) and A (r, in[, kh, kw]))")
    ke = parts.get("lora_E")
    adalora = ke is not None or peft_type == "ADALORA"
    alpha = float(pattern_value(cfg.get("alpha_pattern"), mod, cfg.get("lora_alpha", 8)))
    if adalora:
        if ke is None:
            raise FormatError(f"{f.path}: AdaLoRA module '{mod}' has no lora_E")
        init_r = int(cfg.get("init_r") or r)
        alpha = float(cfg.get("lora_alpha", 8))  # AdaLoRA ignores alpha_pattern
        alpha = alpha if alpha > 0 else float(init_r)
        scale, variant = alpha / (init_r + 1e-5), "adalora"
    elif cfg.get("use_rslora"):
        scale, variant = alpha / math.sqrt(r), "rslora"
    else:
        scale, variant = alpha / r, "lora"
    d_out, d_in = sb[0], math.prod(sa[1:])
    transposed = emb or (bool(cfg.get("fan_in_fan_out")) and len(sa) == 2)
    shape = (d_in, d_out) if transposed else (d_out, d_in)
    stored_shape = shape if len(sa) == 2 else (d_out, *sa[1:])
    km = parts.get("lora_magnitude_vector")
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
        return B, A

    if km is None:
        def load() -> LowRank:
            B, A = factors()
            return LowRank(A.T, B.T, scale) if transposed else LowRank(B, A, scale)

        return LayerUpdate(mod, shape, "lowrank", min(r, *shape), load, f.path, f.dtype(ka), meta)

    # DoRA: the update depends on W0 through the row norm of V = W0 + s·B@A.
    if ctx.base_path is None:
        raise MissingBaseError(f"{f.path}: DoRA adapter needs base= (the base model weights) to form "
                               f"ΔW = m·V/‖V‖ − W0 (module '{mod}')")
    if tuple(f.shape(km)) not in ((d_out,), (1, d_out), (d_out, 1)) and math.prod(f.shape(km)) != d_out:
        raise ShapeMismatchError(f"{f.path}: '{mod}' lora_magnitude_vector {list(f.shape(km))} does not match "
                                 f"the {d_out} output rows")
    bkey = ctx.base_key(mod, stored_shape, "DoRA")
    base = ctx.base
    meta["variant"] = "dora"

    def load_dora() -> Dense:
        B, A = factors()
        W0 = base.get(bkey).double()
        W0m = W0.T if transposed else W0.reshape(d_out, -1)  # (d_out, d_in)
        V = W0m + scale * (B.double() @ A.double())
        m = f.get(km).double().reshape(-1)
        delta = (m / V.norm(dim=1))[:, None] * V - W0m
        return Dense((delta.T if transposed else delta).contiguous().float())

    return LayerUpdate(mod, shape, "dense", min(shape), load_dora, f.path, f.dtype(ka), meta)


def _copy_layer(mod: str, key: str, ctx: _Ctx) -> Optional[LayerUpdate]:
    """A modules_to_save full copy: ΔW = saved − W0 (needs the base)."""
    f = ctx.f
    shape = f.shape(key)
    if len(shape) != 2:
        return None
    if ctx.base_path is None:
        ctx.warnings.append(f"{f.path}: '{mod}' is a full copy (modules_to_save); pass base= to analyse its "
                            "update, skipped")
        return None
    bkey = ctx.base_key(mod, shape, "modules_to_save")
    base = ctx.base

    def load() -> Dense:
        return Dense(f.get(key) - base.get(bkey))

    return LayerUpdate(mod, tuple(shape), "dense", min(shape), load, f.path, f.dtype(key),
                       {"variant": "modules_to_save"})
