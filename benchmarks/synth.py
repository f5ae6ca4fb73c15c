"""Synthetic checkpoints shaped like LLaMA-7B, written to disk one tensor at a time (the measuring
harness the benchmarks share is in harness.py).

    python benchmarks/synth.py lora      --layers 32            # PEFT LoRA r=16, all 7 projections
    python benchmarks/synth.py multilora --layers 32            # deltaspec MultiLoRA, 4 heads x r=4
    python benchmarks/synth.py full      --layers 2             # base/ + ft/, bf16, sharded + index json

Every checkpoint is cached under --workdir (default /tmp/deltaspec-bench) in a directory named by
its parameters, with a `.complete` marker written last; an existing complete one is reused.

Shapes (LLaMA-7B): q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008, per decoder layer.
Contents:
- LoRA: A (r, in) Kaiming-uniform like PEFT's init, B (out, r) Gaussian with a decaying column scale
  (a trained B is nonzero and anisotropic), alpha = 2r.
- MultiLoRA (docs/FORMATS.md): A (n, r, in), B (n, out, r) Kaiming-uniform, vector scalings (n, out).
- Full FT: W0 ~ N(0, 0.02^2) stored bf16; W_ft = bf16(W0 + dW) with dW = a decaying rank-64 part plus
  i.i.d. noise (per-entry std about 5e-4, ~2.5% of W0), so the stored difference has a few large
  directions on top of a Marchenko-Pastur bulk (and bf16 rounding), like real full fine-tuning deltas.
  1-D norm weights are included; embeddings / lm_head only with --embeddings (they are skipped by
  deltaspec's reader by default, so they only cost disk and build time).

Writing is streaming: the safetensors header is computed from the shapes first, then each tensor is
generated, written and dropped, so building never holds more than a couple of tensors in RAM.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

WORKDIR = "/tmp/deltaspec-bench"
FORMAT_VERSION = 2  # bump when the contents below change, so cached checkpoints are rebuilt

# LLaMA-7B: hidden 4096, intermediate 11008, 32 layers, vocab 32000.
HIDDEN, INTER, VOCAB, N_LAYERS_7B = 4096, 11008, 32000, 32
PROJ = {  # module -> (parent, (d_out, d_in))
    "q_proj": ("self_attn", (HIDDEN, HIDDEN)), "k_proj": ("self_attn", (HIDDEN, HIDDEN)),
    "v_proj": ("self_attn", (HIDDEN, HIDDEN)), "o_proj": ("self_attn", (HIDDEN, HIDDEN)),
    "gate_proj": ("mlp", (INTER, HIDDEN)), "up_proj": ("mlp", (INTER, HIDDEN)), "down_proj": ("mlp", (HIDDEN, INTER)),
}
# Bytes of one float32 copy of the largest weight (11008 x 4096): the memory unit.
F32_LAYER_BYTES = INTER * HIDDEN * 4


def module_names(layers: int) -> Iterator[tuple[str, tuple[int, int]]]:
    """(module name, (d_out, d_in)) of every adapted linear, in model order."""
    for i in range(layers):
        for m, (parent, shape) in PROJ.items():
            yield f"model.layers.{i}.{parent}.{m}", shape


# ---------------------------------------------------------------------------------------------------
# Streaming safetensors writer
# ---------------------------------------------------------------------------------------------------

_ST = {torch.float32: ("F32", 4), torch.bfloat16: ("BF16", 2), torch.float16: ("F16", 2), torch.float64: ("F64", 8)}


class StreamingSafetensors:
    """Write a .safetensors file tensor by tensor; the header is built from (name, shape, dtype) first.

    Format: 8-byte little-endian header length, JSON header (padded with spaces to 8 bytes), raw
    little-endian data in header order. Tensors must then be `write()`n in exactly that order.
    """

    def __init__(self, path, entries: list[tuple[str, tuple[int, ...], torch.dtype]], metadata=None) -> None:
        header, off = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self.order = []
        for name, shape, dtype in entries:
            code, size = _ST[dtype]
            n = math.prod(shape) * size
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
            self.order.append((name, tuple(shape), dtype))
            off += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.nbytes = off
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(blob)) + blob)
        self.i = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        want, shape, dtype = self.order[self.i]
        if name != want or tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"expected {want} {shape} {dtype}, got {name} {tuple(t.shape)} {t.dtype}")
        self.f.write(t.contiguous().view(torch.uint8).numpy().data)
        self.i += 1

    def close(self) -> None:
        if self.i != len(self.order):
            raise ValueError(f"{self.f.name}: wrote {self.i} of {len(self.order)} tensors")
        self.f.close()


# ---------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------

def _cached(workdir, name: str, params: dict, build: Callable[[Path], None], quiet=False) -> Path:
    """workdir/name, built by `build(tmpdir)` unless a complete copy with the same params exists."""
    out = Path(workdir) / name
    marker = out / ".complete"
    want = dict(params, format_version=FORMAT_VERSION)
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out
    tmp = Path(workdir) / (name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    build(tmp)
    (tmp / ".complete").write_text(json.dumps(want))
    tmp.rename(out)
    if not quiet:
        print(f"[synth] built {out} in {time.perf_counter() - t0:.1f} s ({dir_bytes(out) / 1e9:.2f} GB)", file=sys.stderr)
    return out


def dir_bytes(d) -> int:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def _gen(seed: int, *idx: int) -> torch.Generator:
    """A generator seeded by (seed, tensor index...), so every tensor is reproducible on its own."""
    s = seed
    for i in idx:
        s = (s * 1_000_003 + i + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


# ---------------------------------------------------------------------------------------------------
# PEFT LoRA adapter
# ---------------------------------------------------------------------------------------------------

def peft_config(r: int, alpha: float, targets: Iterable[str]) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic/llama-7b-shapes",
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.05, "target_modules": list(targets), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": None, "inference_mode": True, "layers_to_transform": None, "rank_pattern": {},
        "alpha_pattern": {}, "revision": None,
    }


def build_lora(workdir=WORKDIR, layers=N_LAYERS_7B, r=16, dtype="float32", seed=0, quiet=False) -> Path:
    """PEFT LoRA adapter dir: adapter_config.json + adapter_model.safetensors (r on all 7 projections)."""
    tdt = getattr(torch, dtype)
    params = dict(kind="lora", layers=layers, r=r, dtype=dtype, seed=seed)

    def build(d: Path):
        (d / "adapter_config.json").write_text(json.dumps(peft_config(r, 2 * r, PROJ), indent=2))
        entries = []
        for name, (o, i) in module_names(layers):
            entries += [(f"base_model.model.{name}.lora_A.weight", (r, i), tdt),
                        (f"base_model.model.{name}.lora_B.weight", (o, r), tdt)]
        w = StreamingSafetensors(d / "adapter_model.safetensors", entries, {"format": "pt"})
        decay = 1.0 / torch.arange(1, r + 1, dtype=torch.float32).sqrt()  # anisotropic B columns
        for j, (name, (o, i)) in enumerate(module_names(layers)):
            g = _gen(seed, j)
            A = (torch.rand(r, i, generator=g) * 2 - 1) / math.sqrt(i)  # PEFT: kaiming_uniform(a=√5)
            B = torch.randn(o, r, generator=g) * 1e-2 * decay
            w.write(f"base_model.model.{name}.lora_A.weight", A.to(tdt))
            w.write(f"base_model.model.{name}.lora_B.weight", B.to(tdt))
        w.close()

    return _cached(workdir, f"lora-L{layers}-r{r}-{dtype}-s{seed}", params, build, quiet)


# ---------------------------------------------------------------------------------------------------
# deltaspec MultiLoRA adapter (docs/FORMATS.md)
# ---------------------------------------------------------------------------------------------------

def build_multilora(workdir=WORKDIR, layers=N_LAYERS_7B, heads=4, r=4, dtype="float32", seed=0, quiet=False) -> Path:
    tdt = getattr(torch, dtype)
    params = dict(kind="multilora", layers=layers, heads=heads, r=r, dtype=dtype, seed=seed)

    def build(d: Path):
        cfg = {"peft_type": "MULTILORA", "deltaspec_format": "multilora", "format_version": 1, "n_heads": heads,
               "r": r, "lora_alpha": 2 * r, "scaling": "vector", "target_modules": list(PROJ),
               "fan_in_fan_out": False, "base_model_name_or_path": "synthetic/llama-7b-shapes"}
        (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        entries = []
        for name, (o, i) in module_names(layers):
            p = f"base_model.model.{name}"
            entries += [(f"{p}.lora_A.weight", (heads, r, i), tdt), (f"{p}.lora_B.weight", (heads, o, r), tdt),
                        (f"{p}.lora_scaling", (heads, o), tdt)]
        w = StreamingSafetensors(d / "adapter_model.safetensors", entries, {"format": "pt"})
        for j, (name, (o, i)) in enumerate(module_names(layers)):
            g = _gen(seed, j)
            p = f"base_model.model.{name}"
            A = (torch.rand(heads, r, i, generator=g) * 2 - 1) / math.sqrt(i)
            B = (torch.rand(heads, o, r, generator=g) * 2 - 1) / math.sqrt(r)
            S = torch.randn(heads, o, generator=g) * 1e-2
            w.write(f"{p}.lora_A.weight", A.to(tdt))
            w.write(f"{p}.lora_B.weight", B.to(tdt))
            w.write(f"{p}.lora_scaling", S.to(tdt))
        w.close()

    return _cached(workdir, f"multilora-L{layers}-n{heads}r{r}-{dtype}-s{seed}", params, build, quiet)


# ---------------------------------------------------------------------------------------------------
# Full fine-tuning: base + fine-tuned, bf16, sharded safetensors + model.safetensors.index.json
# ---------------------------------------------------------------------------------------------------

def full_entries(layers: int, embeddings: bool, scale: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """(tensor name, shape) of a LLaMA-shaped model in HF order (every dimension divided by `scale`)."""
    h = HIDDEN // scale
    out = [("model.embed_tokens.weight", (VOCAB // scale, h))] if embeddings else []
    for i in range(layers):
        for m, (parent, shape) in PROJ.items():
            out.append((f"model.layers.{i}.{parent}.{m}.weight", tuple(d // scale for d in shape)))
        out += [(f"model.layers.{i}.input_layernorm.weight", (h,)),
                (f"model.layers.{i}.post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if embeddings:
        out.append(("lm_head.weight", (VOCAB // scale, h)))
    return out


def _shard_plan(entries, shard_bytes: int, shard_layers: int | None) -> list[list[tuple[str, tuple]]]:
    shards, cur, cur_bytes, cur_layer = [], [], 0, None
    for name, shape in entries:
        n = math.prod(shape) * 2
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if shard_layers:
            new = cur and layer is not None and layer != cur_layer and cur_layer is not None \
                and (int(layer) % shard_layers == 0)
        else:
            new = cur and cur_bytes + n > shard_bytes
        if new:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape))
        cur_bytes += n
        cur_layer = layer if layer is not None else cur_layer
    if cur:
        shards.append(cur)
    return shards


def _full_pair(shape, g: torch.Generator, rank=64) -> tuple[torch.Tensor, torch.Tensor]:
    """(W0 bf16, W_ft bf16) of one weight; see the module docstring for dW."""
    o, i = shape
    w0 = (torch.randn(o, i, generator=g) * 0.02).bfloat16()
    d = 1.0 / torch.arange(1, rank + 1, dtype=torch.float32)  # decaying rank-64 part
    d *= 4e-4 / d.norm()  # entries of the rank-64 part have std 4e-4
    dw = (torch.randn(o, rank, generator=g) * d) @ torch.randn(rank, i, generator=g)
    dw += torch.randn(o, i, generator=g) * 3e-4
    dw += w0.float()
    return w0, dw.bfloat16()


def build_full(workdir=WORKDIR, layers=2, shard_gb=1.0, shard_layers=None, embeddings=False, seed=0,
               scale=1, quiet=False) -> tuple[Path, Path]:
    """(base dir, fine-tuned dir): bf16 sharded safetensors with model.safetensors.index.json each.
    scale > 1 divides every dimension (quick development runs only; measurements use scale 1)."""
    params = dict(kind="full", layers=layers, shard_gb=shard_gb, shard_layers=shard_layers, embeddings=embeddings,
                  seed=seed, scale=scale)
    tag = f"full-L{layers}-" + (f"sl{shard_layers}" if shard_layers else f"sg{shard_gb:g}") + \
        ("-emb" if embeddings else "") + (f"-x{scale}" if scale != 1 else "") + f"-s{seed}"

    def build(d: Path):
        entries = full_entries(layers, embeddings, scale)
        plan = _shard_plan(entries, int(shard_gb * 1e9), shard_layers)
        n = len(plan)
        for side in ("base", "ft"):
            (d / side).mkdir()
            (d / side / "config.json").write_text(json.dumps({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN // scale,
                "intermediate_size": INTER // scale, "num_hidden_layers": layers, "vocab_size": VOCAB // scale,
                "torch_dtype": "bfloat16", "tie_word_embeddings": False}, indent=2))
        weight_map, total = {}, 0
        for s, shard in enumerate(plan):
            fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
            ents = [(name, shape, torch.bfloat16) for name, shape in shard]
            wb = StreamingSafetensors(d / "base" / fname, ents, {"format": "pt"})
            wf = StreamingSafetensors(d / "ft" / fname, ents, {"format": "pt"})
            for name, shape in shard:
                g = _gen(seed, entries.index((name, shape)))
                if len(shape) == 1:
                    w0 = torch.ones(shape, dtype=torch.bfloat16)
                    wft = (1 + 1e-3 * torch.randn(shape, generator=g)).bfloat16()
                elif "embed_tokens" in name or "lm_head" in name:
                    w0 = (torch.randn(shape, generator=g) * 0.02).bfloat16()
                    wft = (w0.float() + 3e-4 * torch.randn(shape, generator=g)).bfloat16()
                else:
                    w0, wft = _full_pair(shape, g)
                wb.write(name, w0)
                wf.write(name, wft)
                del w0, wft
                weight_map[name] = fname
            total += wb.nbytes
            wb.close(), wf.close()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        for side in ("base", "ft"):
            (d / side / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    out = _cached(workdir, tag, params, build, quiet)
    return out / "base", out / "ft"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["lora", "multilora", "full"])
    ap.add_argument("--workdir", default=WORKDIR)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32 for adapters, 2 for full)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="adapter dtype")
    ap.add_argument("--shard-gb", type=float, default=1.0, help="full FT: max shard size in GB")
    ap.add_argument("--shard-layers", type=int, default=None, help="full FT: decoder layers per shard (overrides --shard-gb)")
    ap.add_argument("--embeddings", action="store_true", help="full FT: also write embed_tokens / lm_head")
    ap.add_argument("--scale", type=int, default=1, help="full FT: divide every dimension (development only)")
    a = ap.parse_args()
    if a.kind == "lora":
        print(build_lora(a.workdir, a.layers or N_LAYERS_7B, dtype=a.dtype))
    elif a.kind == "multilora":
        print(build_multilora(a.workdir, a.layers or N_LAYERS_7B, dtype=a.dtype))
    else:
        print(*build_full(a.workdir, a.layers or 2, a.shard_gb, a.shard_layers, a.embeddings, scale=a.scale))


if __name__ == "__main__":
    main()
