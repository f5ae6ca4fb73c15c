"""Layer × module heatmaps of one metric, LoRA | MultiLoRA | FT on one colour scale.

    python figures/fig_heatmap.py                          # normalized_entropy → figures/heatmap.png
    python figures/fig_heatmap.py --metric top1_energy -o figures/heatmap_top1.png
Same as: deltaspec plot heatmap sample_checkpoints/{lora,multilora,full} --base sample_checkpoints/base
         --labels LoRA,MultiLoRA,FT --no-annotate -o figures/heatmap.png
"""
import deltaspec.plots as dp
from _samples import analyses, args, done

a = args(__doc__.splitlines()[0], "heatmap.png",
         lambda p: p.add_argument("--metric", default="normalized_entropy"))
axes = dp.heatmap(analyses(a.samples), a.metric, annotate=False, height=2.6)  # common layers, one scale
dp.save(axes, a.out, dpi=a.dpi)
done(a.out)
