"""Stable Diffusion LoRA files (kohya-ss / sd-scripts): one `.safetensors` with, per module,
`<name>.lora_down.weight` (r, in[, kh, kw]), `<name>.lora_up.weight` (out, r[, 1, 1]) and
`<name>.alpha` (scalar; missing or 0 means scale 1):  ΔW = (α/r)·up.flatten(1) @ down.flatten(1).

Names (`lora_unet_…`, `lora_te_…`) have dots replaced by underscores, which is not reversible:
they are reported as stored. LyCORIS variants (LoHa, LoKr, Tucker `lora_mid`, DoRA `dora_scale`, …)
are read by `lycoris.py`; forced here with --type kohya they are a FormatError, never guessed.
"""
from __future__ import annotations

import math
import re

from ...errors import FormatError, ShapeMismatchError
from ...updates import LayerUpdate, LowRank, Updates
from ..model.names import is_embedding, sorted_layers, summarize
from ..files.tensors import SafetensorsFile
from ..files.validate import check_scale
from .unknown import refuse_unknown

_UNSUPPORTED = {"hada_w1_a": "LoHa", "lokr_w1": "LoKr", "lokr_w1_a": "LoKr", "lora_mid": "LoCon Tucker (lora_mid)",
                "dora_scale": "DoRA (dora_scale)", "oft_blocks": "OFT", "oft_diag": "OFT", "diff": "full diff"}

_KEY_RE = re.compile(r"^(?P<name>.+)\.(?P<part>lora_down|lora_up|alpha|" + "|".join(_UNSUPPORTED) + r")(?:\.weight)?$")


def read_kohya(path, base=None, include_embeddings: bool = False) -> Updates:
    f = SafetensorsFile(path, keep_open=True)
    modules: dict[str, dict[str, str]] = {}
    other = []
    for key in f.keys():
        m = _KEY_RE.match(key)
        head, part = (m["name"], m["part"]) if m else (key, "")
        if part in _UNSUPPORTED:
            raise FormatError(f"{path}: {_UNSUPPORTED[part]} tensors (e.g. '{key}') are LyCORIS, not plain kohya "
                              "LoRA: read the file with --type lycoris (or auto)")
        if part in ("lora_down", "lora_up", "alpha"):
            modules.setdefault(head, {})[part] = key
        else:
            other.append(key)
    if not modules:
        raise FormatError(f"{path}: no lora_down / lora_up tensors: not a kohya LoRA file")
    other = refuse_unknown(path, other, modules)
    warnings = [f"{path}: {len(other)} tensor(s) not understood, skipped: {summarize(other)}"] if other else []
    if _is_dylora(f.metadata):
        warnings.append(f"{path}: a DyLoRA file (its metadata says so): trained with randomly truncated ranks, read "
                        "as a plain LoRA at full rank with α/r, as LoRA loaders apply it (LyCORIS's own DyLoRA "
                        "module scales by α/(blocks + 1) instead)")
    layers, skipped = [], []
    for name, parts in modules.items():
        u = _layer(name, parts, f)
        (layers if include_embeddings or not is_embedding(name) else skipped).append(u)
    if skipped:
        warnings.append(f"{path}: {len(skipped)} embedding update(s) skipped ({summarize([u.name for u in skipped])}): "
                        "pass include_embeddings=True to analyse them")
    return Updates(sorted_layers(layers), str(path), "kohya", str(base) if base is not None else None, warnings)


def _is_dylora(metadata: dict) -> bool:
    """kohya's networks.dylora, or LyCORIS's algo=dylora in the training arguments sd-scripts stores."""
    args = str(metadata.get("ss_network_args", "")).replace(" ", "").lower()
    return "dylora" in str(metadata.get("ss_network_module", "")).lower() or '"algo":"dylora"' in args


def _layer(name: str, parts: dict, f: SafetensorsFile) -> LayerUpdate:
    kd, ku, kal = parts.get("lora_down"), parts.get("lora_up"), parts.get("alpha")
    if kd is None or ku is None:
        raise FormatError(f"{f.path}: module '{name}' has {'lora_up' if kd is None else 'lora_down'} "
                          f"but no {'lora_down' if kd is None else 'lora_up'}")
    sd, su = f.shape(kd), f.shape(ku)
    if len(sd) < 2 or len(su) < 2 or su[1] != sd[0] or math.prod(su[2:]) != 1:
        raise ShapeMismatchError(f"{f.path}: '{name}' lora_up {list(su)} does not fit lora_down {list(sd)} "
                                 "(expected up (out, r[, 1, 1]) and down (r, in[, kh, kw]))")
    r = sd[0]
    alpha = f.scalar(kal) if kal is not None and math.prod(f.shape(kal)) >= 1 else 0.0
    if not math.isfinite(alpha):
        raise FormatError(f"{f.path}: {kal}: alpha is {alpha}, not a finite number")
    scale = check_scale(alpha / r, f.path, kal, "α/r") if alpha else 1.0
    shape = (su[0], math.prod(sd[1:]))
    meta = {"variant": "lora", "r": r, "alpha": alpha or None, "scale": scale}
    if len(sd) > 2:
        meta["conv_kernel"] = "x".join(map(str, sd[2:]))

    def load() -> LowRank:
        return LowRank(f.get(ku).flatten(1), f.get(kd).flatten(1), scale)  # up (out, r), down (r, in·kh·kw)

    return LayerUpdate(name, shape, "lowrank", min(r, *shape), load, f.path, f.dtype(kd), meta)
