"""LyCORIS files (kohya-style names, one `.safetensors`): every algorithm, exact or a one-line error.

Per module `<name>` (e.g. `lora_unet_…_to_q`, `lora_te1_…_q_proj`, `lycoris_…`; reported as stored),
with α = `<name>.alpha` (missing or 0: scale 1) and r the rank of the factors (DESIGN §2; docs/FORMATS.md):
  LoRA / LoCon  lora_down (r, in[, k]), lora_up (out, r[, 1, 1])    ΔW = (α/r) · up @ down
  LoCon Tucker  + lora_mid (r, r, kh, kw), lora_down (r, in, 1, 1)   ΔW = (α/r) · up @ (mid ×₂ down)
  LoHa          hada_w1_a/b, hada_w2_a/b [, hada_t1/t2]              ΔW = (α/r) · (W1a W1b) ⊙ (W2a W2b)
  LoKr          lokr_w1[_a/_b], lokr_w2[_a/_b][, lokr_t2]            ΔW = s · W1 ⊗ W2; s = α/r, r the rank of
                the decomposed factor (w1_b, else w2_b), s = 1 when neither is decomposed
  full          diff (the update itself; diff_b: bias, not analysed)  ΔW = diff
  + dora_scale  (with any of the above; needs --base)               ΔW = m·V/(‖V‖ + eps) − W0, V = W0 + ΔW_above,
                norm per output row for m (out, 1, …), per input column for m (1, in, …); eps of float32
  IA3           weight (n,), on_input                                ΔW = W0 ⊙ w on rows (or columns if on_input)
  Diag-OFT      oft_blocks (k, b, b), alpha, [rescale (out, 1, …)]   Q = B − Bᵀ, constrained (see _constrain),
                R = (I + Q)(I − Q)⁻¹, W' = rescale · blockdiag(R)ᵀ W0 (row blocks), ΔW = W' − W0
  BOFT          oft_blocks (m, k, b, b), as above with m butterfly stages (merge_math.lycoris_butterfly)
  GLoRA         a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in)     ΔW = (α/r) · (W0 a1 a2 + b1 b2)
IA3, OFT, BOFT, GLoRA and DoRA depend on W0: dense, need --base (a diffusers folder, see basemap.py).
LoHa / factored LoKr conv layers store the kernel flattened; given a base, it is read from the base weight
(meta conv_kernel), so that a resize writes conv-shaped LoRA factors.
`w_norm`/`b_norm` (norm-layer vectors) and biases are listed in a warning, not analysed; T-LoRA is an error.
"""
from __future__ import annotations

import math

from ...errors import FormatError, MissingBaseError, NonFiniteError, ShapeMismatchError
from ...updates import Dense, LayerUpdate, LowRank, Updates
from ..algebra import merge_math
from ..model.basemap import BaseLookup
from ..algebra.hadakron import loha_form, loha_layout, lokr_form, lokr_layout, tucker_factors
from ..model.names import is_embedding, sorted_layers, summarize
from ..model.sdkeys import KNOWN, LOHA_PARTS, LOKR_PARTS, split_key
from ..files.tensors import open_file
from .unknown import refuse_parts, refuse_unknown



def read_lycoris(path, base=None, include_embeddings: bool = False) -> Updates:
    f = open_file(path, keep_open=True)
    modules: dict[str, dict[str, str]] = {}
    other = []
    for key in f.keys():
        name, part = split_key(key)
        if part in KNOWN and name:
            modules.setdefault(name, {})[part] = key
        else:
            other.append(key)
    for name, parts in list(modules.items()):  # `<name>.weight` is IA3's vector only next to `on_input`
        if "weight" in parts and "on_input" not in parts:
            other.append(parts.pop("weight"))
        if not parts.keys() - {"alpha", "on_input", "rescale", "dora_scale"}:  # no update tensors
            other += modules.pop(name).values()
    other = refuse_unknown(path, other, modules)
    ctx = _Ctx(f, base, f.metadata.get("ss_network_module") == "networks.oft")
    layers, skipped = [], []
    for name, parts in modules.items():
        u = _layer(name, parts, ctx)
        if u is not None:
            (layers if include_embeddings or not is_embedding(name) else skipped).append(u)
    if other:
        ctx.warnings.append(f"{path}: {len(other)} tensor(s) not understood, skipped: {summarize(other)}")
    if ctx.bias:
        ctx.warnings.append(f"{path}: {len(ctx.bias)} bias update(s) not analysed: {summarize(ctx.bias)}")
    if ctx.norms:
        ctx.warnings.append(f"{path}: {len(ctx.norms)} norm-layer update(s) (w_norm/b_norm vectors) not analysed: "
                            f"{summarize(ctx.norms)}")
    if skipped:
        ctx.warnings.append(f"{path}: {len(skipped)} embedding update(s) skipped ({summarize([u.name for u in skipped])}): "
                            "pass include_embeddings=True to analyse them")
    if not layers and not skipped:
        raise FormatError(f"{path}: no LoRA/LyCORIS module with an update deltaspec can analyse")
    return Updates(sorted_layers(layers), str(path), "lycoris", str(base) if base is not None else None, ctx.warnings)


class _Ctx:
    def __init__(self, f, base, kohya_oft: bool) -> None:
        self.f, self.base_path, self.kohya_oft = f, base, kohya_oft
        self.base = BaseLookup(base, f.path) if base is not None else None
        self.warnings: list[str] = []
        self.bias: list[str] = []
        self.norms: list[str] = []

    def scalar(self, name: str, parts: dict, part: str, default=None):
        key = parts.get(part)
        if key is None:
            return default
        if math.prod(self.f.shape(key)) != 1:
            raise ShapeMismatchError(f"{self.f.path}: '{key}': expected a scalar, found shape {list(self.f.shape(key))}")
        v = float(self.f.raw(key).reshape(-1)[0])
        if not math.isfinite(v):
            raise NonFiniteError(f"{self.f.path}: '{key}': {part} is {v}")
        return v

    def need_base(self, name: str, what: str) -> BaseLookup:
        if self.base is None:
            raise MissingBaseError(f"{self.f.path}: '{name}': {what} depends on the base weights: pass base=PATH "
                                   "(the model the file was trained on, e.g. its diffusers folder)")
        return self.base


def _scale(ctx, name, parts, r):
    alpha = ctx.scalar(name, parts, "alpha", 0.0)
    scale = alpha / r if alpha and r else 1.0
    if not math.isfinite(scale):
        raise NonFiniteError(f"{ctx.f.path}: '{name}.alpha': scale α/r = {alpha}/{r} is not finite")
    return alpha, scale


def _layer(name: str, parts: dict, ctx: _Ctx):
    """The LayerUpdate of one module, or None when it holds no matrix update (noted in ctx)."""
    f = ctx.f
    found = sorted({fam for fam, ps in _FAMILIES.items() if any(p in parts for p in ps)})
    if len(found) > 1:
        raise FormatError(f"{f.path}: '{name}': tensors of several algorithms ({', '.join(found)}) in one module")
    if "diff_b" in parts:
        ctx.bias.append(parts["diff_b"])
    if len(found) == 1:  # a tensor the family does not use would be dropped from ΔW
        refuse_parts(f.path, name, parts, {*_FAMILIES[found[0]], *_EXTRAS[found[0]], "alpha", "dora_scale", "diff_b"},
                     "tensors")
    if "w_norm" in parts or "b_norm" in parts:
        ctx.norms.append(name)
        return None
    if "lambda_layer" in parts:
        raise FormatError(f"{f.path}: '{name}': T-LoRA (q_layer/p_layer/lambda_layer) is not supported: its update "
                          "depends on the diffusion timestep (a rank mask), so there is no single ΔW")
    if "oft_blocks" in parts:
        return _oft(name, parts, ctx)
    if "on_input" in parts and "weight" in parts:
        return _ia3(name, parts, ctx)
    if "a1" in parts or "b1" in parts:
        return _glora(name, parts, ctx)
    if "diff" in parts:
        stored = tuple(f.shape(parts["diff"]))
        if len(stored) < 2:
            ctx.bias.append(parts["diff"])
            return None
        shape2, kind, rank, meta = (stored[0], math.prod(stored[1:])), "dense", None, {"variant": "full"}
        build = lambda: Dense(f.get(parts["diff"]).flatten(1))  # noqa: E731
    elif any(p in parts for p in LOHA_PARTS):
        lay = loha_layout(name, parts, f)
        alpha, scale = _scale(ctx, name, parts, lay["ranks"][0])
        build = lambda: loha_form(parts, f, scale, lay["tucker"])  # noqa: E731
        shape2, stored, kind, rank = lay["shape"], lay["stored"], "lowrank", lay["ranks"][0] * lay["ranks"][1]
        meta = {"variant": "loha", "r": lay["ranks"][0], "alpha": alpha or None, "scale": scale}
    elif any(p in parts for p in LOKR_PARTS):
        lay = lokr_layout(name, parts, f)
        alpha, scale = (0.0, 1.0) if lay["full"] else _scale(ctx, name, parts, lay["r"])
        build = lambda: lokr_form(parts, f, scale)  # noqa: E731
        (a, c), (b, d) = lay["w1"], lay["w2"]
        shape2, stored, kind, rank = lay["shape"], lay["stored"], "kronecker", lay["rank"]
        meta = {"variant": "lokr", "r": lay["r"], "alpha": alpha or None, "scale": scale, "kron": f"{a}x{c}*{b}x{d}"}
    elif "lora_down" in parts or "lora_up" in parts:
        build, shape2, stored, rank, meta = _locon(name, parts, ctx)
        kind = "lowrank"
    else:
        raise FormatError(f"{f.path}: '{name}': has only {', '.join(sorted(parts))}; no update tensors")
    if "dora_scale" in parts:
        return _dora(name, parts, ctx, build, shape2, stored, meta)
    if not stored and ctx.base is not None:
        stored = _base_shape(name, shape2, ctx)
    if stored and len(stored) > 2:  # conv: the kernel, so that a resize can write conv-shaped factors
        meta.setdefault("conv_kernel", "x".join(map(str, stored[2:])))
    rank = min(rank or min(shape2), *shape2)
    return LayerUpdate(name, shape2, kind, rank, build, f.path, _dtype(f, parts), meta)


def _base_shape(name, shape2, ctx):
    """The base weight's shape, for LoHa / LoKr conv layers, whose factors store the kernel flattened
    (out, in·kh·kw); None when the base has no such weight (it is optional here)."""
    try:
        store, key = ctx.base.by_kohya_name(name, shape2, "the conv kernel")
    except FormatError:
        return None
    return tuple(store.shape(key))


_FAMILIES = {"LoRA/LoCon": ("lora_down", "lora_up", "lora_mid"), "LoHa": LOHA_PARTS, "LoKr": LOKR_PARTS,
             "full": ("diff",), "OFT": ("oft_blocks",), "IA3": ("on_input",), "GLoRA": ("a1", "a2", "b1", "b2")}


_EXTRAS = {"LoRA/LoCon": (), "LoHa": (), "LoKr": (), "full": (), "OFT": ("rescale",), "IA3": ("weight",),
           "GLoRA": ("bm",)}  # bm: refused by _glora with its own message


def _dtype(f, parts) -> str:
    return f.dtype(next(v for k, v in parts.items() if k not in ("alpha", "on_input")))


def _locon(name, parts, ctx):
    """LoRA / LoCon (+ Tucker lora_mid): (build, shape, stored shape, r, meta)."""
    f = ctx.f
    kd, ku, km = parts.get("lora_down"), parts.get("lora_up"), parts.get("lora_mid")
    if kd is None or ku is None:
        raise FormatError(f"{f.path}: '{name}': has {'lora_up' if kd is None else 'lora_down'} but no "
                          f"{'lora_down' if kd is None else 'lora_up'}")
    sd, su = f.shape(kd), f.shape(ku)
    r = sd[0] if sd else 0
    ok = len(sd) >= 2 and len(su) >= 2 and su[1] == r and math.prod(su[2:]) == 1
    kernel = tuple(sd[2:])
    if km is not None:
        sm = f.shape(km)
        ok = ok and math.prod(sd[2:]) == 1 and len(sm) >= 3 and tuple(sm[:2]) == (r, r)
        kernel = tuple(sm[2:])
    if not ok:
        raise ShapeMismatchError(f"{f.path}: '{name}': lora_up {list(su)}, lora_down {list(sd)}"
                                 + (f", lora_mid {list(f.shape(km))}" if km else "") + " do not fit (expected up "
                                 "(out, r[, 1, 1]), down (r, in[, kh, kw]), mid (r, r, kh, kw))")
    alpha, scale = _scale(ctx, name, parts, r)
    meta = {"variant": "locon_tucker" if km else "lora", "r": r, "alpha": alpha or None, "scale": scale}
    if kernel:
        meta["conv_kernel"] = "x".join(map(str, kernel))

    def build() -> LowRank:
        up = f.get(ku).flatten(1)  # (out, r)
        if km is None:
            return LowRank(up, f.get(kd).flatten(1), scale)  # down (r, in·kh·kw)
        _, R = tucker_factors(f.get(km), up.T, f.get(kd).flatten(1))  # R (r, in·kh·kw)
        return LowRank(up, R, scale)

    stored = (su[0], sd[1], *kernel) if kernel else None
    return build, (su[0], sd[1] * math.prod(kernel)), stored, r, meta


def _dense(name, parts, ctx, shape2, load, meta) -> LayerUpdate:
    return LayerUpdate(name, shape2, "dense", min(shape2), load, ctx.f.path, _dtype(ctx.f, parts), meta)


def _finish(delta, W0):
    """ΔW (computed in float64) as a float32 matrix (out, in·k)."""
    return delta.reshape(W0.shape[0], -1).float()


_EPS = {"float32": 1.1920928955078125e-07, "float16": 0.0009765625, "bfloat16": 0.0078125, "float64": 2.220446049250313e-16}


def _dora(name, parts, ctx, build, shape2, stored, meta) -> LayerUpdate:
    f, km = ctx.f, parts["dora_scale"]
    store, key = ctx.need_base(name, "DoRA (dora_scale)").by_kohya_name(name, stored or shape2, "DoRA (dora_scale)")
    w0_shape = tuple(store.shape(key))
    sm = tuple(f.shape(km))
    on_out = sm[0] == w0_shape[0] and math.prod(sm) == w0_shape[0]
    if not on_out and not (len(sm) >= 2 and sm[0] == 1 and math.prod(sm) == w0_shape[1]):
        raise ShapeMismatchError(f"{f.path}: '{km}': dora_scale {list(sm)} fits neither the output rows (out, 1, …) "
                                 f"nor the input columns (1, in, …) of the base weight {list(w0_shape)}")
    # LyCORIS adds the eps of the compute dtype to the norm: float32 in training, whatever dtype the file was
    # saved in afterwards (bf16's eps, 0.0078, moved σ by ~1 % against LyCORIS's float32 network)
    eps = _EPS["float64" if f.dtype(km) == "float64" else "float32"]

    def load() -> Dense:
        W0 = store.get(key).double()
        dW = build().materialize().double().reshape(W0.shape)
        m = f.get(km).double().reshape((-1,) + (1,) * (W0.dim() - 1) if on_out else (1, -1) + (1,) * (W0.dim() - 2))
        return Dense(_finish(merge_math.dora(W0, dW, m, eps), W0))

    return _dense(name, parts, ctx, shape2, load, {**meta, "variant": "dora_" + meta["variant"], "dora_axis":
                                                   "out" if on_out else "in"})


def _ia3(name, parts, ctx) -> LayerUpdate:
    f = ctx.f
    on_input = bool(ctx.scalar(name, parts, "on_input", 0.0))
    store, key = ctx.need_base(name, "IA3").by_kohya_name(name, None, "IA3")
    w0_shape = tuple(store.shape(key))
    n = math.prod(f.shape(parts["weight"]))
    if len(w0_shape) < 2 or n != w0_shape[1 if on_input else 0]:
        raise ShapeMismatchError(f"{f.path}: '{parts['weight']}': IA3 vector of {n} values does not match the "
                                 f"{'input' if on_input else 'output'} size of the base weight {list(w0_shape)}")

    def load() -> Dense:
        W0 = store.get(key).double()
        return Dense(_finish(merge_math.ia3(W0, f.get(parts["weight"]).double() + 1, on_input), W0))

    shape2 = (w0_shape[0], math.prod(w0_shape[1:]))
    return _dense(name, parts, ctx, shape2, load, {"variant": "ia3", "on_input": on_input})


def _constrain(Q, alpha: float, out: int, kohya: bool):
    """Norm constraint on the skew matrices, c = α·out. LyCORIS: Q ← Q·c/(‖Q‖+1e-8) when c > 0 and
    ‖Q‖+1e-8 > c. kohya OFT (`ss_network_module` networks.oft): Q ← Q·(min(‖Q‖, c)+1e-8)/(‖Q‖+1e-8)."""
    c = alpha * out
    norm = float(Q.norm())
    if kohya:
        return Q * ((min(norm, c) + 1e-8) / (norm + 1e-8))
    return Q * (c / (norm + 1e-8)) if c > 0 and norm + 1e-8 > c else Q


def _oft(name, parts, ctx) -> LayerUpdate:
    f = ctx.f
    kb = parts["oft_blocks"]
    sb = tuple(f.shape(kb))
    butterfly = len(sb) == 4
    if len(sb) not in (3, 4) or sb[-1] != sb[-2]:
        raise ShapeMismatchError(f"{f.path}: '{kb}': expected (blocks, b, b) or (stages, blocks, b, b), found {list(sb)}")
    alpha = ctx.scalar(name, parts, "alpha", 0.0)
    what = "BOFT" if butterfly else "OFT"
    store, key = ctx.need_base(name, what).by_kohya_name(name, None, what)
    w0_shape = tuple(store.shape(key))
    out = sb[-3] * sb[-1]
    if w0_shape[0] != out:
        raise ShapeMismatchError(f"{f.path}: '{kb}': {sb[-3]} blocks of {sb[-1]} rows do not cover the "
                                 f"{w0_shape[0]} output rows of the base weight {list(w0_shape)}")
    kr = parts.get("rescale")
    if kr is not None and math.prod(f.shape(kr)) != out:
        raise ShapeMismatchError(f"{f.path}: '{kr}': rescale {list(f.shape(kr))} does not match {out} output rows")

    def load() -> Dense:
        W0 = store.get(key).double()
        B = f.get(kb).double()
        Q = _constrain(B - B.transpose(-1, -2), alpha, out, ctx.kohya_oft)
        R = merge_math.cayley(Q)
        if butterfly:
            W = merge_math.lycoris_butterfly(W0, R)
        else:
            k, b = sb[0], sb[1]
            W = torch_einsum("knm,kn...->km...", R, W0.reshape(k, b, *W0.shape[1:])).reshape(W0.shape)
        if kr is not None:
            W = f.get(kr).double().reshape(-1, *[1] * (W0.dim() - 1)) * W
        return Dense(_finish(W - W0, W0))

    shape2 = (w0_shape[0], math.prod(w0_shape[1:]))
    meta = {"variant": "boft" if butterfly else ("kohya_oft" if ctx.kohya_oft else "oft"), "block": sb[-1],
            "alpha": alpha}
    return _dense(name, parts, ctx, shape2, load, meta)


def _glora(name, parts, ctx) -> LayerUpdate:
    f = ctx.f
    missing = [p for p in ("a1", "a2", "b1", "b2") if p not in parts]
    if missing or "bm" in parts:
        raise FormatError(f"{f.path}: '{name}': GLoRA " + (f"without {', '.join(missing)}" if missing else
                          "with a Tucker bm is not supported"))
    s = {p: tuple(f.shape(parts[p])) for p in ("a1", "a2", "b1", "b2")}
    r = s["a2"][0]
    store, key = ctx.need_base(name, "GLoRA").by_kohya_name(name, None, "GLoRA")
    w0 = tuple(store.shape(key))
    d_in = w0[1] if len(w0) >= 2 else -1
    ok = (s["a1"][:2] == (d_in, r) and s["a2"][:2] == (r, d_in) and s["b1"][:2] == (w0[0], r)
          and s["b2"][0] == r and math.prod(s["b2"][1:]) == math.prod(w0[1:]))
    if not ok:
        raise ShapeMismatchError(f"{f.path}: '{name}': GLoRA a1 {list(s['a1'])}, a2 {list(s['a2'])}, b1 {list(s['b1'])}, "
                                 f"b2 {list(s['b2'])} do not fit the base weight {list(w0)}")
    alpha, scale = _scale(ctx, name, parts, r)

    def load() -> Dense:
        W0 = store.get(key).double()
        a1, a2 = f.get(parts["a1"]).double().flatten(1), f.get(parts["a2"]).double().flatten(1)
        wb = f.get(parts["b1"]).double().flatten(1) @ f.get(parts["b2"]).double().flatten(1)
        wa = torch_einsum("oi...,ij->oj...", torch_einsum("oi...,ij->oj...", W0, a1), a2)  # W0·a1·a2 on the in axis
        return Dense(((wa.reshape(W0.shape[0], -1) + wb) * scale).float())

    shape2 = (w0[0], math.prod(w0[1:]))
    return _dense(name, parts, ctx, shape2, load, {"variant": "glora", "r": r, "alpha": alpha or None, "scale": scale})


def torch_einsum(eq, *xs):
    import torch

    return torch.einsum(eq, *xs)
