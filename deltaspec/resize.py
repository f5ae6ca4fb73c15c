"""Exact resizing: any update → a LoRA of the chosen per-layer rank, from the truncated SVD.

By Eckart–Young the rank-k truncated SVD ΔW_k = U_k Σ_k V_kᵀ is the best rank-k approximation of ΔW
in Frobenius (and spectral) norm. The SVD comes from `deltaspec.spectra.spectrum(update, vectors=True)`:
for factored updates (LoRA, MultiLoRA, AdaLoRA, any form with `factors()`) that is the exact
factored SVD (thin QRs of the factors and an r×r core; ΔW is never formed), for dense ones (full
fine-tuning, DoRA) the SVD of ΔW. So a new update form that supports `spectrum` resizes as is.

The factors split the singular values evenly, B = U_k √Σ_k / √s and A = √Σ_k V_kᵀ / √s with
s = α/k the new LoRA scale, so that s·B@A = ΔW_k exactly and ‖B‖ = ‖A‖ (a balanced start for
further training). Layers stored transposed (GPT-2 Conv1D with fan_in_fan_out, embeddings) swap
the roles of U and V; conv layers (analysed as (out, in·kh·kw)) get A reshaped to (k, in, kh, kw).

Accuracy (tests/test_resize.py, against PEFT's own merge of the output and a float64 numpy truncation
of the input's ΔW): relative Frobenius error < 2e-5 with the default float32 SVD, < 1e-6 with
dtype="float64" (full rank: ΔW itself). Where σ_k = σ_{k+1} the rank-k truncation is not unique; any
of them has the same error, which is what is reported.

    res = resize(ds.load("adapter/"), ranks.policy("energy", 0.9))
    res.format_table(); write_lora_adapter("out/", res.factors())
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from . import ranks as R
from .errors import DeltaspecError
from .io.model.names import is_embedding
from .io.write.peft import LoraFactors
from .kohya_ranks import retained
from .updates import Updates


@dataclass
class ResizedLayer:
    """One layer after truncation: ranks before/after, what was kept, and the new LoRA factors."""

    name: str
    shape: tuple
    kind: str
    rank_before: int
    rank: int
    kept_energy: float
    rel_error: float
    factors: Optional[LoraFactors] = field(default=None, repr=False)
    retained: dict = field(default_factory=dict)  # kohya's verbose numbers (kohya_ranks.retained)

    def to_dict(self) -> dict:
        nan = lambda v: None if not math.isfinite(v) else v
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind, "rank_before": self.rank_before,
                "rank": self.rank, "alpha": self.factors.alpha if self.factors else None,
                "kept_energy": nan(self.kept_energy), "relative_error": nan(self.rel_error),
                **{k: nan(v) for k, v in self.retained.items()}}


@dataclass
class ResizeResult:
    layers: list[ResizedLayer]
    policy: R.Policy
    keep_scale: str
    fan_in_fan_out: bool
    warnings: list[str] = field(default_factory=list)

    def factors(self) -> list[LoraFactors]:
        return [x.factors for x in self.layers if x.factors is not None]

    def to_dict(self) -> dict:
        return {"policy": self.policy.label, "keep_scale": self.keep_scale, "fan_in_fan_out": self.fan_in_fan_out,
                "warnings": list(self.warnings), "layers": [x.to_dict() for x in self.layers]}

    def format_table(self, width: Optional[int] = None, verbose: bool = False) -> str:
        """Per layer: ranks, energy kept, relative error; verbose adds kohya's --verbose numbers
        (Frobenius norm and sum of σ retained, σ_1/σ_k) and their mean over layers."""
        from .formatting import fmt_pct, short_names, text_grid

        short = short_names([x.name for x in self.layers])
        names = [short[x.name] for x in self.layers]
        body = [[n, "x".join(map(str, x.shape)), x.kind, str(x.rank_before), str(x.rank), fmt_pct(x.kept_energy),
                 fmt_pct(x.rel_error)] for n, x in zip(names, self.layers)]
        head = ["layer", "shape", "kind", "from", "to", "kept", "rel.err"]
        if verbose:
            head, body = ["layer", "from", "to", "fro kept", "sum kept", "σ1/σk"], [
                [n, str(x.rank_before), str(x.rank), fmt_pct(x.retained.get("fro_retained", math.nan)),
                 fmt_pct(x.retained.get("sum_retained", math.nan)), f"{x.retained.get('max_ratio', math.nan):.1f}"]
                for n, x in zip(names, self.layers)]
        lines = text_grid(head, body, width)
        fro = [x.retained["fro_retained"] for x in self.layers if math.isfinite(x.retained.get("fro_retained", math.nan))]
        if verbose and fro:
            import numpy as np

            lines.append(f"Frobenius norm retained: mean {fmt_pct(np.mean(fro))}, std {fmt_pct(np.std(fro))}")
        return "\n".join(lines)


def truncated_factors(sigma, U, V, k: int, scale: float, transposed: bool = False):
    """(A, B) with scale·B@A = U_k Σ_k V_kᵀ (transposed=False) or its transpose (True).

    sigma: (m,) descending; U: (d_out, m), V: (d_in, m) torch tensors (stored orientation of ΔW).
    """
    import torch

    if scale == 0:
        raise DeltaspecError("LoRA scale α/r must be nonzero")
    s = torch.as_tensor(sigma[:k], dtype=U.dtype)
    root = (s / abs(scale)).sqrt()
    Uk, Vk = U[:, :k] * root, V[:, :k] * root  # (d_out, k), (d_in, k)
    if scale < 0:
        Uk = -Uk
    B, A = (Vk, Uk.T) if transposed else (Uk, Vk.T)
    return A.contiguous(), B.contiguous()


def _layer_rank(policy: R.Policy, sigma, u, max_rank: Optional[int], conv_rank: Optional[int], conv_1x1: bool) -> int:
    """The rank `policy` picks for layer u; conv layers use conv_rank (as rank, or as cap) when given."""
    size, kernel = min(u.shape), u.meta.get("conv_kernel")
    if conv_rank is not None and kernel and (conv_1x1 or kernel != "1x1"):
        if policy.name == "rank":
            return R.fixed_rank(sigma, conv_rank)
        return policy.rank(sigma, conv_rank, size=size)
    return policy.rank(sigma, max_rank, size=size)


def _orientation(u, conv1d_dense: bool) -> tuple[bool, bool]:
    """(transposed, embedding) of a layer's LoRA, or a DeltaspecError for what cannot be written."""
    meta = u.meta
    if meta.get("embedding"):
        return True, True
    if meta.get("fan_in_fan_out"):
        return True, False
    if u.kind == "dense" and is_embedding(u.name) and not any(p in u.name for p in ("lm_head", "embed_out")):
        raise DeltaspecError(f"{u.source or u.name}: {u.name}: resizing a dense embedding update into a LoRA is not "
                             "supported; leave out --include-embeddings")
    return (u.kind == "dense" and conv1d_dense), False


def resize(updates: Updates, policy: R.Policy, *, max_rank: Optional[int] = None, keep_scale: str = "ratio",
           device: str = "cpu", dtype: str = "float32", conv1d_dense: bool = False, progress=None,
           conv_rank: Optional[int] = None, conv_1x1: bool = True) -> ResizeResult:
    """Truncate every layer of `updates` to the rank `policy` picks (capped by max_rank).

    keep_scale: "ratio" keeps each layer's α/r, "alpha" its α (ranks.new_alpha); the merged ΔW_k is
    the same either way. conv1d_dense: dense updates come from a GPT-2-style model whose weights are
    stored (d_in, d_out) (see io.write_peft.conv1d_base). progress: a callable(name) per layer.
    conv_rank: for conv layers (stored (out, in, kh, kw)): the rank with the `rank` policy, else the
    cap, instead of max_rank (kohya's --new_conv_rank; kohya's resize applies it to every 4-D lora_down,
    its extract only to kernels other than 1×1: conv_1x1=False).
    Zero updates are left out with a warning (a LoRA layer needs rank ≥ 1).
    """
    from .heap import release_freed
    from .spectra import spectrum

    for what, v in (("--max-rank", max_rank), ("--conv-rank", conv_rank)):
        if v is not None and v < 1:
            raise DeltaspecError(f"{what} must be ≥ 1, got {v}")
    plan = [(u, *_orientation(u, conv1d_dense)) for u in updates]  # refuse before computing anything
    if not plan:
        raise DeltaspecError(f"{updates.path}: no layers to resize")
    scales = {u.name: (u.meta.get("alpha"), u.meta.get("scale")) for u in updates}
    out, spectra, warnings = [], {}, list(updates.warnings)
    for u, transposed, emb in plan:
        spec = spectrum(u.load(), device=device, dtype=dtype, vectors=True)
        k = _layer_rank(policy, spec.sigma, u, max_rank, conv_rank, conv_1x1)
        # keep only the top-k vectors: memory is the output's size, not every layer's full SVD
        spectra[u.name] = (spec.sigma, spec.U[:, :k].clone(), spec.V[:, :k].clone(), k)
        del spec
        if u.kind == "dense":
            release_freed()  # else the heap keeps every freed ΔW's pages (deltaspec/heap.py)
        if progress:
            progress(u.name)
    alphas = R.layer_alphas({n: v[3] for n, v in spectra.items()}, keep_scale, scales)
    for u, transposed, emb in plan:
        sigma, U, V, k = spectra.pop(u.name)
        layer = ResizedLayer(u.name, tuple(u.shape), u.kind, u.rank_bound, k, R.kept_energy(sigma, k),
                             R.relative_error(sigma, k), retained=retained(sigma, k))
        if k == 0:
            warnings.append(f"{u.name}: zero update, left out of the adapter")
        else:
            A, B = truncated_factors(sigma, U, V, k, alphas[u.name] / k, transposed)
            kernel = u.meta.get("conv_kernel")
            if kernel:
                kh, kw = (int(x) for x in str(kernel).split("x"))
                A = A.reshape(k, -1, kh, kw)
                B = B.reshape(B.shape[0], k, 1, 1)
            layer.factors = LoraFactors(u.name, A, B, alphas[u.name], emb)
        out.append(layer)
    fifo = any(t and not e for _, t, e in plan)
    return ResizeResult(out, policy, keep_scale, fifo, warnings)
