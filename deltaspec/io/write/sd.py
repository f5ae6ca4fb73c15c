"""Writers of Stable Diffusion LoRA files: kohya (sd-scripts) and diffusers, and the name maps between
them and PEFT module names (the knowledge the readers kohya.py / diffusers.py / basemap.py use, read the
other way).

kohya file (what sd-scripts' networks.lora saves and resize_lora.py writes):
  <name>.lora_down.weight (r, in[, kh, kw]), <name>.lora_up.weight (out, r[, 1, 1]), <name>.alpha (scalar)
  ΔW = (α/r) · up.flatten(1) @ down.flatten(1); metadata ss_network_dim / ss_network_alpha ("Dynamic"
  when the ranks differ, as resize_lora.py writes), ss_network_module networks.lora.
diffusers file (what `save_lora_weights` writes, diffusers ≥ 0.33):
  <component>.<module>.lora_A.weight (r, in[, kh, kw]), ….lora_B.weight (out, r[, 1, 1]); metadata
  `lora_adapter_metadata`: JSON of each component's LoraConfig with keys `<component>.<field>` (r,
  lora_alpha, target_modules, rank_pattern, alpha_pattern with exact keys).

Names: kohya = `lora_unet_` / `lora_te_` (`lora_te1_`, `lora_te2_` for SDXL's two encoders) + the
diffusers module path with dots as underscores; text encoders in transformers 4's layout
(`lora_te_text_model_encoder_layers_0_…`, which kohya, LyCORIS and diffusers' converter expect), also
when the module names come from a transformers ≥ 5 CLIPTextModel (no `text_model.` level). That is
not reversible, so kohya names map to diffusers or PEFT names only through the base model's own
weight names (basemap.BaseLookup.module_of); without a base the conversion is refused.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

from ...errors import DeltaspecError
from ..model.sdkeys import METADATA_KEY
from .peft import LoraFactors, lora_config_fields

TE_PREFIX = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"}
UNET_PREFIX = {"unet": "lora_unet_", "transformer": "lora_unet_"}
_FLAT_CLIP = ("encoder.layers.", "embeddings.", "final_layer_norm.")
STALE = ("sshs_model_hash", "sshs_legacy_hash", "ss_network_args", "ss_network_dim", "ss_network_alpha", METADATA_KEY)


def kohya_name(name: str, components: Sequence[str]) -> str:
    """`unet.down_blocks.0.attentions.0.proj_in` → `lora_unet_down_blocks_0_attentions_0_proj_in`.

    components: every component the file covers (one text encoder → `lora_te_`, as SD 1.x files)."""
    comp, _, mod = name.partition(".")
    if comp in UNET_PREFIX:
        prefix = UNET_PREFIX[comp]
    elif comp in TE_PREFIX:
        two = sum(c.startswith("text_encoder") for c in set(components)) > 1
        prefix = TE_PREFIX[comp] if two or comp != "text_encoder" else "lora_te_"
    else:
        raise DeltaspecError(f"'{name}': no kohya prefix for the component '{comp}' (known: unet, transformer, "
                             "text_encoder, text_encoder_2, text_encoder_3)")
    if comp in TE_PREFIX and mod.startswith(_FLAT_CLIP):
        mod = "text_model." + mod  # transformers ≥ 5's CLIPTextModel: kohya names keep 4.x's text_model level
    return prefix + mod.replace(".", "_")


def renamed(layers: Sequence[LoraFactors], fn) -> list[LoraFactors]:
    """Each layer under its new name `fn(name)`; a list [(name, [(start, stop), …]), …] instead splits the
    layer's rows among several modules (Flux's fused qkv → to_q, to_k, to_v): each gets those rows of B and
    its own copy of A, so that ΔW of the parts stacked is ΔW of the layer, exactly."""
    import torch

    out = []
    for f in layers:
        new = fn(f.name)
        if isinstance(new, str):
            out.append(LoraFactors(new, f.A, f.B, f.alpha, f.embedding))
            continue
        for name, ranges in new:
            B = torch.cat([f.B[a:b] for a, b in ranges])
            out.append(LoraFactors(name, f.A.clone(), B.contiguous(), f.alpha, f.embedding))
    return out


def _tensors(layers, dtype):
    for f in layers:
        if f.embedding:
            raise DeltaspecError(f"{f.name}: an embedding LoRA has no kohya / diffusers file layout; leave out "
                                 "--include-embeddings or write --to peft")
        r = f.rank
        if r < 1 or f.B.shape[1] != r:
            raise DeltaspecError(f"{f.name}: down {list(f.A.shape)} and up {list(f.B.shape)} are not a LoRA")
        cast = lambda t: t.detach().to("cpu", dtype if dtype is not None else t.dtype).contiguous()  # noqa: E731
        yield f, cast(f.A), cast(f.B)


def write_kohya(path, layers: Sequence[LoraFactors], metadata: Optional[dict] = None, *, dtype=None,
                comment: str = "") -> Path:
    """One kohya `.safetensors` file at `path`; `metadata` (the source's) is kept, its rank fields updated
    and stale hashes / LyCORIS network arguments dropped."""
    import torch
    from safetensors.torch import save_file

    tensors, ranks, alphas = {}, set(), set()
    for f, A, B in _tensors(layers, dtype):
        tensors[f"{f.name}.lora_down.weight"] = A
        tensors[f"{f.name}.lora_up.weight"] = B
        tensors[f"{f.name}.alpha"] = torch.tensor(float(f.alpha), dtype=A.dtype)
        ranks.add(f.rank)
        alphas.add(float(f.alpha))
    meta = {k: str(v) for k, v in (metadata or {}).items() if k not in STALE}
    meta["ss_network_module"] = "networks.lora"
    meta["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    meta["ss_network_alpha"] = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    if comment:
        meta["ss_training_comment"] = comment + ("; " + meta["ss_training_comment"] if meta.get("ss_training_comment")
                                                 else "")
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def write_diffusers(path, layers: Sequence[LoraFactors], *, dtype=None) -> Path:
    """One diffusers LoRA `.safetensors` file; layer names are `<component>.<module>`."""
    from safetensors.torch import save_file

    tensors, by_comp = {}, {}
    for f, A, B in _tensors(layers, dtype):
        comp, _, mod = f.name.partition(".")
        if not mod:
            raise DeltaspecError(f"'{f.name}': a diffusers layer name needs a component prefix (unet., …)")
        tensors[f"{f.name}.lora_A.weight"] = A
        tensors[f"{f.name}.lora_B.weight"] = B
        by_comp.setdefault(comp, ({}, {}))
        by_comp[comp][0][mod], by_comp[comp][1][mod] = f.rank, float(f.alpha)
    meta = {}
    for comp, (ranks, alphas) in by_comp.items():
        fields = lora_config_fields(ranks, alphas)
        meta.update({f"{comp}.{k}": v for k, v in fields.items()})
        meta.update({f"{comp}.lora_dropout": 0.0, f"{comp}.bias": "none", f"{comp}.init_lora_weights": True})
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=1, sort_keys=True)})
    return Path(path)


_COMP_RE = re.compile(r"^(unet|transformer|text_encoder(?:_\d)?)\.")


def target_names(names: Sequence[str], fmt: str, to: str, path: str, component: Optional[str] = None,
                 base=None, known: Optional[dict] = None) -> dict:
    """{input layer name: output layer name} for writing layers read as `fmt` in format `to`, or a
    one-line DeltaspecError when the names cannot be expressed there.

    fmt: kohya / lycoris (kohya names), diffusers (`<component>.<module>`), or a model's module names
    (peft, full, multilora, …). component: which pipeline component a model's module names belong to
    (needed to write them as kohya or diffusers names). base: the base model (pipeline folder,
    component folder or file), whose weight names turn kohya names into module names. known: {name:
    {"kohya": …, "diffusers": … or None}} for layers read from single-file SD / SDXL / Flux checkpoints
    (model/sdsingle.py), which know both."""
    if known:
        return _known_names(names, to, path, known)
    if fmt in ("kohya", "lycoris") and to == "kohya":
        return {n: n for n in names}
    if fmt in ("kohya", "lycoris"):
        if base is None:
            raise DeltaspecError(f"{path}: kohya names (lora_unet_…, dots turned into underscores) map to {to} module "
                                 "names only through the base model's: pass --base (the diffusers pipeline folder, "
                                 "or the component's folder), or write --to kohya")
        from ..model.basemap import BaseLookup

        look = BaseLookup(base, path)
        full = {}
        for n in names:
            comp, mod = look.module_of(n)
            comp = comp or component
            if comp is None and to == "diffusers":
                raise DeltaspecError(f"{path}: '{n}' names no pipeline component; say which with --component unet "
                                     "(or text_encoder, …)")
            full[n] = f"{comp}.{mod}" if comp else mod
        if to == "peft" and not any(_COMP_RE.match(v) for v in full.values()):
            return full  # `lycoris_` names: one model's modules, no component
    elif fmt == "diffusers":
        full = {n: n for n in names}
    else:
        if to == "peft":
            return {n: n for n in names}
        if not component:
            raise DeltaspecError(f"{path}: {fmt} layer names are a model's module names; say which pipeline "
                                 f"component they belong to with --component unet (or text_encoder, …) to write "
                                 f"--to {to}")
        full = {n: f"{component}.{n}" for n in names}
    bad = [n for n in full.values() if not _COMP_RE.match(n)]
    if bad:
        raise DeltaspecError(f"{path}: '{bad[0]}' has no pipeline component prefix (unet., text_encoder., …)")
    if to == "diffusers":
        return full
    if to == "kohya":
        comps = sorted({n.partition(".")[0] for n in full.values()})
        return {n: kohya_name(v, comps) for n, v in full.items()}
    comps = sorted({n.partition(".")[0] for n in full.values()})
    if len(comps) > 1:
        raise DeltaspecError(f"{path}: layers of {len(comps)} components ({', '.join(comps)}): a PEFT adapter "
                             "holds one model; write --to diffusers or --to kohya")
    return {n: v.partition(".")[2] for n, v in full.items()}


def _known_names(names, to: str, path: str, known: dict) -> dict:
    if to == "kohya":
        return {n: known[n]["kohya"] for n in names}
    from ..model.sdsingle import split_rows

    missing = [n for n in names if not known[n]["diffusers"] and not known[n].get("split")]
    if missing:
        raise DeltaspecError(f"{path}: '{missing[0]}' has no diffusers module; write --to kohya")
    full = {}
    for n in names:
        k = known[n]
        if k["diffusers"]:
            full[n] = k["diffusers"]
        else:
            parts, rule = k["split"]
            full[n] = list(zip(parts, split_rows(rule, *k["shape"])))
    comps = sorted({(v if isinstance(v, str) else v[0][0]).partition(".")[0] for v in full.values()})
    if to == "diffusers":
        return full
    if len(comps) > 1:
        raise DeltaspecError(f"{path}: layers of {len(comps)} components ({', '.join(comps)}): a PEFT adapter holds "
                             "one model; pass --component (one of them), or write --to kohya or --to diffusers")
    strip = lambda v: v.partition(".")[2]  # noqa: E731
    return {n: strip(v) if isinstance(v, str) else [(strip(a), r) for a, r in v] for n, v in full.items()}
