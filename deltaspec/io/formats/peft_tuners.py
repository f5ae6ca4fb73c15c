"""PEFT adapters other than LoRA: LoHa, LoKr, VeRA, IA3, OFT, BOFT (PEFT 0.21 layouts and merges).

Per adapted module `<m>` (keys `base_model.model.<m>.<part>`; docs/FORMATS.md has every shape):
  LOHA  hada_w1_a/b, hada_w2_a/b [, hada_t1/t2]   ΔW = (α/r)·(W1a W1b) ⊙ (W2a W2b)      factored, rank ≤ r²
  LOKR  lokr_w1[_a/_b], lokr_w2[_a/_b][, lokr_t2]  ΔW = (α/r)·W1 ⊗ W2 (α, r from the config,
                                                    also when neither factor is decomposed)  Kronecker
  VERA  vera_lambda_b (out,), vera_lambda_d (r,), shared base_model.vera_A (r, ≥in), vera_B (≥out, r)
        ΔW = diag(λ_b) B[:out] diag(λ_d) A[:, :in]   factored; the layer's `in` comes from --base
  IA3   ia3_l (out, 1) / (1, in) / (1, n, 1, 1)    ΔW = W0 ⊙ (l − 1): l scales W0's input columns for
        `feedforward_modules`, its output rows otherwise                             dense, --base
  OFT   oft_R.weight (blocks, b(b−1)/2)            Q = skew(upper entries), R_i = Neumann series or
        Cayley (config use_cayley_neumann), COFT projection when `coft`, M = blockdiag(R_i) over the
        (flattened) input, W' = W0 Mᵀ, ΔW = W0 (Mᵀ − I)                              dense, --base
  BOFT  boft_R (N, D, b, b), boft_s (out, 1)        R_i = (I − S)(I + S)⁻¹, S = (B − Bᵀ)/2, M = butterfly
        product (merge_math.butterfly_matrix), W' = diag(s) W0 Mᵀ, ΔW = W' − W0      dense, --base
α and r follow `alpha_pattern` / `rank_pattern` like LoRA. `modules_to_save` copies: saved − W0 (--base).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from ...errors import FormatError, MissingBaseError, ShapeMismatchError
from ...updates import Dense, LayerUpdate, LowRank, Updates
from ..algebra import merge_math
from ..algebra.hadakron import LOHA_PARTS, LOKR_PARTS, loha_form, loha_layout, lokr_form, lokr_layout
from ..model.names import is_embedding, sorted_layers, summarize
from .peft_keys import PREFIX, adapter_weights
from ..files.tensors import open_file, open_model
from ..files.validate import pattern_value
from .unknown import refuse_unknown

PARTS = {"LOHA": LOHA_PARTS, "LOKR": LOKR_PARTS, "VERA": ("vera_lambda_b", "vera_lambda_d"), "IA3": ("ia3_l",),
         "OFT": ("oft_embedding_R", "oft_R"), "BOFT": ("boft_R", "boft_s")}
TUNERS = tuple(PARTS)
NEEDS_BASE = {"VERA": "VeRA (for each layer's input size)", "IA3": "IA3", "OFT": "OFT", "BOFT": "BOFT"}


def read_peft_tuner(path, cfg: dict, base=None, include_embeddings: bool = False) -> Updates:
    d = Path(path)
    peft_type = str(cfg.get("peft_type")).upper()
    f = open_file(adapter_weights(d), keep_open=True)
    ctx = _Ctx(f, cfg, base, peft_type, d / "adapter_config.json")
    parts_re = re.compile(r"^(?P<mod>.+?)\.(?P<part>" + "|".join(sorted(PARTS[peft_type], key=len, reverse=True))
                          + r")(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
    modules: dict[str, dict[str, str]] = {}
    copies, other, shared = {}, [], {}
    for key in f.keys():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if ".base_layer." in k or ".original_module." in k:  # copies of base weights, not updates
            continue
        if k.endswith(".bias"):
            other.append(key)
        elif peft_type == "VERA" and re.match(r"^(base_model\.)?vera_[AB](\.[^.]+)?$", key):
            shared[key.split("vera_")[1][0]] = key
        elif (m := parts_re.match(k)) is not None:
            modules.setdefault(m["mod"], {})[m["part"]] = key
        elif ".modules_to_save." in k and k.endswith(".weight"):
            copies[k.partition(".modules_to_save.")[0]] = key
        else:
            other.append(key)
    ctx.shared = shared
    strip = lambda k: k[len(PREFIX):] if k.startswith(PREFIX) else k  # noqa: E731
    refuse_unknown(f.path, [k for k in other if not k.endswith(".bias")], modules, strip)
    layers = [_BUILD[peft_type](mod, parts, ctx) for mod, parts in modules.items()]
    layers += [u for mod, key in copies.items() if (u := _copy(mod, key, ctx)) is not None]
    kept = [u for u in layers if include_embeddings or not is_embedding(u.name)]
    skipped = [u.name for u in layers if u not in kept]
    if other:
        ctx.warnings.append(f"{f.path}: {len(other)} tensor(s) not analysed (biases or unknown keys): {summarize(other)}")
    if skipped:
        ctx.warnings.append(f"{d}: {len(skipped)} embedding update(s) skipped ({summarize(skipped)}): "
                            "pass include_embeddings=True to analyse them")
    if not layers:
        raise FormatError(f"{ctx.cfg_path}: peft_type {peft_type}, but {f.path} holds no {peft_type} tensors "
                          f"({'found ' + summarize(other, 3) if other else 'it is empty'})")
    return Updates(sorted_layers(kept), str(path), "peft", str(base) if base is not None else None, ctx.warnings)


class _Ctx:
    def __init__(self, f, cfg, base, peft_type, cfg_path) -> None:
        self.f, self.cfg, self.base_path, self.peft_type, self.cfg_path = f, cfg, base, peft_type, cfg_path
        self._base = None
        self.shared: dict[str, str] = {}
        self.warnings: list[str] = []

    def number(self, key: str, mod: str, default, pattern: str | None = None) -> float:
        v = pattern_value(self.cfg.get(pattern), mod, self.cfg.get(key, default)) if pattern else self.cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FormatError(f"{self.cfg_path}: {key}: expected a finite number for '{mod}', found {v!r}")
        return float(v)

    def base_weight(self, mod: str, why: str):
        """(store, key) of the base weight of `mod`; MissingBaseError without --base."""
        if self.base_path is None:
            raise MissingBaseError(f"{self.f.path}: '{mod}': {why} needs base=PATH (the base model weights)")
        if self._base is None:
            self._base = open_model(self.base_path)
        key = self._base.find(mod)
        if key is None:
            raise FormatError(f"{self.base_path}: no weight for '{mod}' ({why} needs it); is base= the model this "
                              "adapter was trained on?")
        return self._base, key


def _meta(ctx, variant, **kw) -> dict:
    return {"variant": variant, **{k: v for k, v in kw.items() if v is not None}}


def _layer(mod, shape, kind, rank, load, ctx, parts, meta) -> LayerUpdate:
    key = next(iter(parts.values()))
    return LayerUpdate(mod, tuple(shape), kind, min(rank, *shape), load, ctx.f.path, ctx.f.dtype(key), meta)


def _loha(mod, parts, ctx) -> LayerUpdate:
    lay = loha_layout(mod, parts, ctx.f)
    r = lay["ranks"][0]
    alpha = ctx.number("alpha", mod, 8, "alpha_pattern")
    scale = alpha / r
    return _layer(mod, lay["shape"], "lowrank", r * lay["ranks"][1], lambda: loha_form(parts, ctx.f, scale, lay["tucker"]),
                  ctx, parts, _meta(ctx, "loha", r=r, alpha=alpha, scale=scale))


def _lokr(mod, parts, ctx) -> LayerUpdate:
    lay = lokr_layout(mod, parts, ctx.f)
    r = ctx.number("r", mod, 8, "rank_pattern")
    alpha = ctx.number("alpha", mod, 8, "alpha_pattern")
    if r <= 0:
        raise FormatError(f"{ctx.cfg_path}: r: must be positive for '{mod}', found {r:g}")
    scale = alpha / r
    (a, c), (b, dd) = lay["w1"], lay["w2"]
    return _layer(mod, lay["shape"], "kronecker", lay["rank"], lambda: lokr_form(parts, ctx.f, scale), ctx,
                  parts, _meta(ctx, "lokr", r=int(r), alpha=alpha, scale=scale, kron=f"{a}x{c}*{b}x{dd}"))


def _vera(mod, parts, ctx) -> LayerUpdate:
    f = ctx.f
    if "A" not in ctx.shared or "B" not in ctx.shared:
        raise FormatError(f"{f.path}: VeRA projections vera_A / vera_B were not saved (save_projection=false): PEFT "
                          "regenerates them from projection_prng_key at load time; deltaspec does not guess them")
    if "vera_lambda_b" not in parts or "vera_lambda_d" not in parts:
        raise FormatError(f"{f.path}: '{mod}': VeRA needs vera_lambda_b and vera_lambda_d, found {', '.join(parts)}")
    kA, kB = ctx.shared["A"], ctx.shared["B"]
    (r, max_in), (max_out, rB) = f.shape(kA), f.shape(kB)
    out, rd = math.prod(f.shape(parts["vera_lambda_b"])), math.prod(f.shape(parts["vera_lambda_d"]))
    store, key = ctx.base_weight(mod, NEEDS_BASE["VERA"])
    fifo = bool(ctx.cfg.get("fan_in_fan_out"))
    stored = tuple(store.shape(key))
    d_out, d_in = (stored[1], stored[0]) if fifo else (stored[0], math.prod(stored[1:]))
    if rd != r or rB != r or out != d_out or d_in > max_in or d_out > max_out:
        raise ShapeMismatchError(f"{f.path}: '{mod}': vera_A {[r, max_in]}, vera_B {[max_out, rB]}, lambda_b ({out}), "
                                 f"lambda_d ({rd}) do not fit the base weight {list(stored)}")

    def load() -> LowRank:
        B = f.get(kB)[:d_out] * f.get(parts["vera_lambda_b"]).reshape(-1, 1)  # diag(λ_b) B: (out, r)
        A = f.get(kA)[:, :d_in] * f.get(parts["vera_lambda_d"]).reshape(-1, 1)  # diag(λ_d) A: (r, in)
        return LowRank(A.T, B.T) if fifo else LowRank(B, A)

    shape = (d_in, d_out) if fifo else (d_out, d_in)
    return _layer(mod, shape, "lowrank", r, load, ctx, parts, _meta(ctx, "vera", r=r))


def _is_feedforward(cfg, mod: str) -> bool:
    ff = cfg.get("feedforward_modules") or []
    return bool(re.fullmatch(ff, mod)) if isinstance(ff, str) else any(mod.endswith(t) for t in ff)


def _dense(mod, parts, ctx, store, key, delta_fn, meta) -> LayerUpdate:
    stored = tuple(store.shape(key))
    fifo = bool(ctx.cfg.get("fan_in_fan_out")) and len(stored) == 2
    shape = stored if fifo else (stored[0], math.prod(stored[1:]))

    def load() -> Dense:
        W0 = store.get(key).double()
        return Dense(delta_fn(W0).reshape(shape).float())

    return _layer(mod, shape, "dense", min(shape), load, ctx, parts, meta)


def _ia3(mod, parts, ctx) -> LayerUpdate:
    f, kl = ctx.f, parts["ia3_l"]
    store, key = ctx.base_weight(mod, "IA3")
    stored = tuple(store.shape(key))
    ff = _is_feedforward(ctx.cfg, mod)
    fifo = bool(ctx.cfg.get("fan_in_fan_out")) and len(stored) == 2
    axis = (0 if fifo else 1) if ff else (1 if fifo else 0)  # the axis of W0 (as stored) that l scales
    n = math.prod(f.shape(kl))
    if len(stored) < 2 or n != stored[axis]:
        raise ShapeMismatchError(f"{f.path}: '{kl}': {n} IA3 scalings do not match axis {axis} of the base weight "
                                 f"{list(stored)} ({'feed-forward: input' if ff else 'output'} side)")
    if not ff and (key[: -len("weight")] + "bias") in store:
        ctx.warnings.append(f"{f.path}: '{mod}': IA3 also rescales this layer's bias; bias updates are not analysed")

    def delta(W0):
        return merge_math.ia3(W0, f.get(kl).double(), on_input=axis == 1)

    return _dense(mod, parts, ctx, store, key, delta, _meta(ctx, "ia3", feedforward=ff))


def _oft(mod, parts, ctx) -> LayerUpdate:
    f, cfg = ctx.f, ctx.cfg
    if "oft_embedding_R" in parts:
        raise FormatError(f"{f.path}: '{mod}': OFT on an embedding layer (oft_embedding_R) is not supported")
    if cfg.get("fan_in_fan_out"):
        raise FormatError(f"{ctx.cfg_path}: fan_in_fan_out: OFT on Conv1D (fan_in_fan_out) layers is not supported")
    kR = parts["oft_R"]
    nb, ne = f.shape(kR)
    b = int(round((1 + math.sqrt(1 + 8 * ne)) / 2))
    store, key = ctx.base_weight(mod, "OFT")
    stored = tuple(store.shape(key))
    d_in = math.prod(stored[1:])
    if b * (b - 1) // 2 != ne or d_in % b or (nb != 1 and nb * b != d_in) or (nb == 1 and not cfg.get("block_share")
                                                                             and b != d_in):
        raise ShapeMismatchError(f"{f.path}: '{kR}': {nb} blocks of {ne} entries do not fit the input size {d_in} "
                                 f"of the base weight {list(stored)}")
    neumann = cfg.get("use_cayley_neumann", False)
    terms = int(cfg.get("num_cayley_neumann_terms", 5))

    def delta(W0):
        vec = f.get(kR).double()
        Q = merge_math.skew_from_upper(vec, b)
        if cfg.get("coft"):
            Q = _coft_project(Q, float(cfg.get("eps", 6e-5)))
        R = merge_math.neumann(Q, terms) if neumann else merge_math.cayley(-Q)
        M = merge_math.block_diag(R, d_in // b if R.shape[0] == 1 else None)
        W = W0.reshape(W0.shape[0], -1)
        return W @ M.T - W

    return _dense(mod, parts, ctx, store, key, delta, _meta(ctx, "oft", block=b, neumann=bool(neumann)))


def _coft_project(Q, eps: float):
    """PEFT's COFT projection: blocks with ‖Q_i‖_F > eps/√n are scaled back to norm eps/√n."""
    eps = eps / math.sqrt(Q.shape[0])
    norm = Q.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    return Q.where(norm <= eps, eps * Q / norm)


def _boft(mod, parts, ctx) -> LayerUpdate:
    f = ctx.f
    if "boft_R" not in parts or "boft_s" not in parts:
        raise FormatError(f"{f.path}: '{mod}': BOFT needs boft_R and boft_s, found {', '.join(parts)}")
    kR, ks = parts["boft_R"], parts["boft_s"]
    sR = tuple(f.shape(kR))
    store, key = ctx.base_weight(mod, "BOFT")
    stored = tuple(store.shape(key))
    d_in = math.prod(stored[1:])
    if len(sR) != 4 or sR[2] != sR[3] or sR[1] * sR[2] != d_in or math.prod(f.shape(ks)) != stored[0]:
        raise ShapeMismatchError(f"{f.path}: '{mod}': boft_R {list(sR)} and boft_s {list(f.shape(ks))} do not fit "
                                 f"the base weight {list(stored)}")

    def delta(W0):
        B = f.get(kR).double()
        R = merge_math.cayley(-0.5 * (B - B.transpose(-1, -2)))
        M = merge_math.butterfly_matrix(R)
        W = W0.reshape(W0.shape[0], -1)
        return f.get(ks).double().reshape(-1, 1) * (W @ M.T) - W

    return _dense(mod, parts, ctx, store, key, delta, _meta(ctx, "boft", block=sR[2], stages=sR[0]))


def _copy(mod, key, ctx):
    f = ctx.f
    if ctx.base_path is None:
        ctx.warnings.append(f"{f.path}: '{mod}' is a full copy (modules_to_save); pass base=PATH to analyse its update, "
                            "skipped")
        return None
    store, bkey = ctx.base_weight(mod, "modules_to_save")
    if tuple(store.shape(bkey)) != tuple(f.shape(key)) or len(f.shape(key)) < 2:
        raise ShapeMismatchError(f"{f.path}: '{mod}': saved copy {list(f.shape(key))} does not match the base weight "
                                 f"{list(store.shape(bkey))}")
    shape = f.shape(key)

    def load() -> Dense:
        return Dense((f.get(key).double() - store.get(bkey).double()).reshape(shape[0], -1).float())

    return _layer(mod, (shape[0], math.prod(shape[1:])), "dense", min(shape), load, ctx, {"w": key},
                  {"variant": "modules_to_save"})


_BUILD = {"LOHA": _loha, "LOKR": _lokr, "VERA": _vera, "IA3": _ia3, "OFT": _oft, "BOFT": _boft}
