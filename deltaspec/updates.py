"""Weight updates as data: dense, low-rank, sum-of-low-rank and Kronecker forms (pure torch, no I/O).

A reader turns a checkpoint into named `LayerUpdate`s; each one loads its update form lazily, so a
whole model is never in memory. Every form knows its shape and rank bound and can `materialize()`
the matrix ΔW (tests, small layers). Factored forms expose `factors()` = (L, R) with ΔW = L @ R,
which is what the exact factored SVD in `spectra.py` uses.

Orientation: every form is in the orientation of the layer's weight as the *model* uses it,
(d_out, d_in) for nn.Linear. Readers that see transposed storage (GPT-2 Conv1D, embeddings) swap
the factors rather than marking a flag, so nothing downstream has to know.

No torch at import time (`import deltaspec`, `deltaspec info` stay fast): torch is imported where a
form computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

if TYPE_CHECKING:
    from torch import Tensor

from .formatting import shape_str, tally
from .layernames import layer_index, module_matches, module_type, summarize  # noqa: F401 (re-exported)


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
    `scalings`: the learned scalings as stored ((n,) or (n, d_out), without α/r), when the reader
    knows them (per-head anatomy reports their statistics; a Conv1D layout folds them into a factor).
    """

    terms: list[tuple[Union[float, Tensor], Tensor, Tensor]] = field(default_factory=list)
    scalings: Optional[Tensor] = None

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
        import torch

        Ls = []
        for s, B, _ in self.terms:
            if isinstance(s, torch.Tensor) and s.ndim == 1:
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


def hadamard_lowrank(B1, A1, B2, A2, scale: float = 1.0) -> LowRank:
    """LoHa: ΔW = scale · (B1 A1) ⊙ (B2 A2) as one exact factored product (DESIGN §7).

    The face-splitting (row-wise Kronecker) identity (B1 A1) ⊙ (B2 A2) = L R with
    L[i, a·r2 + b] = B1[i, a] · B2[i, b]   (d_out, r1·r2) and
    R[a·r2 + b, j] = A1[a, j] · A2[b, j]   (r1·r2, d_in),
    so rank ΔW ≤ r1·r2. B1 (d_out, r1), A1 (r1, d_in), B2 (d_out, r2), A2 (r2, d_in).
    """
    if B1.shape[0] != B2.shape[0] or A1.shape[1] != A2.shape[1] or B1.shape[1] != A1.shape[0] or B2.shape[1] != A2.shape[0]:
        raise ValueError(f"hadamard_lowrank needs B_i (d_out, r_i), A_i (r_i, d_in); got {tuple(B1.shape)}, "
                         f"{tuple(A1.shape)}, {tuple(B2.shape)}, {tuple(A2.shape)}")
    L = (B1[:, :, None] * B2[:, None, :]).reshape(B1.shape[0], -1)  # (d_out, r1·r2)
    R = (A1[:, None, :] * A2[None, :, :]).reshape(-1, A1.shape[1])  # (r1·r2, d_in)
    return LowRank(L, R, scale)


@dataclass
class Kronecker:
    """LoKr update: ΔW = scale · (W1 ⊗ W2), W1 (a, b), W2 (c, d) → ΔW (a·c, b·d).

    W1 and W2 are update forms themselves (Dense, or LowRank when a factor was decomposed into two
    small matrices); a tensor is taken as Dense. Its spectrum is exact without forming ΔW:
    σ(W1 ⊗ W2) = {σ_i(W1) · σ_j(W2)}, with singular vectors u_i ⊗ u'_j and v_i ⊗ v'_j
    (`spectra.py`). Not a factored form (no `factors()`): its rank can reach min(shape).
    """

    W1: object
    W2: object
    scale: float = 1.0

    def __post_init__(self) -> None:
        import torch

        self.W1 = Dense(self.W1) if isinstance(self.W1, torch.Tensor) else self.W1
        self.W2 = Dense(self.W2) if isinstance(self.W2, torch.Tensor) else self.W2
        if len(self.W1.shape) != 2 or len(self.W2.shape) != 2:
            raise ValueError("Kronecker needs two matrices")

    @property
    def shape(self) -> tuple[int, int]:
        (a, b), (c, d) = self.W1.shape, self.W2.shape
        return (a * c, b * d)

    @property
    def rank_bound(self) -> int:
        return min(self.W1.rank_bound * self.W2.rank_bound, *self.shape)

    def materialize(self) -> Tensor:
        import torch

        return self.scale * torch.kron(self.W1.materialize(), self.W2.materialize())

    def __repr__(self) -> str:
        return f"Kronecker({shape_str(self.shape)} = {shape_str(self.W1.shape)} ⊗ {shape_str(self.W2.shape)}, scale {self.scale:.4g})"


Update = Union[Dense, LowRank, SumOfLowRank, Kronecker]


def is_factored(update: Update) -> bool:
    """A factored form has `factors()` = (L, R) with ΔW = L @ R (LowRank, SumOfLowRank)."""
    return hasattr(update, "factors")


@dataclass
class LayerUpdate:
    """One layer's update, named like the base model's module, loaded only when asked for.

    `kind` is "dense", "lowrank" (factored: LoRA, MultiLoRA, LoHa, VeRA, …) or "kronecker" (LoKr).
    `rank_bound` is min(shape) for dense updates and the factored rank, or rank W1 · rank W2 for
    Kronecker updates, capped by the shape, otherwise. `source` is the file
    the tensors come from (for error messages). `meta` holds reader facts worth reporting
    (adapter variant, scale, heads, original dtype). `initial`, when the reader was given the adapter
    saved before training (LoRA, MultiLoRA), loads this layer's update at step 0 (io/initial_factors.py).
    """

    name: str
    shape: tuple[int, int]
    kind: str
    rank_bound: int
    loader: Callable[[], Update] = field(repr=False)
    source: str = ""
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)
    initial: Callable[[], Update] | None = field(default=None, repr=False)  # the layer at step 0 (`initial=`)

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
    notes: list[str] = field(default_factory=list)  # expected omissions (norms, embeddings): see omissions.py

    def __post_init__(self) -> None:
        from .omissions import split

        self.warnings, notes = split(self.warnings)
        self.notes = list(self.notes) + notes
        empty = [u.name for u in self.layers if 0 in tuple(u.shape)]
        if empty:  # nothing to analyse, and every SVD path would fail on them

            self.layers = [u for u in self.layers if 0 not in tuple(u.shape)]
            self.warnings = list(self.warnings) + [
                f"{self.path}: {len(empty)} layer(s) with an empty (zero-size) weight skipped: {summarize(empty)}"]

    def __getitem__(self, i):
        """By position or by layer name (as AnalysisResult)."""
        if isinstance(i, str):
            for u in self.layers:
                if u.name == i:
                    return u
            raise KeyError(f"no layer named {i!r}; e.g. {', '.join(u.name for u in self.layers[:3])}")
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
        return Updates(keep, self.path, self.format, self.base, list(self.warnings), list(self.notes))
