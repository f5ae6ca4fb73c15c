"""Subspace-similarity matrix φ(i, j) between two updates (LoRA paper Figure 3 style).

φ(i, j) = ‖U_A[:, :i]ᵀ U_B[:, :j]‖_F² / min(i, j) (see `deltaspec.subspace`), i on the y axis
(top-i singular vectors of A), j on the x axis (top-j of B), 0 = orthogonal, 1 = contained.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import DeltaspecError
from ..subspace import similarity_grid
from .style import as_aligned, new_axes, picked, styled


def mean_similarity(data, *, modules=None, layers=None, k: int = 16, side: str = "left", labels=None) -> np.ndarray:
    """φ grid (k × k at most) between the first two inputs, averaged over their common selected layers.

    side: "left" (U, output space; DESIGN §3) or "right" (V, input space). Needs analyses run with
    vectors=True (saved JSON files carry no singular vectors).
    """
    al = as_aligned(data, labels)
    if len(al.results) != 2:
        raise DeltaspecError(f"subspace similarity compares two updates, got {len(al.results)} inputs")
    a, b = picked(al, modules, layers)
    grids = []
    for la, lb in zip(a, b):
        Ua, Ub = (la.U, lb.U) if side == "left" else (la.V, lb.V)
        if Ua is None or Ub is None:
            raise DeltaspecError(f"{la.name}: no singular vectors (saved analyses do not keep them); "
                                 "analyse the checkpoints with vectors=True")
        grids.append(similarity_grid(Ua, Ub, k, k))
    shape = tuple(min(g.shape[d] for g in grids) for d in (0, 1))
    return np.mean([g[: shape[0], : shape[1]] for g in grids], axis=0)


@styled
def similarity(grid, *, labels: Sequence[str] = ("A", "B"), title: Optional[str] = None, cmap: str = "viridis",
               annotate: Optional[bool] = None, ax=None, size=None, height=None):
    """Heatmap of a φ grid (from `subspace.similarity_grid` or `mean_similarity`); returns the Axes."""
    grid = np.asarray(grid, dtype=np.float64)
    own = ax is None  # a default title only on our own figure: never over the caller's subplots
    if own:
        _, (ax,) = new_axes(1, size, height=height or 2.7)
    I, J = grid.shape
    im = ax.imshow(grid, origin="upper", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                   extent=(0.5, J + 0.5, I + 0.5, 0.5))
    ax.set_aspect("equal")
    ax.set_xlabel(f"j (top-j of {labels[1]})")
    ax.set_ylabel(f"i (top-i of {labels[0]})")
    ticks = lambda n: [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= n] or [1]
    ax.set_xticks(ticks(J))
    ax.set_yticks(ticks(I))
    ax.grid(False)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    cb.set_label("φ(i, j)")
    cb.outline.set_linewidth(0.4)
    if annotate is None:
        annotate = grid.size <= 64
    if annotate:
        for (y, x), v in np.ndenumerate(grid):
            ax.text(x + 1, y + 1, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                    color="white" if v < 0.55 else "black")
    if title is not None or own:
        ax.set_title(title if title is not None else f"subspace similarity {labels[0]} vs {labels[1]}")
    return ax
