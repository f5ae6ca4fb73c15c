"""Quantized checkpoints: FP8 block-scaled weights dequantized exactly (float64 reference, bit for bit
after one rounding to float32); every layout that cannot be dequantized is a one-line error, never numbers."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import FormatError, ShapeMismatchError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec.io.files.tensors import open_model  # noqa: E402
from io_fixtures import LLAMA_LIKE, close, random_state, snapshot  # noqa: E402

Q = "model.layers.0.self_attn.q_proj"
SHAPES = {Q + ".weight": (40, 24), "model.layers.0.mlp.down_proj.weight": (24, 40), "model.norm.weight": (24,)}
BLOCK = [16, 16]


def fp8_config(block=BLOCK):
    return {"model_type": "llama", "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                           "activation_scheme": "dynamic", "weight_block_size": block}}


def quantize(w: torch.Tensor, block):
    """DeepSeek-style block FP8: scale_inv = amax/448 per block, fp8 = w / scale_inv."""
    b0, b1 = block
    rows, cols = -(-w.shape[0] // b0), -(-w.shape[1] // b1)
    s = torch.empty(rows, cols)
    q = torch.empty_like(w)
    for i in range(rows):
        for j in range(cols):
            blk = w[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1]
            s[i, j] = blk.abs().max() / 448.0
            q[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1] = blk / s[i, j]
    return q.to(torch.float8_e4m3fn), s


def reference(q8: torch.Tensor, s: torch.Tensor, block) -> np.ndarray:
    """float64 numpy: fp8 value × its block's scale, an exact product (4 + 24 significant bits)."""
    v = q8.to(torch.float32).numpy().astype(np.float64)
    full = np.repeat(np.repeat(s.numpy().astype(np.float64), block[0], 0), block[1], 1)[: v.shape[0], : v.shape[1]]
    return v * full


def fp8_dir(d, seed, block=BLOCK, config=True):
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    sd, ref = {}, {}
    for k, shape in SHAPES.items():
        w = torch.randn(shape, generator=g) * 0.05
        if len(shape) == 2:
            sd[k], sd[k + "_scale_inv"] = quantize(w, block)
            ref[k] = reference(sd[k], sd[k + "_scale_inv"], block)
        else:
            sd[k] = w.to(torch.bfloat16)
    save_file(sd, d / "model.safetensors")
    if config:
        (d / "config.json").write_text(json.dumps(fp8_config(block)))
    return ref


def bf16_dir(d, seed):
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16) for k, s in SHAPES.items()}
    save_file(sd, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return {k: v.double().numpy() for k, v in sd.items()}


@pytest.mark.parametrize("block", [BLOCK, [8, 32]])
def test_fp8_dequantized_bit_for_bit(tmp_path, block):
    ref = fp8_dir(tmp_path / "fp8", 0, block)
    store = open_model(tmp_path / "fp8")
    assert not any(k.endswith("_scale_inv") for k in store.keys())  # consumed, not a tensor of its own
    for k, want in ref.items():
        got = store.get(k)
        assert got.dtype == torch.float32
        assert np.array_equal(got.numpy(), want.astype(np.float32))  # one rounding of the exact product


def test_fp8_fine_tune_against_bf16_base(tmp_path):
    """Fine-tuned weights in FP8 (DeepSeek-V3 style), base in bf16, and the other way round."""
    ref = fp8_dir(tmp_path / "fp8", 0)
    base = bf16_dir(tmp_path / "bf16", 1)
    before = snapshot(tmp_path)
    u = load(tmp_path / "fp8", base=tmp_path / "bf16")
    assert [x.name for x in u] == [Q, "model.layers.0.mlp.down_proj"]
    assert all(x.dtype == "float8_e4m3fn" for x in u)
    assert not any("scale_inv" in w for w in u.warnings)
    for x in u:
        close(x.load().materialize(), torch.from_numpy(ref[x.name + ".weight"] - base[x.name + ".weight"]))
    for x in load(tmp_path / "bf16", base=tmp_path / "fp8"):
        close(x.load().materialize(), torch.from_numpy(base[x.name + ".weight"] - ref[x.name + ".weight"]))
    assert snapshot(tmp_path) == before


def one_line(cls, *parts, call):
    with pytest.raises(cls) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


def test_fp8_without_block_size_or_with_wrong_scales(tmp_path):
    fp8_dir(tmp_path / "noconf", 0, config=False)
    bf16_dir(tmp_path / "base", 1)
    one_line(FormatError, "weight_scale_inv", "no config.json", "weight_block_size",
             call=lambda: load(tmp_path / "noconf", base=tmp_path / "base"))
    fp8_dir(tmp_path / "wrong", 0)
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(fp8_config([8, 8])))
    one_line(ShapeMismatchError, "weight_scale_inv", "blocks of 8x8",
             call=lambda: load(tmp_path / "wrong", base=tmp_path / "base"))
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(fp8_config([16, "x"])))
    one_line(FormatError, tmp_path / "wrong" / "config.json", "quantization_config.weight_block_size",
             call=lambda: load(tmp_path / "wrong", base=tmp_path / "base"))


QUANTIZED_CONFIGS = [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes 4-bit"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes 8-bit"),
    ({"load_in_4bit": True}, "bitsandbytes 4-bit"),  # old bitsandbytes configs: no quant_method
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "awq", "bits": 4}, "awq"),
    ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
    ({"quant_method": "mxfp4"}, "mxfp4"),
]


@pytest.mark.parametrize("qc,name", QUANTIZED_CONFIGS)
def test_quantized_config_refused(tmp_path, qc, name):
    d = tmp_path / "q"
    d.mkdir()
    save_file(random_state(LLAMA_LIKE, 0), d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    bf16_dir(tmp_path / "b", 0)
    for call in (lambda: load(d, base=tmp_path / "b"), lambda: load(tmp_path / "b", base=d)):
        one_line(FormatError, d / "config.json", "quant_method", name, "cannot be dequantized", call=call)


QUANTIZED_TENSORS = [
    ({Q + ".qweight": (4, 32), Q + ".qzeros": (1, 4), Q + ".scales": (1, 32)}, torch.int32, "GPTQ/AWQ"),
    ({Q + ".weight": (512, 1), Q + ".weight.absmax": (16,), Q + ".weight.quant_map": (16,)}, torch.uint8,
     "bitsandbytes 4-bit"),
    ({Q + ".weight": (32, 32), Q + ".SCB": (32,)}, torch.int8, "bitsandbytes 8-bit"),
    ({Q + ".weight_packed": (32, 4), Q + ".weight_scale": (32, 1)}, torch.int32, "compressed-tensors"),
    ({"model.layers.0.mlp.experts.gate_up_proj_blocks": (4, 8, 2, 16),
      "model.layers.0.mlp.experts.gate_up_proj_scales": (4, 8, 2)}, torch.uint8, "MXFP4"),
    ({Q + ".weight": (32, 32)}, torch.int8, "integer weights"),
]


@pytest.mark.parametrize("tensors,dtype,name", QUANTIZED_TENSORS)
def test_quantized_tensors_refused_without_config(tmp_path, tensors, dtype, name):
    d = tmp_path / "q"
    d.mkdir()
    sd = {k: torch.zeros(s, dtype=dtype if not k.endswith(("absmax", "SCB", "weight_scale")) else torch.float32)
          for k, s in tensors.items()}
    sd["model.norm.weight"] = torch.ones(32)
    save_file(sd, d / "model.safetensors")
    bf16_dir(tmp_path / "b", 0)
    one_line(FormatError, d, name, call=lambda: load(d, base=tmp_path / "b"))
