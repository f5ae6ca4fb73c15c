"""Cumulative energy curves: energy_share(k) = Σ_{i≤k} σ_i² / Σ σ_i² against k, per method.

The metric `top{k}_energy` of `analyze` as a curve. Median over the selected layers with an
interquartile band. A factored update of rank r reaches 1 at k = r and stays there (its other
singular values are exactly zero), so its curve is continued at 1 up to the largest k shown.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .spectrum import _what, band, stack
from .style import as_aligned, color, legend, linestyle, new_axes, picked, plain_log_ticks, styled


def energy_curves(data, *, modules=None, layers=None, labels=None) -> dict:
    """label -> (k, median, q25, q75) of the cumulative energy share over the selected layers."""
    al = as_aligned(data, labels)
    cols = picked(al, modules, layers)
    n = max((min(r.shape) for col in cols for r in col), default=0)  # pad every curve to the full size
    out = {}
    for lab, col in zip(al.labels, cols):
        rows = []
        for r in col:
            e = np.sort(np.asarray(r.singular_values, dtype=np.float64))[::-1] ** 2
            if not e.size or e.sum() <= 0:
                continue
            c = np.cumsum(e) / e.sum()
            rows.append(np.concatenate([c, np.ones(max(min(r.shape), len(c)) - len(c))]))
        M = stack(rows) if rows else np.zeros((0, n))
        med, lo, hi = band(M) if rows else (np.zeros(0),) * 3
        out[lab] = (np.arange(1, len(med) + 1), med, lo, hi)
    return out


@styled
def energy(data, *, modules=None, layers: Optional[Sequence[int]] = None, iqr: bool = True, log_x: bool = True,
           mark: Sequence[int] = (), labels=None, title: Optional[str] = None, ax=None, size=None, height=None):
    """One line per method: cumulative energy share vs k (log-x by default); `mark` draws k guides."""
    own = ax is None  # a default title only on our own figure: never over the caller's subplots
    if own:
        _, (ax,) = new_axes(1, size, height)
    al = as_aligned(data, labels)
    for n, (lab, (k, med, lo, hi)) in enumerate(energy_curves(al, modules=modules, layers=layers).items()):
        if iqr and len(k) > 0:
            ax.fill_between(k, lo, hi, color=color(n), alpha=0.18, lw=0, label="_nolegend_", step=None)
        ax.plot(k, med, color=color(n), ls=linestyle(n), label=lab)
    for m in mark:
        ax.axvline(m, color="0.5", lw=0.6, ls=":", label="_nolegend_")
    if log_x:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (top singular directions)")
    ax.set_ylabel("cumulative energy share")
    n_layers = len(picked(al, modules, layers)[0])
    if title is not None or own:
        ax.set_title(title if title is not None else f"{_what(modules)}: median over {n_layers} layers (IQR band)")
    legend(ax, loc="lower right")
    return ax
