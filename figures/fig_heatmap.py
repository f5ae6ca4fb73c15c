"""Layer × module heatmaps of one metric, LoRA | MultiLoRA | FT on one colour scale.

    python figures/fig_heatmap.py                          # normalized_entropy → figures/heatmap.png
    python figures/fig_heatmap.py --metric top1_energy -o figures/heatmap_top1.png
One checkpoint: deltaspec plot heatmap sample_checkpoints/lora --metric normalized_entropy -o heat.pdf
"""
import numpy as np

import deltaspec.plots as dp
from _samples import analyses, args, done
from deltaspec.compare import align
from deltaspec.plots.style import new_axes, paper_style

a = args(__doc__.splitlines()[0], "heatmap.png",
         lambda p: p.add_argument("--metric", default="normalized_entropy"))
runs = analyses(a.samples)
al = align(list(runs.values()), list(runs))  # the layers every method has
with paper_style():
    fig, axes = new_axes(3, "double", height=2.6)
    vals = np.array([r.metrics[a.metric] for res in al.results for r in res.layers], dtype=float)
    lo, hi = np.nanmin(vals), np.nanmax(vals)
    for ax, lab, res in zip(axes, al.labels, al.results):
        dp.heatmap(res, a.metric, vmin=lo, vmax=hi, colorbar=False, title=lab, annotate=False, ax=ax)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.colorbar(axes[0].get_images()[0], ax=axes, fraction=0.04, pad=0.02).set_label(a.metric)
dp.save(fig, a.out, dpi=a.dpi)
done(a.out)
