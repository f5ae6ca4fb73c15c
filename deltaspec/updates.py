"""Weight updates as data: dense, low-rank and sum-of-low-rank forms (pure torch, no I/O).

A reader turns a checkpoint into named `LayerUpdate`s; each one loads its update form lazily, so a
whole model is never in memory. Every form knows its shape and rank bound and can `materialize()`
the matrix ΔW (tests, small layers). Factored forms expose `factors()` = (L, R) with ΔW = L @ R,
which is what the exact factored SVD in `spectra.py` uses.

Orientation: every form is in the orientation of the layer's weight as the *model* uses it,
(d_out, d_in) for nn.Linear. Readers that see transposed storage (GPT-2 Conv1D, embeddings) swap
the factors rather than marking a flag, so nothing downstream has to know.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch

from .formatting import shape_str, tally

Tensor = torch.Tensor


@dataclass
class Dense:
    """Full fine-tuning update: ΔW = W_ft − W0, already subtracted (float32 or wider)."""

    delta: Tensor  # (d_out, d_in)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.delta.shape)

    @property
    def rank_bound(self) -> int:
        return min(self.shape)

    def materialize(self) -> Tensor:
        return self.delta

    def __repr__(self) -> str:
        return f"Dense({shape_str(self.shape)}, {_dt(self.delta)})"


@dataclass
class LowRank:
    """LoRA update: ΔW = scale · B @ A."""

    B: Tensor  # (d_out, r)
    A: Tensor  # (r, d_in)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LowRank needs B (d_out, r) and A (r, d_in); got {tuple(self.B.shape)} and {tuple(self.A.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def rank_bound(self) -> int:
        return min(self.A.shape[0], *self.shape)

    def factors(self) -> tuple[Tensor, Tensor]:
        """(L, R) with ΔW = L @ R; the scale is folded into L."""
        return self.B * self.scale, self.A

    def materialize(self) -> Tensor:
        L, R = self.factors()
        return L @ R

    def __repr__(self) -> str:
        return f"LowRank({shape_str(self.shape)}, r={self.A.shape[0]}, scale={self.scale:.4g}, {_dt(self.B)})"


@dataclass
class SumOfLowRank:
    """MultiLoRA update: ΔW = Σ_i S_i B_i A_i with S_i a scalar or a per-output-row vector.

    It is one low-rank product [S_1 B_1 | … | S_n B_n] @ [A_1; …; A_n] of rank ≤ Σ r_i.
    Each term is (scale, B_i, A_i); `scale` is a float, a 0-d tensor or a (d_out,) tensor
    (diag(s_i) B_i, the vector scaling of the MTL-LoRA MultiLoRA baseline).
    """

    terms: list[tuple[Union[float, Tensor], Tensor, Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("SumOfLowRank needs at least one term")
        d_out, d_in = self.terms[0][1].shape[0], self.terms[0][2].shape[1]
        for _, B, A in self.terms:
            if B.shape[0] != d_out or A.shape[1] != d_in or B.shape[1] != A.shape[0]:
                raise ValueError("all SumOfLowRank terms must share (d_out, d_in) and have B (d_out, r), A (r, d_in)")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.terms[0][1].shape[0], self.terms[0][2].shape[1])

    @property
    def rank_bound(self) -> int:
        return min(sum(A.shape[0] for _, _, A in self.terms), *self.shape)

    def factors(self) -> tuple[Tensor, Tensor]:
        """(L, R) = ([S_1 B_1 | … | S_n B_n], [A_1; …; A_n])."""
        Ls = []
        for s, B, _ in self.terms:
            if isinstance(s, Tensor) and s.ndim == 1:
                Ls.append(B * s.to(B.dtype)[:, None])  # diag(s) B
            else:
                Ls.append(B * float(s))
        return torch.cat(Ls, dim=1), torch.cat([A for _, _, A in self.terms], dim=0)

    def materialize(self) -> Tensor:
        L, R = self.factors()
        return L @ R


    def __repr__(self) -> str:
        return (f"SumOfLowRank({shape_str(self.shape)}, {len(self.terms)} terms, rank <= {self.rank_bound}, "
                f"{_dt(self.terms[0][1])})")


def _dt(t) -> str:
    return str(t.dtype).replace("torch.", "")


Update = Union[Dense, LowRank, SumOfLowRank]


def is_factored(update: Update) -> bool:
    return not isinstance(update, Dense)


_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """First integer component of a module name: `model.layers.3.self_attn.q_proj` → 3."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    """Last component of a module name: `model.layers.3.self_attn.q_proj` → `q_proj`."""
    return name.rsplit(".", 1)[-1]


@dataclass
class LayerUpdate:
    """One layer's update, named like the base model's module, loaded only when asked for.

    `kind` is "dense" or "lowrank" (factored: LoRA, MultiLoRA, …). `rank_bound` is min(shape)
    for dense updates and the factored rank (capped by the shape) otherwise. `source` is the file
    the tensors come from (for error messages). `meta` holds reader facts worth reporting
    (adapter variant, scale, heads, original dtype).
    """

    name: str
    shape: tuple[int, int]
    kind: str
    rank_bound: int
    loader: Callable[[], Update] = field(repr=False)
    source: str = ""
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)

    @property
    def module(self) -> str:
        return module_type(self.name)

    @property
    def layer(self) -> int | None:
        return layer_index(self.name)

    def load(self) -> Update:
        return self.loader()

    def __repr__(self) -> str:
        return f"<LayerUpdate {self.name} {shape_str(self.shape)} {self.kind} rank <= {self.rank_bound}, {self.dtype}>"


@dataclass
class Updates(Sequence):
    """The named updates of one checkpoint, in model order, plus where they came from."""

    layers: list[LayerUpdate]
    path: str
    format: str
    base: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        mods = ", ".join(dict.fromkeys(u.module for u in self.layers))
        kinds = tally(u.kind for u in self.layers) or "empty"
        base = f", base {self.base!r}" if self.base else ""
        warn = f", {len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}" if self.warnings else ""
        return f"<Updates {self.format} {self.path!r}: {len(self.layers)} layers ({mods}), {kinds}{base}{warn}>"

    def _repr_html_(self) -> str:
        from .tables import updates_html

        return updates_html(self)

    def select(self, modules: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> "Updates":
        """Keep layers whose module type is in `modules` and whose layer index is in `layers`;
        a module type or index that matches nothing is an error listing what there is."""
        from .selection import select

        keep = select(self.layers, modules, layers, where=self.path)
        return Updates(keep, self.path, self.format, self.base, list(self.warnings))
