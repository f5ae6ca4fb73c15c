"""Quantized checkpoints: FP8 block-scaled weights are dequantized exactly, every other layout refused.

FP8 block scaling (DeepSeek-V3, Qwen3-FP8; transformers' "fp8" quant_method): a weight `X.weight`
stored as F8_E4M3 (out, in) comes with `X.weight_scale_inv` (⌈out/b0⌉, ⌈in/b1⌉) float32, and
config.json's `quantization_config.weight_block_size` = [b0, b1] (null: one scale per tensor).
Dequantized, W[i, j] = fp8[i, j] · scale_inv[i // b0, j // b1]. The product of an FP8 value
(4 significant bits) and a float32 scale is rounded once to float32 — the float32 nearest to the
exact real product, as the float64 reference in the tests checks bit for bit.

Anything else quantized (bitsandbytes 4/8-bit, GPTQ/AWQ packed integers, compressed-tensors, MXFP4
blocks, FP8 with a multiplicative `weight_scale`, …) would give numbers that mean nothing: a one-line
FormatError naming the layout, found from config.json's quantization_config or from tensor names.
"""
from __future__ import annotations

import math

from ...errors import FormatError, ShapeMismatchError
from .validate import integer

# tensor-name endings that only quantized layouts use → the layout's name
_SIGNATURES = (
    (".qweight", "GPTQ/AWQ packed integer weights (qweight)"),
    (".qzeros", "GPTQ/AWQ packed integer weights (qzeros)"),
    (".g_idx", "GPTQ packed integer weights (g_idx)"),
    (".absmax", "bitsandbytes 4-bit (absmax)"),
    (".quant_map", "bitsandbytes 4-bit (quant_map)"),
    (".quant_state.bitsandbytes__nf4", "bitsandbytes 4-bit NF4"),
    (".quant_state.bitsandbytes__fp4", "bitsandbytes 4-bit FP4"),
    (".SCB", "bitsandbytes 8-bit (SCB)"),
    (".weight_format", "bitsandbytes 8-bit"),
    (".weight_packed", "compressed-tensors packed weights (weight_packed)"),
    (".weight_zero_point", "compressed-tensors (weight_zero_point)"),
    (".weight_global_scale", "compressed-tensors NVFP4 (weight_global_scale)"),
    ("_blocks", "MXFP4 (…_blocks + …_scales)"),
    (".weight_scale", "FP8/INT8 with a multiplicative weight_scale (compressed-tensors/fbgemm style)"),
)
_FP8 = ("float8_e4m3fn", "float8_e5m2")
_INT = ("int8", "uint8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float4_e2m1fn_x2")


def plan(keys: list[str], dtype, shape, config: dict, config_path, where) -> dict[str, tuple[str, tuple]]:
    """{FP8 weight key: (its weight_scale_inv key, block (b0, b1) or None for one scale)} for a model's
    tensors; FormatError for a quantized layout that cannot be dequantized. `dtype`/`shape` are the
    store's lookups by key; `where` names the checkpoint in messages."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    method = None
    if qc is not None:
        if not isinstance(qc, dict):
            raise FormatError(f"{config_path}: quantization_config: expected an object")
        method = qc.get("quant_method")
        method = method.lower() if isinstance(method, str) else method
        if method is None and (qc.get("load_in_4bit") or qc.get("load_in_8bit")):
            method = "bitsandbytes"  # old bitsandbytes configs carry no quant_method
        if method not in (None, "fp8"):
            what = method
            if method == "bitsandbytes":
                bits = "4-bit" if qc.get("load_in_4bit") else "8-bit" if qc.get("load_in_8bit") else ""
                what = f"bitsandbytes {bits}".strip()
            raise FormatError(f"{config_path}: quantization_config.quant_method: {what!r} quantized weights cannot be "
                              "dequantized by deltaspec (it reads FP8 block-scaled weights with weight_scale_inv); "
                              "pass a dequantized bf16/fp16/fp32 copy of the model")
    keyset = set(keys)
    for k in keys:
        for end, name in _SIGNATURES:
            if k.endswith(end) and not (end == "_blocks" and k[: -len(end)] + "_scales" not in keyset):
                raise FormatError(f"{where}: tensor '{k}': {name} quantization cannot be dequantized by deltaspec "
                                  "(it reads FP8 block-scaled weights with weight_scale_inv); pass a dequantized "
                                  "bf16/fp16/fp32 copy of the model")
    out = {}
    block = _block(qc, config_path) if method == "fp8" else None
    for k in keys:
        if dtype(k) in _INT and k.endswith(".weight") and len(shape(k)) >= 2:
            raise FormatError(f"{where}: tensor '{k}' holds {dtype(k)} integer weights (a quantized layout deltaspec "
                              "cannot dequantize); pass a dequantized bf16/fp16/fp32 copy of the model")
        sk = k + "_scale_inv"  # X.weight → X.weight_scale_inv; experts.gate_up_proj → …gate_up_proj_scale_inv
        if dtype(k) not in _FP8 or sk not in keyset:
            continue  # plain FP8 values without any scale: exact as they are
        if method != "fp8":
            raise FormatError(f"{where}: tensor '{sk}' needs the block size, but "
                              + (f"{config_path} has no quantization_config with quant_method fp8"
                                 if config_path else "there is no config.json next to the weights")
                              + " (quantization_config.weight_block_size)")
        _check_scale(k, sk, shape(k), shape(sk), block, where)
        out[k] = (sk, block)
    return out


def _block(qc: dict, config_path):
    b = qc.get("weight_block_size")
    if b is None:
        return None
    key = "quantization_config.weight_block_size"
    if not isinstance(b, list) or len(b) != 2:
        raise FormatError(f"{config_path}: {key}: expected [rows, columns], got {b!r}")
    return integer(b[0], config_path, key), integer(b[1], config_path, key)


def _check_scale(k, sk, ws, ss, block, where) -> None:
    if block is None:
        if math.prod(ss) != 1:
            raise ShapeMismatchError(f"{where}: '{sk}' {list(ss)}: one scale per tensor expected "
                                     "(quantization_config.weight_block_size is null)")
        return
    want = (*ws[:-2], -(-ws[-2] // block[0]), -(-ws[-1] // block[1]))
    if tuple(ss) != want:
        raise ShapeMismatchError(f"{where}: '{sk}' {list(ss)} does not fit '{k}' {list(ws)} in blocks of "
                                 f"{block[0]}x{block[1]} (expected {list(want)})")


def dequantize(w8, scale_inv, block):
    """float32 W = fp8 · scale_inv per block (torch tensors; leading axes, e.g. experts, are kept)."""
    import torch

    w = w8.to(torch.float32)
    s = scale_inv.to(torch.float32)
    if block is None:
        return w.mul_(s.reshape(()))
    b0, b1 = block
    cols = s.repeat_interleave(b1, dim=-1)[..., : w.shape[-1]]  # (…, ⌈out/b0⌉, in)
    for i in range(s.shape[-2]):
        w[..., i * b0:(i + 1) * b0, :].mul_(cols[..., i:i + 1, :])
    return w
