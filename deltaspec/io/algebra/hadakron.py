"""LoHa and LoKr tensors → exact update forms; the tensor layout is shared by LyCORIS files and PEFT.

LoHa  ΔW = s · (W1a W1b) ⊙ (W2a W2b)          hada_w1_a (out, r), hada_w1_b (r, in·k), same for w2
      Tucker conv (hada_t1/t2 (r, r, kh, kw), hada_w*_a (r, out), hada_w*_b (r, in)):
      W_i = w_iaᵀ · T_i with T_i[a, (q, h, w)] = Σ_b t_i[a, b, h, w] · w_ib[b, q]
      → one factored LowRank of rank ≤ r1·r2 by the face-splitting product (updates.hadamard_lowrank).
LoKr  ΔW = s · (W1 ⊗ W2)                       W1 = lokr_w1 (a, c) or lokr_w1_a (a, r) @ lokr_w1_b (r, c);
      W2 = lokr_w2 (b, d[, kh, kw]) or lokr_w2_a (b, r) @ lokr_w2_b (r, d·k), or Tucker
      lokr_t2 (r, r, kh, kw), lokr_w2_a (r, b), lokr_w2_b (r, d) as above → a Kronecker form.
Conv weights are analysed as (out, in·kh·kw), the flattening of the stored (out, in, kh, kw).
The scale s is the caller's (it differs between LyCORIS and PEFT).
"""
from __future__ import annotations

import math

from ...errors import FormatError, ShapeMismatchError
from ...updates import Dense, Kronecker, LowRank, hadamard_lowrank
from ..model.sdkeys import LOHA_PARTS, LOKR_PARTS



def _bad(f, name, msg):
    return ShapeMismatchError(f"{f.path}: '{name}': {msg}")


def _need(parts, f, name, keys, what):
    missing = [k for k in keys if k not in parts]
    if missing:
        raise FormatError(f"{f.path}: '{name}': {what} has {', '.join(sorted(parts))} but no {', '.join(missing)}")


def loha_layout(name: str, parts: dict, f) -> dict:
    """Check shapes; {shape (out, in·k), stored (out, in, *k) or None, ranks (r1, r2), tucker}."""
    _need(parts, f, name, LOHA_PARTS[:4], "LoHa")
    s = {p: tuple(f.shape(parts[p])) for p in LOHA_PARTS if p in parts}
    tucker = "hada_t1" in parts or "hada_t2" in parts
    if tucker:
        _need(parts, f, name, ("hada_t1", "hada_t2"), "LoHa Tucker")
        (r1, out), (_, d_in) = s["hada_w1_a"], s["hada_w1_b"]
        kernel = s["hada_t1"][2:]
        ok = all(len(s[p]) == 2 for p in LOHA_PARTS[:4]) and len(s["hada_t1"]) >= 3
        ok = ok and s["hada_w1_b"][0] == r1 and s["hada_t1"][:2] == (r1, r1)
        r2 = s["hada_w2_a"][0] if ok else 0
        ok = ok and s["hada_w2_a"][1] == out and s["hada_w2_b"] == (r2, d_in) and s["hada_t2"] == (r2, r2, *kernel)
        if not ok:
            raise _bad(f, name, "LoHa Tucker shapes do not fit: expected hada_t (r, r, kh, kw), hada_w_a (r, out), "
                       f"hada_w_b (r, in); found {_fmt(s)}")
        return {"shape": (out, d_in * math.prod(kernel)), "stored": (out, d_in, *kernel), "ranks": (r1, r2),
                "tucker": True}
    ok = all(len(s[p]) == 2 for p in LOHA_PARTS[:4])
    if ok:
        (out, r1), (_, n), (_, r2) = s["hada_w1_a"], s["hada_w1_b"], s["hada_w2_a"]
        ok = s["hada_w1_b"][0] == r1 and s["hada_w2_a"][0] == out and s["hada_w2_b"] == (r2, n)
    if not ok:
        raise _bad(f, name, f"LoHa shapes do not fit: expected hada_w_a (out, r), hada_w_b (r, in); found {_fmt(s)}")
    return {"shape": (out, n), "stored": None, "ranks": (r1, r2), "tucker": False}


def loha_form(parts: dict, f, scale: float, tucker: bool) -> LowRank:
    g = {p: f.get(k) for p, k in parts.items() if p in LOHA_PARTS}
    if not tucker:
        return hadamard_lowrank(g["hada_w1_a"], g["hada_w1_b"], g["hada_w2_a"], g["hada_w2_b"], scale)
    L1, R1 = tucker_factors(g["hada_t1"], g["hada_w1_a"], g["hada_w1_b"])
    L2, R2 = tucker_factors(g["hada_t2"], g["hada_w2_a"], g["hada_w2_b"])
    return hadamard_lowrank(L1, R1, L2, R2, scale)


def tucker_factors(t, wa, wb):
    """Tucker (t (r, r', *k), wa (r, out), wb (r', in)) → (L (out, r), R (r, in·k)) with W = L @ R:
    W[p, (q, …)] = Σ_ij t[i, j, …] wa[i, p] wb[j, q]."""
    import torch

    R = torch.einsum("ij...,jq->iq...", t, wb)
    return wa.T, R.reshape(R.shape[0], -1)


def lokr_layout(name: str, parts: dict, f) -> dict:
    """Check shapes; {shape, stored, w1 (a, c), w2 (b, d·k), r (inner rank of a decomposed factor or None),
    full (neither factor decomposed), rank (bound on rank ΔW)}."""
    s = {p: tuple(f.shape(parts[p])) for p in LOKR_PARTS if p in parts}
    if "lokr_w1" in s:
        w1, r1 = s["lokr_w1"], None
        ok1 = len(w1) == 2
    else:
        _need(parts, f, name, ("lokr_w1_a", "lokr_w1_b"), "LoKr")
        wa, wb = s["lokr_w1_a"], s["lokr_w1_b"]
        ok1 = len(wa) == 2 and len(wb) == 2 and wa[1] == wb[0]
        r1, w1 = (wa[1], (wa[0], wb[1])) if ok1 else (0, (0, 0))
    kernel: tuple = ()
    if "lokr_w2" in s:
        w2s, r2 = s["lokr_w2"], None
        ok2 = len(w2s) >= 2
        kernel = w2s[2:]
        w2 = (w2s[0], math.prod(w2s[1:]) if ok2 else 0)
        d = w2s[1] if ok2 else 0
    elif "lokr_t2" in s:
        _need(parts, f, name, ("lokr_w2_a", "lokr_w2_b"), "LoKr Tucker")
        t, wa, wb = s["lokr_t2"], s["lokr_w2_a"], s["lokr_w2_b"]
        r2 = wa[0] if len(wa) == 2 else 0
        ok2 = len(wa) == 2 and len(wb) == 2 and len(t) >= 3 and t[:2] == (r2, wb[0])
        kernel, d = t[2:], wb[1] if len(wb) == 2 else 0
        w2 = (wa[1] if ok2 else 0, d * math.prod(kernel))
    else:
        _need(parts, f, name, ("lokr_w2_a", "lokr_w2_b"), "LoKr")
        wa, wb = s["lokr_w2_a"], s["lokr_w2_b"]
        ok2 = len(wa) == 2 and len(wb) == 2 and wa[1] == wb[0]
        r2, w2, d = (wa[1], (wa[0], wb[1]), None) if ok2 else (0, (0, 0), None)
    if not (ok1 and ok2):
        raise _bad(f, name, "LoKr shapes do not fit: expected lokr_w1 (a, c) or lokr_w1_a (a, r) + lokr_w1_b (r, c), "
                   "and lokr_w2 (b, d[, kh, kw]) or lokr_w2_a (b, r) + lokr_w2_b (r, d·k) or lokr_t2 (r, r, kh, kw) + "
                   f"lokr_w2_a (r, b) + lokr_w2_b (r, d); found {_fmt(s)}")
    shape = (w1[0] * w2[0], w1[1] * w2[1])
    stored = (shape[0], w1[1] * d, *kernel) if kernel and d else None
    rank = min(r1 or min(w1), *w1) * min(r2 or min(w2), *w2)  # rank(W1 ⊗ W2) = rank W1 · rank W2
    return {"shape": shape, "stored": stored, "w1": w1, "w2": w2, "r": r1 if r1 is not None else r2,
            "full": r1 is None and r2 is None, "rank": rank}


def lokr_form(parts: dict, f, scale: float) -> Kronecker:
    if "lokr_w1" in parts:
        W1 = Dense(f.get(parts["lokr_w1"]))
    else:
        W1 = LowRank(f.get(parts["lokr_w1_a"]), f.get(parts["lokr_w1_b"]))
    if "lokr_w2" in parts:
        W2 = Dense(f.get(parts["lokr_w2"]).flatten(1))
    elif "lokr_t2" in parts:
        W2 = LowRank(*tucker_factors(f.get(parts["lokr_t2"]), f.get(parts["lokr_w2_a"]), f.get(parts["lokr_w2_b"])))
    else:
        W2 = LowRank(f.get(parts["lokr_w2_a"]), f.get(parts["lokr_w2_b"]).flatten(1))
    return Kronecker(W1, W2, scale)


def _fmt(shapes: dict) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
