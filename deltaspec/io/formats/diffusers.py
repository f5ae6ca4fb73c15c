"""diffusers LoRA files (`pytorch_lora_weights.safetensors` / `.bin`), named by diffusers module names.

Two layouts, `<c>` a pipeline component (`unet`, `text_encoder`, `text_encoder_2`, `transformer`, …):
- PEFT-style (diffusers ≥ 0.25; SD 1.5, SDXL, SD3, Flux, …): `<c>.<module>.lora_A.weight` (r, in[, kh, kw]),
  `<c>.<module>.lora_B.weight` (out, r[, 1, 1]), optionally `…lora_magnitude_vector` (DoRA, needs --base).
  α, r, rank/alpha patterns and rsLoRA come from the safetensors metadata key `lora_adapter_metadata`
  (JSON; keys `<c>.lora_alpha`, `<c>.r`, … from a pipeline, or the bare LoraConfig from a model's
  `save_lora_adapter`); per-module `<c>.<module>.alpha` tensors when present; otherwise scale 1
  (diffusers' convention for files without alphas: lora_alpha = r).
  ΔW = s · B @ A, s = α/r (α/√r with use_rslora); DoRA: ΔW = m·V/‖V‖_row − W0, V = W0 + s·B@A.
- attention-processor layout (diffusers ≤ 0.24, `save_attn_procs`): `…attn1.processor.to_q_lora.down.weight`
  (r, in), `….up.weight` (out, r), also `to_k_lora`, `to_v_lora`, `to_out_lora` (→ `to_out.0`; text
  encoder: `q_proj`, `k_proj`, `v_proj`, `out_proj`), `<module>.lora.down.weight` and
  `<module>.lora_linear_layer.down.weight`; no prefix means the UNet. ΔW = s · up @ down, s = α/r with a
  `<stem>.alpha` tensor, else 1.
Layers are named `<c>.<module>` (e.g. `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
"""
from __future__ import annotations

import json
import math

from ...errors import FormatError, MissingBaseError, NonFiniteError, ShapeMismatchError
from ...updates import Dense, LayerUpdate, LowRank, Updates
from ..algebra import merge_math
from ..model.basemap import BaseLookup
from ..model.names import is_embedding, sorted_layers, summarize
from ..model.sdkeys import METADATA_KEY, OLD_RE, PEFT_RE, split_component
from ..files.tensors import open_file
from ..files.validate import pattern_value
from .unknown import refuse_parts, refuse_unknown

_TE_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}



def old_module(component: str | None, stem: str, sep: str) -> str:
    """The module an old-layout key belongs to: `…processor.to_q_lora` → `…to_q` (UNet) / `…q_proj` (text)."""
    stem = stem.replace(".processor.", ".").removesuffix(".processor")
    if sep != "_lora":
        return stem
    head, _, proj = stem.rpartition(".")
    text = (component or "").startswith("text_encoder") or ".self_attn" in stem
    proj = _TE_NAMES.get(proj, proj) if text else ("to_out.0" if proj == "to_out" else proj)
    return f"{head}.{proj}" if head else proj


def read_diffusers(path, base=None, include_embeddings: bool = False) -> Updates:
    f = open_file(path, keep_open=True)
    meta = _metadata(f)
    modules: dict[tuple, dict[str, str]] = {}
    alphas, other = {}, []
    for key in f.keys():
        comp, rest = split_component(key)
        if rest.endswith(".bias"):  # lora_bias: not analysed
            other.append(key)
        elif rest.endswith(".alpha"):
            alphas[(comp, rest[: -len(".alpha")])] = key
        elif (m := PEFT_RE.match(rest)) is not None:
            modules.setdefault((comp, m["mod"]), {})[m["part"]] = key
        elif (m := OLD_RE.match(rest)) is not None:
            comp = comp or "unet"
            parts = modules.setdefault((comp, old_module(comp, m["stem"], m["sep"])), {})
            parts["lora_A" if m["part"] == "down" else "lora_B"] = key
            parts["_stem"] = m["stem"] + m["sep"]
        else:
            other.append(key)
    read = {f"{c}|{m}" for c, m in modules}
    for (c, _), p in modules.items():  # old layout: keys are named by their stem (`…to_q_lora`), not the module
        if "_stem" in p:
            read |= {f"{c}|{p['_stem']}", f"None|{p['_stem']}"}
    refuse_unknown(path, [k for k in other if not k.endswith(".bias")], read,  # a bias is not part of ΔW
                   lambda k: "{}|{}".format(*split_component(k)))
    lookup = BaseLookup(base, f.path) if base is not None else None
    warnings: list[str] = []
    layers = []
    for (comp, mod), parts in modules.items():
        stem = parts.pop("_stem", None)
        ka = alphas.pop((comp, mod), None) or (alphas.pop((comp, stem), None) if stem else None)
        layers.append(_layer(f, comp, mod, parts, _component_config(meta, comp), ka, lookup))
    other += list(alphas.values())
    if other:
        warnings.append(f"{path}: {len(other)} tensor(s) not analysed (biases or unknown keys): {summarize(other)}")
    kept = [u for u in layers if include_embeddings or not (u.meta.get("embedding") or is_embedding(u.name))]
    if len(kept) < len(layers):
        skipped = [u.name for u in layers if u not in kept]
        warnings.append(f"{path}: {len(skipped)} embedding update(s) skipped ({summarize(skipped)}): "
                        "pass include_embeddings=True to analyse them")
    if not layers:
        raise FormatError(f"{path}: no diffusers LoRA tensors (lora_A/lora_B or lora.down/lora.up) found"
                          + (f"; it holds {summarize(other, 3)}" if other else ""))
    return Updates(sorted_layers(kept), str(path), "diffusers", str(base) if base is not None else None, warnings)


def _metadata(f) -> dict:
    raw = f.metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"{f.path}: metadata '{METADATA_KEY}': not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{f.path}: metadata '{METADATA_KEY}': expected a JSON object")
    return meta


def _component_config(meta: dict, comp: str | None) -> dict:
    if comp is not None:
        cfg = {k[len(comp) + 1:]: v for k, v in meta.items() if k.startswith(comp + ".")}
        if cfg:
            return cfg
    return {k: v for k, v in meta.items() if "." not in k}


def _number(f, what: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise FormatError(f"{f.path}: metadata '{METADATA_KEY}': {what}: expected a finite number, found {v!r}")
    return float(v)


def _layer(f, comp, mod, parts, cfg, kalpha, lookup) -> LayerUpdate:
    name = f"{comp}.{mod}" if comp else mod
    refuse_parts(f.path, name, parts, ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                                       "lora_magnitude_vector"))
    emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    ka, kb = (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else (parts.get("lora_A"), parts.get("lora_B"))
    if ka is None or kb is None:
        raise FormatError(f"{f.path}: '{name}': has {', '.join(sorted(parts))} but not both LoRA factors (down/A and up/B)")
    sa, sb = f.shape(ka), f.shape(kb)
    r = sa[0] if sa else 0
    if r == 0 or len(sa) < 2 or len(sb) < 2 or sb[1] != r or math.prod(sb[2:]) != 1:
        raise ShapeMismatchError(f"{f.path}: '{name}': up/B {list(sb)} does not fit down/A {list(sa)} "
                                 "(expected B (out, r[, 1, 1]) and A (r, in[, kh, kw]))")
    if kalpha is not None:
        alpha = float(f.raw(kalpha).reshape(-1)[0]) if math.prod(f.shape(kalpha)) == 1 else math.nan
        if not math.isfinite(alpha):
            raise NonFiniteError(f"{f.path}: '{kalpha}': alpha must be one finite number")
    elif "lora_alpha" in cfg:
        alpha = _number(f, "lora_alpha", pattern_value(cfg.get("alpha_pattern"), mod, cfg["lora_alpha"]))
    else:
        alpha = None
    rs = bool(cfg.get("use_rslora"))
    scale = 1.0 if not alpha else alpha / (math.sqrt(r) if rs else r)
    shape = (sb[0], math.prod(sa[1:]))
    meta = {"variant": "rslora" if rs else "lora", "r": r, "alpha": alpha, "scale": scale}
    if len(sa) > 2:
        meta["conv_kernel"] = "x".join(map(str, sa[2:]))
    if emb:
        meta["embedding"] = True
        shape = (shape[1], shape[0])

    def build() -> LowRank:
        A, B = f.get(ka).flatten(1), f.get(kb).flatten(1)  # (r, in·k), (out, r)
        return LowRank(A.T, B.T, scale) if emb else LowRank(B, A, scale)

    km = parts.get("lora_magnitude_vector")
    if km is None:
        return LayerUpdate(name, shape, "lowrank", min(r, *shape), build, f.path, f.dtype(ka), meta)
    if lookup is None:
        raise MissingBaseError(f"{f.path}: '{name}': DoRA (lora_magnitude_vector) needs base=PATH (the diffusers "
                               "pipeline folder or the component's folder)")
    if math.prod(f.shape(km)) != shape[0]:
        raise ShapeMismatchError(f"{f.path}: '{km}': {math.prod(f.shape(km))} magnitudes for {shape[0]} output rows")
    store, key = lookup.by_module(comp, mod, (sb[0], *sa[1:]), "DoRA")

    def load_dora() -> Dense:
        W0 = store.get(key).double()
        dW = build().materialize().double().reshape(W0.shape)
        m = f.get(km).double().reshape(-1, *[1] * (W0.dim() - 1))
        return Dense(merge_math.dora(W0, dW, m).reshape(shape).float())

    return LayerUpdate(name, shape, "dense", min(shape), load_dora, f.path, f.dtype(ka), {**meta, "variant": "dora"})
