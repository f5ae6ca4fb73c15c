"""Dependence on top directions: held-out accuracy and loss against k, per ablation mode (the
functional side of the MultiLoRA paper's Figure 2), from `deltaspec ablate`'s JSON.

One column per mode (trunc: keep the top k; remove: drop the top k; random: drop k random directions of
the same energy), rows mean accuracy and held-out loss; one line per label, the mean over its runs
(seeds) with a band from the lowest to the highest run; the grey dotted line is the base model.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import DeltaspecError
from .style import color, figsize, legend, styled

TITLES = {"trunc": "keep top k (truncate)", "remove": "remove top k", "random": "remove k random (same energy)"}
ROWS = (("acc", "mean task accuracy"), ("loss", "held-out loss"))


@styled
def ablation(data: dict, *, title: Optional[str] = None, ax=None, size="double", height=None):
    """data: `deltaspec ablate -o x.json`'s content. ax: None or 2 × len(modes) Axes (row-major).
    Returns the Axes, row-major (accuracy row first)."""
    from ..train.ablate import summary

    runs, ks, modes = data.get("runs"), data.get("k"), data.get("modes")
    if not runs or not ks or not modes:
        raise DeltaspecError("not ablation data: expected the JSON that `deltaspec ablate -o x.json` writes")
    s = summary(runs)
    if ax is None:
        from matplotlib.figure import Figure

        w, _ = figsize(size)
        fig = Figure(figsize=(w, height or 0.45 * w), layout="constrained")
        axes = fig.subplots(2, len(modes), sharex=True, sharey="row", squeeze=False)
    else:
        axes = np.asarray(ax).reshape(2, len(modes))
    x = np.arange(len(ks))
    for col, mode in enumerate(modes):
        for row, (key, ylabel) in enumerate(ROWS):
            a = axes[row, col]
            base = [v for lab in s.values() for v in lab["base"][key]]
            a.axhline(float(np.mean(base)), color="0.5", ls=":", lw=0.8, label="base")
            for n, (lab, d) in enumerate(s.items()):
                vals = np.array([d[(mode, k)][key] for k in ks], dtype=float)  # (k, runs)
                a.plot(x, vals.mean(1), color=color(n), marker="o", ms=2.5, label=f"{lab} (n={d['n']})"
                       if d["n"] > 1 else lab)
                if d["n"] > 1:
                    a.fill_between(x, vals.min(1), vals.max(1), color=color(n), alpha=0.18, lw=0)
            if row == 0:
                a.set_title(TITLES.get(mode, mode))
            else:
                a.set_xlabel("k (directions per layer)")
                a.set_xticks(x, [str(k) for k in ks])
            if col == 0:
                a.set_ylabel(ylabel)
    legend(axes[0, 0], fontsize="small")
    if title:
        axes[0, 0].figure.suptitle(title)
    return list(axes.flat)
