"""Spectrum curves: sorted singular values σ_i against i per method, log-scaled y.

Each method's curve is the median over the selected layers at every index i, with the
interquartile range as a band (layers pooled, as in the histogram). σ_i / σ_1 per layer by default
(the shape of the spectrum); normalize=False plots raw σ_i. A factored update (LoRA, MultiLoRA) has
only rank-many nonzero σ: its curve ends there (marked with a dot), the rest are exact zeros that a
log axis cannot show.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .style import as_aligned, color, legend, linestyle, new_axes, picked, plain_log_ticks, styled


def stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of unequal length → (n_rows, max_len) array padded with NaN."""
    n = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def band(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise median, 25th and 75th percentile, ignoring NaN (columns all NaN are dropped)."""
    keep = np.isfinite(M).any(axis=0)
    M = M[:, keep]
    return np.nanmedian(M, axis=0), np.nanpercentile(M, 25, axis=0), np.nanpercentile(M, 75, axis=0)


def spectrum_curves(data, *, modules=None, layers=None, normalize: bool = True, labels=None) -> dict:
    """label -> (i, median, q25, q75) over the selected layers (i is 1-based)."""
    al = as_aligned(data, labels)
    out = {}
    for lab, col in zip(al.labels, picked(al, modules, layers)):
        rows = []
        for r in col:
            s = np.sort(np.asarray(r.singular_values, dtype=np.float64))[::-1]
            if not s.size or s[0] <= 0:
                continue
            s = s / s[0] if normalize else s.copy()
            s[s <= 0] = np.nan  # exact zeros have no place on a log axis
            rows.append(s)
        med, lo, hi = band(stack(rows)) if rows else (np.zeros(0),) * 3
        out[lab] = (np.arange(1, len(med) + 1), med, lo, hi)
    return out


def _what(modules) -> str:
    if not modules:
        return "all modules"
    return ", ".join([modules] if isinstance(modules, str) else modules)


@styled
def spectrum(data, *, modules=None, layers: Optional[Sequence[int]] = None, normalize: bool = True,
             iqr: bool = True, log_x: bool = False, labels=None, title: Optional[str] = None, ax=None, size=None, height=None):
    """One line per method: median σ_i (or σ_i/σ_1) over the selected layers vs i; IQR band. Returns Axes."""
    own = ax is None  # a default title only on our own figure: never over the caller's subplots
    if own:
        _, (ax,) = new_axes(1, size, height)
    al = as_aligned(data, labels)
    curves = spectrum_curves(al, modules=modules, layers=layers, normalize=normalize)
    for n, (lab, (i, med, lo, hi)) in enumerate(curves.items()):
        if iqr and len(i) > 0:
            ax.fill_between(i, lo, hi, color=color(n), alpha=0.18, lw=0, label="_nolegend_")
        ax.plot(i, med, color=color(n), ls=linestyle(n), label=lab)
        if len(i) > 0:
            ax.plot(i[-1:], med[-1:], "o", color=color(n), ms=2.5, label="_nolegend_")
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("σ$_i$ / σ$_1$" if normalize else "singular value σ$_i$")
    n_layers = len(picked(al, modules, layers)[0])
    if title is not None or own:
        ax.set_title(title if title is not None else f"{_what(modules)}: median over {n_layers} layers (IQR band)")
    legend(ax)
    return ax
