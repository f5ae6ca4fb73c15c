"""Helpers that build tiny checkpoints in temporary directories for the io tests.

Ground truth comes from outside deltaspec: PEFT's own merge (`merge_and_unload()` weight minus the
base weight) for adapters, and plain float64 loops over the written tensors for the other layouts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)


def gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)


def tiny_model(kind: str, seed: int = 0):
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config()) if kind == "llama" else GPT2LMHeadModel(gpt2_config())


def save_base(kind: str, out: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a tiny base model with save_pretrained (safetensors); return a copy of its state dict."""
    model = tiny_model(kind, seed)
    model.save_pretrained(out)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def randomize_adapter(model, seed: int = 1, magnitude: bool = True) -> None:
    """Give every adapter tensor random values: nonzero lora_B, perturbed DoRA magnitudes, …"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                if magnitude:
                    p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "modules_to_save" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def make_peft_adapter(kind: str, config, out: Path, base_state=None, seed: int = 0, model=None) -> dict:
    """get_peft_model(tiny model, config) with random adapter weights, saved to `out`.

    Returns PEFT's own ΔW per base weight key: merge_and_unload() weight − base weight, for every
    2-D weight that the merge changed (stored orientation of the base state dict).
    """
    from peft import get_peft_model

    model = model if model is not None else tiny_model(kind, seed)
    base_state = base_state or {k: v.detach().clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, config)
    randomize_adapter(pm, seed + 1)
    pm.save_pretrained(out)
    merged = pm.merge_and_unload().state_dict()
    return {k: merged[k].double() - base_state[k].double() for k in base_state
            if k in merged and base_state[k].ndim >= 2 and not torch.equal(merged[k], base_state[k])}


def rewrite_adapter(src: Path, dst: Path, key_fn, bin_file: bool = False, extra=None) -> None:
    """Copy an adapter dir, renaming tensor keys with key_fn; optionally as legacy adapter_model.bin."""
    from safetensors.torch import load_file

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    sd = {key_fn(k): v for k, v in load_file(src / "adapter_model.safetensors").items()}
    sd.update(extra or {})
    if bin_file:
        torch.save(sd, dst / "adapter_model.bin")
    else:
        save_file(sd, dst / "adapter_model.safetensors")


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def random_state(shapes: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


LLAMA_LIKE = {
    "model.embed_tokens.weight": (100, 32),
    "model.layers.0.self_attn.q_proj.weight": (32, 32),
    "model.layers.0.self_attn.k_proj.weight": (16, 32),
    "model.layers.0.mlp.down_proj.weight": (32, 64),
    "model.layers.0.input_layernorm.weight": (32,),
    "model.layers.1.self_attn.q_proj.weight": (32, 32),
    "model.layers.1.self_attn.k_proj.weight": (16, 32),
    "model.layers.1.mlp.down_proj.weight": (32, 64),
    "model.layers.1.input_layernorm.weight": (32,),
    "model.norm.weight": (32,),
    "lm_head.weight": (100, 32),
}


def write_sharded(sd: dict, d: Path, n: int = 2, stem: str = "model", bin_files: bool = False) -> None:
    """Write `sd` as n shards + index json, the way HF names them."""
    d.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    suf = "bin" if bin_files else "safetensors"
    weight_map = {}
    for i in range(n):
        name = f"{stem}-{i + 1:05d}-of-{n:05d}.{suf}"
        part = {k: sd[k].contiguous() for k in keys[i::n]}
        torch.save(part, d / name) if bin_files else save_file(part, d / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
             "weight_map": weight_map}
    (d / f"{stem}.{suf}.index.json").write_text(json.dumps(index))


def snapshot(path: Path) -> dict:
    """Every file under `path` with its size and mtime (to check that reading wrote nothing)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4, atol_rel: float = 1e-5) -> None:
    """float32 tolerance scaled by the size of the expected update."""
    want = want.double()
    scale = float(want.abs().max()) or 1.0
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol_rel * scale)


# ---- MultiLoRA layouts (deltaspec's and the MTL-LoRA repo's) ---------------------------------

MODULES = {"model.layers.0.self_attn.q_proj": (32, 24), "model.layers.0.self_attn.v_proj": (16, 24),
           "model.layers.1.self_attn.q_proj": (32, 24), "model.layers.1.self_attn.v_proj": (16, 24)}


def heads(n, r, d_out, d_in, vector, g, dtype=torch.float32):
    A = torch.randn(n, r, d_in, generator=g).to(dtype)
    B = torch.randn(n, d_out, r, generator=g).to(dtype)
    S = torch.randn((n, d_out) if vector else (n,), generator=g).to(dtype)
    return A, B, S


def hand_delta(A, B, S, alpha):
    """(α/r)·Σ_i diag(s_i) B_i A_i in float64, one head at a time."""
    n, r, _ = A.shape
    out = torch.zeros(B.shape[1], A.shape[2], dtype=torch.float64)
    for i in range(n):
        s = S[i].double()
        D = s.reshape(-1, 1) if s.ndim else s
        out += (alpha / r) * (D * (B[i].double() @ A[i].double()))
    return out


def write_deltaspec(d, vector, prefix=True, fan_in_fan_out=False, n=3, r=2, alpha=8.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    d.mkdir(parents=True)
    cfg = {"peft_type": "MULTILORA", "deltaspec_format": "multilora", "format_version": 1, "n_heads": n, "r": r,
           "lora_alpha": alpha, "scaling": "vector" if vector else "scalar",
           "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": fan_in_fan_out}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    sd, want = {}, {}
    p = "base_model.model." if prefix else ""
    for m, (d_out, d_in) in MODULES.items():
        A, B, S = heads(n, r, d_out, d_in, vector, g)
        sd[f"{p}{m}.lora_A.weight"], sd[f"{p}{m}.lora_B.weight"], sd[f"{p}{m}.lora_scaling"] = A, B, S
        want[m] = hand_delta(A, B, S, alpha)
        if fan_in_fan_out:
            want[m] = want[m].T
    save_file(sd, d / "adapter_model.safetensors")
    return want


def write_mtl(path, n=3, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd, raw = {}, {}
    for m, (d_out, d_in) in MODULES.items():
        A, B, S = heads(n, r, d_out, d_in, True, g, torch.bfloat16)
        sd[f"module.{m}.lora_A"], sd[f"module.{m}.lora_B"], sd[f"module.{m}.lora_scaling"] = A, B, S
        raw[m] = (A, B, S)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return raw
