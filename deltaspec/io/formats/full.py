"""Full fine-tuning: ΔW = W_ft − W0 for every weight tensor present in both checkpoints.

Both sides may be a model directory (single, sharded + index json, legacy `pytorch_model.bin`) or
a single `.safetensors` / `.bin` file. Tensors are matched by name (after stripping the `module.`
of DDP and the `_orig_mod.` of torch.compile); both are upcast to float32 before subtracting
(bf16 − bf16 would lose most of the update), W0 one block of rows at a time, so loading a layer
holds one float32 matrix. What becomes a layer:
  2-D `*.weight`                      the matrix as stored (GPT-2 Conv1D: (in, out))
  4-D / 3-D / 5-D `*.weight` (conv)   (out, in·kh·kw), like PEFT's and kohya's conv LoRA
  3-D expert stacks (MoE)             one (out, in) matrix per expert and fused half (see `experts`)
  embeddings / lm_head                only with include_embeddings; a resized vocabulary gives ΔW
                                      over the shared rows, the added rows reported in meta
Everything else (1-D norms and biases, integer buffers, other parameters, heads whose shape
changed) is skipped with a warning that counts and names it. FP8 block-scaled weights are
dequantized and other quantized layouts refused when a store is opened (`quant`).
"""
from __future__ import annotations

import math
from pathlib import Path

from ...errors import FormatError, MissingBaseError, ShapeMismatchError
from ...layernames import layer_index
from ...updates import Dense, LayerUpdate, Updates
from ..model.experts import Layout, expert_matrix, expert_names, expert_shape, is_expert_stack
from ..model.names import Skipped, is_embedding, resized_vocab, sorted_layers, strip_wrappers, summarize
from ..files.model_files import model_files
from ..files.tensors import FLOAT_DTYPES, TensorStore, check_finite, compute_dtype, open_model, upcast
from ..model.relayout import expert_relayout, renamed_pairs
from .sd_single import sd_pairs


def read_full(path, base=None, include_embeddings: bool = False, require_base: bool = True) -> Updates:
    """require_base=False (`deltaspec info`): without a base, list the layers from the headers; their
    loaders raise MissingBaseError."""
    if base is None and require_base:
        raise MissingBaseError(f"{path}: full fine-tuning checkpoint needs the base weights: pass base=PATH")
    ft = open_model(path)
    base = _component(base, path)
    b0 = open_model(base) if base is not None else ft
    layout = Layout.of(ft.config or b0.config)
    if not ft.keys():
        raise FormatError(f"{path}: holds no tensors (an empty checkpoint)")
    fam, sd_pairs_, sd_warnings = sd_pairs(ft, b0, path, base) if base is not None else (None, [], [])
    pairs = [(nk, k, bk) for nk, k, bk, _ in sd_pairs_] if fam else _pairs(ft, b0)
    if not pairs:
        raise FormatError(f"{path}: none of its {len(ft.keys())} tensor names match the {len(b0.keys())} of the "
                          f"base (e.g. '{ft.keys()[0]}' vs '{b0.keys()[0]}'); is base= the model it was "
                          "fine-tuned from?")
    warnings: list[str] = list(sd_warnings)
    relaid = []
    if base is not None and not fam:
        matched_ft, matched_b = {k for _, k, _ in pairs}, {bk for _, _, bk in pairs}
        extra = [k for k in ft.keys() if k not in matched_ft]
        missing = [k for k in b0.keys() if k not in matched_b]
        relaid = expert_relayout(ft, b0, extra, missing, layout)  # the same experts in the other layout
        pairs += renamed_pairs(extra, missing)
        extra = [k for k in extra if k not in {x[2] for x in relaid} | {k for _, k, _ in pairs}]
        missing = [k for k in missing if k not in {x[3] for x in relaid} | {bk for _, _, bk in pairs}]
        if extra:
            warnings.append(f"{path}: {len(extra)} tensor(s) not in the base, skipped: {summarize(extra)}")
        if missing:
            warnings.append(f"{base}: {len(missing)} base tensor(s) not in the fine-tuned checkpoint: "
                            f"{summarize(missing)}")
    r = _Reader(ft, b0, base is not None, layout, include_embeddings)
    for nk, k, bk, *sd in (sd_pairs_ if fam else pairs):
        r.add(nk, k, bk, *sd)
    for name, shape, k, bk, load in relaid:
        meta = {"variant": "full", "base_dtype": b0.dtype(bk), "relayout": "experts fused ↔ per expert"}
        r.layers.append(LayerUpdate(name, shape, "dense", min(shape), lambda load=load: Dense(load()), ft.source(k),
                                    ft.dtype(k), meta))
    warnings += r.warnings + r.skipped.messages(path)
    if r.embeddings:
        warnings.append(f"{path}: {len(r.embeddings)} embedding update(s) skipped ({summarize(r.embeddings)}): "
                        "pass include_embeddings=True to analyse them")
    if r.unknown_stacks:
        warnings.append(f"{path}: {len(r.unknown_stacks)} MoE expert stack(s) read per expert as stored "
                        f"({summarize(r.unknown_stacks)}): the architecture ({layout.describe()}) does not say which "
                        "axis is the input, so U/V may be swapped (σ is not affected) and fused gate_up_proj is not "
                        "split into gate/up")
    if not r.layers:
        raise FormatError(f"{path}: nothing to analyse: " + "; ".join(w.partition(": ")[2] for w in warnings))
    return Updates(sorted_layers(r.layers), str(path), "full", str(base) if base is not None else None, warnings)


def _component(base, path):
    """A diffusers pipeline folder given as the base of one component (`ft/unet`): its `unet/`."""
    if base is None or not (Path(base) / "model_index.json").is_file() or model_files(Path(base))[0]:
        return base
    sub = Path(base) / Path(path).name
    return sub if sub.is_dir() and model_files(sub)[0] else base


class _Reader:
    """Turns matched (name, ft key, base key) triples into layers, collecting what it skips."""

    def __init__(self, ft: TensorStore, b0: TensorStore, has_base: bool, layout: Layout, include_embeddings: bool):
        self.ft, self.b0, self.has_base, self.layout, self.include = ft, b0, has_base, layout, include_embeddings
        self.layers: list[LayerUpdate] = []
        self.skipped = Skipped()
        self.embeddings: list[str] = []
        self.unknown_stacks: list[str] = []
        self.warnings: list[str] = []

    def add(self, nk: str, k: str, bk: str, sd=None) -> None:
        """sd: the SDName of a weight of a single-file SD / SDXL / Flux checkpoint (sd_single.py)."""
        ft, b0 = self.ft, self.b0
        s_ft, s_b = tuple(ft.shape(k)), tuple(b0.shape(bk))
        module, _, param = nk.rpartition(".")
        name = module if param == "weight" else nk
        if ft.dtype(k) not in FLOAT_DTYPES or b0.dtype(bk) not in FLOAT_DTYPES:
            return self.skipped.add("not floating point (integer/bool buffers)", nk)
        if len(s_ft) < 2:
            return self.skipped.add("1-D (norm scales, biases): not weight matrices", nk)
        rows = None
        if s_ft != s_b and sd is not None:
            raise ShapeMismatchError(f"tensor '{k}': shape {list(s_ft)} in {ft.source(k)} but {list(s_b)} in "
                                     f"{b0.source(bk)}: the two checkpoints are different models")
        if s_ft != s_b:
            if is_embedding(name) and len(s_ft) == 2 and s_ft[1] == s_b[1]:
                rows = (s_b[0], s_ft[0])  # a resized vocabulary
            elif layer_index(name) is None:
                return self.skipped.add("shape differs from the base's (a new or resized head)",
                                        f"{nk} {list(s_ft)} vs {list(s_b)}")
            else:
                raise ShapeMismatchError(f"tensor '{k}': shape {list(s_ft)} in {ft.source(k)} but {list(s_b)} in "
                                         f"{b0.source(bk)}; is the base the model this checkpoint was fine-tuned from?")
        if is_expert_stack(nk, len(s_ft), self.layout):
            return self._experts(nk, k, bk, s_ft)
        if param != "weight":
            return self.skipped.add("not a `.weight` parameter", nk)
        if is_embedding(name) and not self.include:
            self.embeddings.append(name if rows is None else f"{name} (vocabulary {rows[0]} → {rows[1]})")
            return
        meta = {"variant": "full", **({"base_dtype": b0.dtype(bk)} if self.has_base else {})}
        shape = (s_ft[0], math.prod(s_ft[1:]))
        if len(s_ft) > 2:
            meta["conv_kernel"] = "x".join(map(str, s_ft[2:]))
        if sd is not None:
            meta.update(sd_key=k, sd_names={"kohya": sd.kohya, "diffusers": sd.diffusers, "split": sd.split})
            if sd.part:  # OpenCLIP's fused in_proj: rows i of n
                i, n = sd.part
                rows_n = s_ft[0] // n
                shape = (rows_n, shape[1])
                return self._layer(name, shape, k, bk, None, meta,
                                   view=lambda m, i=i, r=rows_n, s=shape: m.reshape(-1, s[1])[i * r:(i + 1) * r])
        index = None
        if rows is not None:
            index = slice(0, min(rows))
            shape = (min(rows), s_ft[1])
            meta.update(self._resized(name, k, rows))
        self._layer(name, shape, k, bk, index, meta)

    def _layer(self, name, shape, k, bk, index, meta, view=None) -> None:
        ft, b0, has_base = self.ft, self.b0, self.has_base

        def load() -> Dense:
            if not has_base:
                raise MissingBaseError(f"{ft.path}: '{name}': full fine-tuning needs the base weights: "
                                       "pass base=PATH")
            d = subtract_upcast(ft, k, b0, bk, index)
            return Dense(view(d).contiguous() if view else d.reshape(shape))

        self.layers.append(LayerUpdate(name, tuple(shape), "dense", min(shape), load, ft.source(k), ft.dtype(k), meta))

    def _experts(self, nk, k, bk, stored) -> None:
        layout = self.layout
        if not layout.known:
            self.unknown_stacks.append(nk)
        for name, e, half in expert_names(nk, stored[0], layout):
            meta = {"variant": "full", **({"base_dtype": self.b0.dtype(bk)} if self.has_base else {}), "expert": e,
                    "experts": stored[0], "stack": nk, "orientation": "(out, in)" if layout.known else "stored"}
            if half is not None:
                meta["half"] = ("gate", "up")[half]
            self._layer(name, expert_shape(stored, half, layout), k, bk, e, meta,
                        view=lambda m, half=half: expert_matrix(m, half, layout))

    def _resized(self, name, k, rows) -> dict:
        """Meta for an embedding whose row count changed: rows added (their norms) or removed."""
        n_base, n_ft = rows
        added = lambda: check_finite(upcast(self.ft.raw(k, slice(n_base, n_ft))), self.ft.source(k), k)  # noqa: E731
        meta, warning = resized_vocab(self.ft.path, name, n_base, n_ft, added)
        self.warnings.append(warning)
        return meta


def _pairs(ft: TensorStore, b0: TensorStore) -> list[tuple[str, str, str]]:
    """(name, ft key, base key) triples. Names are ft keys without wrapper prefixes (`module.`,
    `_orig_mod.`); matched to the base by the same name, else by names differing in one leading
    component (`transformer.h.0…` vs `h.0…`, a head model against its bare backbone)."""
    base = {strip_wrappers(k): k for k in b0.keys()}
    names = [(strip_wrappers(k), k) for k in ft.keys()]
    same = [(n, k, base[n]) for n, k in names if n in base]
    if same:
        return same
    for variants in (lambda n: [n.partition(".")[2]], lambda n: ["model." + n, "transformer." + n]):
        out = []
        for n, k in names:
            c = next((c for c in variants(n) if c and c in base), None)
            if c is not None:
                out.append((n, k, base[c]))
        if out:
            return out
    return []


ROW_BLOCK = 128  # rows of W0 upcast at a time while subtracting (2 MiB at 4096 columns: small
# temporaries are served from, and returned to, the heap, instead of keeping ~50 MiB of it resident)


def subtract_upcast(ft: TensorStore, k: str, b0: TensorStore, bk: str, index=None):
    """W_ft − W0 in float32 (float64 if either is stored in float64), checked finite; `index` reads
    one part of both (an expert of a stack, the shared rows of a resized embedding).

    Built in place in one private matrix: W_ft upcast, then W0 (as stored, e.g. bf16) subtracted
    ROW_BLOCK rows at a time. `W_ft.float() − W0.float()` would hold three float32 matrices at once.
    """
    import torch

    raw = ft.raw(k, index)
    w0 = b0.raw(bk, index)
    dtype = torch.promote_types(compute_dtype(raw.dtype), compute_dtype(w0.dtype))
    delta = raw.to(dtype)
    if delta.data_ptr() == raw.data_ptr() and not ft.private(k):  # .to() returned the stored tensor itself
        delta = delta.clone()
    check_finite(delta, ft.source(k), k)
    for r0 in range(0, delta.shape[0], ROW_BLOCK):
        delta[r0:r0 + ROW_BLOCK].sub_(w0[r0:r0 + ROW_BLOCK].to(dtype))
    if not bool(torch.isfinite(delta.sum())):  # W0 has NaN/Inf (W_ft was checked), or W_ft − W0 overflowed
        check_finite(upcast(w0), b0.source(bk), bk)
        check_finite(delta, f"{ft.source(k)} − {b0.source(bk)}", k)
    return delta
