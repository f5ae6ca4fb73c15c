"""Layer names: the block index, the module type, --modules matching and short name lists for messages.

Pure string work on module names (`model.layers.3.self_attn.q_proj`, diffusers' `attn1.to_out.0`,
kohya's underscored `lora_unet_…_attn1_to_q`), shared by the update forms, the readers in io/ and
the selection of layers; it imports nothing of deltaspec, so every module may depend on it.
"""
from __future__ import annotations

import re

_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")
_UNDERSCORED_LAYER_RE = re.compile(r"_(\d+)(?:_|$)")
_UNDERSCORED_TYPE_RE = re.compile(r"^.*_\d+_")


def _underscored(name: str) -> bool:
    """A kohya / LyCORIS name: the module path with its dots turned into underscores."""
    return "." not in name and "_" in name


def layer_index(name: str) -> int | None:
    """First integer component of a module name: `model.layers.3.self_attn.q_proj` → 3
    (kohya's `lora_te_text_model_encoder_layers_3_self_attn_q_proj` → 3)."""
    m = (_UNDERSCORED_LAYER_RE if _underscored(name) else _LAYER_RE).search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    """What layers are grouped and selected by: the last component of a module name
    (`model.layers.3.self_attn.q_proj` → `q_proj`), with the index of a ModuleList entry kept with
    its list (diffusers' `attn1.to_out.0` → `to_out.0`, `ff.net.2` → `net.2`). A kohya name has no
    dots to split at: its part after the last `_<index>_` (`…_transformer_blocks_0_attn1_to_q` →
    `attn1_to_q`, `…_layers_3_self_attn_q_proj` → `self_attn_q_proj`)."""
    if _underscored(name):
        return _UNDERSCORED_TYPE_RE.sub("", name)
    head, _, last = name.rpartition(".")
    return f"{head.rpartition('.')[2]}.{last}" if last.isdigit() and head else last


def module_matches(name: str, module: str, spec: str) -> bool:
    """`spec` (one --modules entry) selects the layer: its module type, or a trailing part of its name
    (`to_q` selects kohya's `…attn1_to_q`; `attn1.to_q` selects only self-attention)."""
    if spec == module:
        return True
    if _underscored(name):
        return name.endswith("_" + spec.replace(".", "_"))
    return name.endswith("." + spec)


def summarize(names: list[str], k: int | None = 5, every_index: bool = False) -> str:
    """A short list for messages: names that differ only in their layer index are said once
    (`model.layers.*.input_layernorm.weight ×4`), at most `k` entries (None: all), then how many more.
    every_index: also fold the later indices (experts), so the groups are few and all can be named."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_LAYER_INDEX.sub(".*.", n, count=0 if every_index else 1), []).append(n)
    items = [f"{pattern} ×{len(g)}" if len(g) > 1 else g[0] for pattern, g in groups.items()]
    shown = ", ".join(items[:k])
    return shown + (f", … ({len(items) - k} more)" if k is not None and len(items) > k else "")


_LAYER_INDEX = re.compile(r"\.\d+\.")
