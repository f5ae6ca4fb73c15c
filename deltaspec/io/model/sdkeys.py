"""Key patterns of Stable Diffusion LoRA files (LyCORIS, diffusers): pure string matching, no imports,
so that format detection (detect.py) stays light.
"""
from __future__ import annotations

import re

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

# ---- LyCORIS: `<name>.<part>[.weight]` ------------------------------------------------------------
KNOWN = {"lora_down", "lora_up", "lora_mid", "alpha", "dora_scale", "diff", "diff_b", "weight", "on_input", "oft_blocks",
         "rescale", "w_norm", "b_norm", "a1", "a2", "b1", "b2", "bm", "q_layer", "p_layer", "lambda_layer", *LOHA_PARTS,
         *LOKR_PARTS}
LYCORIS_ONLY = {"lora_mid", "dora_scale", "diff", "on_input", "oft_blocks", "w_norm", "a1", "lambda_layer", *LOHA_PARTS,
                *LOKR_PARTS}
_PART_RE = re.compile(r"^(?P<name>.+?)\.(?P<part>" + "|".join(sorted(KNOWN - {"weight"}, key=len, reverse=True))
                      + r")(?:\.weight)?$")


def split_key(key: str) -> tuple[str, str]:
    """`<name>.<part>[.weight]` → (name, part); `<name>.weight` → (name, "weight") (IA3's vector).
    Names are usually kohya-style (no dots), but dotted names are accepted too."""
    m = _PART_RE.match(key)
    if m:
        return m["name"], m["part"]
    if key.endswith(".weight"):
        return key[: -len(".weight")], "weight"
    return key, ""


def is_lycoris(keys) -> bool:
    return any(split_key(k)[1] in LYCORIS_ONLY for k in keys)


# ---- diffusers -----------------------------------------------------------------------------------
COMPONENT = r"(?:unet|text_encoder(?:_\d)?|transformer(?:_\d)?|prior|decoder|controlnet)"
COMP_RE = re.compile(rf"^({COMPONENT})\.")
PEFT_RE = re.compile(r"^(?P<mod>.+?)\.(?P<part>lora_embedding_A|lora_embedding_B|lora_magnitude_vector|lora_A|lora_B)"
                     r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
OLD_RE = re.compile(r"^(?P<stem>.+?)(?P<sep>_lora|\.lora_linear_layer|\.lora)\.(?P<part>down|up)\.weight$")
METADATA_KEY = "lora_adapter_metadata"


def is_diffusers(keys, metadata: dict) -> bool:
    """A diffusers LoRA file: component-prefixed PEFT keys, the old processor keys, or diffusers' metadata."""
    return any(OLD_RE.match(k) or (COMP_RE.match(k) and PEFT_RE.match(k)) for k in keys) or (
        METADATA_KEY in metadata and any(PEFT_RE.match(k) for k in keys))

def split_component(key: str) -> tuple[str | None, str]:
    m = COMP_RE.match(key)
    return (m.group(1), key[m.end():]) if m else (None, key)
