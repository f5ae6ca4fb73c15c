"""MultiLoRA: n parallel LoRA heads with learnable scalings, ΔW = (α/r)·Σ_i diag(s_i) B_i A_i.

Two layouts (DESIGN §2, docs/FORMATS.md), same tensors per adapted module:
`lora_A` (n, r, in), `lora_B` (n, out, r), `lora_scaling` (n,) scalar or (n, out) vector scalings.
- deltaspec's own: a PEFT-like directory, `adapter_config.json` with `"peft_type": "MULTILORA"`
  (α, fan_in_fan_out) + `adapter_model.safetensors` with PEFT-style keys.
- the MTL-LoRA repo's MultiLoRA baseline: a `torch.save`d dict (`checkpoint/final_checkpoint.pt`),
  keys `model.layers.3.self_attn.q_proj.lora_A` (maybe `module.`-prefixed), bf16; α is not stored.
r is the rank of each head (from the tensor shape); the result is a `SumOfLowRank` whose term scales
carry α/r, so the factored SVD sees [(α/r) diag(s_1) B_1 | …] @ [A_1; …].
"""
from __future__ import annotations

from pathlib import Path
from ...errors import FormatError, ShapeMismatchError
from ...updates import LayerUpdate, SumOfLowRank, Updates
from .peft import adapter_weights, parse_keys, strip_prefix
from ..model.names import is_embedding, sorted_layers, summarize
from ..files.tensors import TensorFile, TorchFile, open_file, read_json
from ..files.validate import check_scale, get_flag, get_number, number
from .unknown import owner, refuse_parts, refuse_unknown, unknown_error


def read_multilora(path, base=None, include_embeddings: bool = False) -> Updates:
    d = Path(path)
    cfg_path = d / "adapter_config.json"
    cfg = read_json(cfg_path, "adapter config (adapter_config.json)")
    alpha = get_number(cfg, "lora_alpha", cfg_path)
    fan_in_fan_out = get_flag(cfg, "fan_in_fan_out", cfg_path)
    f = open_file(adapter_weights(d), keep_open=True)
    modules, copies, other = parse_keys(f)
    read = {mod for mod, _ in modules}
    other = refuse_unknown(f.path, other, read, strip_prefix)
    for mod in [m for m in copies if owner(m, read)]:
        raise unknown_error(f.path, copies[mod], owner(mod, read), "MultiLoRA factors")
    warnings = []
    if copies or other:
        names = list(copies.values()) + other
        warnings.append(f"{f.path}: {len(names)} tensor(s) that are not MultiLoRA factors, skipped: {summarize(names)}")
    if not modules:
        raise FormatError(f"{f.path}: no MultiLoRA tensors (lora_A, lora_B, lora_scaling) among its "
                          f"{len(f.keys())} tensor(s)" + (f" ({summarize(f.keys(), 3)})" if f.keys() else ""))
    layers = [_layer(mod, parts, f, alpha, fan_in_fan_out, (cfg_path, "lora_alpha"))
              for (mod, _), parts in modules.items()]
    return _finish(layers, path, "multilora", base, warnings, include_embeddings)


def find_mtl_file(path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for cand in (p / "checkpoint" / "final_checkpoint.pt", p / "final_checkpoint.pt"):
        if cand.is_file():
            return cand
    raise FormatError(f"{p}: no final_checkpoint.pt or checkpoint/final_checkpoint.pt "
                      "(expected an MTL-LoRA MultiLoRA output directory or its .pt file)")


def read_mtl_multilora(path, base=None, include_embeddings: bool = False, lora_alpha=None) -> Updates:
    file = find_mtl_file(path)
    if lora_alpha is None:
        raise FormatError(f"{file}: MTL-LoRA MultiLoRA checkpoints do not store lora_alpha: pass lora_alpha=ALPHA")
    lora_alpha = number(lora_alpha, file, "lora_alpha")
    f = TorchFile(file)
    modules: dict[str, dict[str, str]] = {}
    ignored = []
    for key in f.keys():
        k = strip_prefix(_unwrap(key))
        mod, _, part = k.rpartition(".")
        if part == "weight" and mod.endswith((".lora_A", ".lora_B", ".lora_scaling")):
            mod, _, part = mod.rpartition(".")
        if part in ("lora_A", "lora_B", "lora_scaling"):
            modules.setdefault(mod, {})[part] = key
        elif part != "lora_scaler":  # the tunable scaler is unused by MultiLoRALinear.forward
            ignored.append(key)
    ignored = refuse_unknown(file, ignored, modules, lambda k: strip_prefix(_unwrap(k)),
                             "MultiLoRA factors")
    warnings = [f"{file}: {len(ignored)} tensor(s) that are not MultiLoRA factors, skipped: {summarize(ignored)}"] \
        if ignored else []
    if not modules:
        raise FormatError(f"{file}: no MultiLoRA tensors (lora_A, lora_B, lora_scaling) found")
    layers = [_layer(mod, parts, f, lora_alpha, False, (file, "lora_alpha")) for mod, parts in modules.items()]
    return _finish(layers, path, "mtl-multilora", base, warnings, include_embeddings)


def _unwrap(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _finish(layers, path, fmt, base, warnings, include_embeddings) -> Updates:
    kept = [u for u in layers if include_embeddings or not is_embedding(u.name)]
    if len(kept) < len(layers):
        skipped = [u.name for u in layers if u not in kept]
        warnings.append(f"{path}: {len(skipped)} embedding update(s) skipped ({summarize(skipped)}): "
                        "pass include_embeddings=True to analyse them")
    return Updates(sorted_layers(kept), str(path), fmt, str(base) if base is not None else None, warnings)


def _layer(mod: str, parts: dict, f: TensorFile, alpha: float, fan_in_fan_out: bool, alpha_from: tuple) -> LayerUpdate:
    """alpha_from: (file, key) that α came from, for the message when the scale is unusable."""
    refuse_parts(f.path, mod, parts, ("lora_A", "lora_B", "lora_scaling"), "MultiLoRA factors")
    missing = [p for p in ("lora_A", "lora_B", "lora_scaling") if p not in parts]
    if missing:
        raise FormatError(f"{f.path}: MultiLoRA module '{mod}' has no {', '.join(missing)}")
    ka, kb, ks = parts["lora_A"], parts["lora_B"], parts["lora_scaling"]
    sa, sb, ss = f.shape(ka), f.shape(kb), f.shape(ks)
    if len(sa) != 3 or len(sb) != 3 or sa[0] != sb[0] or sb[2] != sa[1]:
        raise ShapeMismatchError(f"{f.path}: MultiLoRA module '{mod}': lora_A {list(sa)} and lora_B {list(sb)} "
                                 "do not fit (expected (n, r, in) and (n, out, r))")
    n, r, d_in = sa
    d_out = sb[1]
    if tuple(ss) not in ((n,), (n, d_out), (n, 1)):
        raise ShapeMismatchError(f"{f.path}: MultiLoRA module '{mod}': lora_scaling {list(ss)} is neither ({n},) "
                                 f"nor ({n}, {d_out})")
    if r == 0:
        raise FormatError(f"{f.path}: MultiLoRA module '{mod}' has rank 0")
    c = check_scale(alpha / r, *alpha_from, "α/r")
    vector = len(ss) == 2 and ss[1] == d_out and d_out != 1
    shape = (d_in, d_out) if fan_in_fan_out else (d_out, d_in)
    meta = {"variant": "multilora", "heads": n, "r": r, "alpha": alpha, "scale": c,
            "scaling": "vector" if vector else "scalar"}
    if fan_in_fan_out:
        meta["fan_in_fan_out"] = True

    def load() -> SumOfLowRank:
        A, B, S = f.get(ka), f.get(kb), f.get(ks)  # (n, r, in), (n, out, r), (n,) | (n, out)
        terms = []
        for i in range(n):
            s = S[i] if vector else S[i].reshape(())
            if fan_in_fan_out:  # stored orientation (in, out): (diag(s) B A)ᵀ = Aᵀ (diag(s) B)ᵀ
                sB = B[i] * (s[:, None] if vector else s)
                terms.append((c, A[i].T, sB.T))
            else:
                terms.append((c * s, B[i], A[i]))
        return SumOfLowRank(terms, scalings=S)

    return LayerUpdate(mod, shape, "lowrank", min(n * r, *shape), load, f.path, f.dtype(ka), meta)
