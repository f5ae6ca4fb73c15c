"""Which heads carry the MultiLoRA update: heads × layers heatmap of each head's energy share.

    python figures/fig_heads.py                        # share → figures/heads.png
    python figures/fig_heads.py --metric mean_abs_s -o figures/heads_scalings.png
Same as: deltaspec plot heads sample_checkpoints/multilora --size double -o figures/heads.png
Numbers: deltaspec heads sample_checkpoints/multilora
"""
from pathlib import Path

import deltaspec as ds
import deltaspec.plots as dp
from _samples import args, done

a = args(__doc__.splitlines()[0], "heads.png", lambda p: p.add_argument("--metric", default="share"))
result = ds.heads(str(Path(a.samples) / "multilora"), device="cpu", progress=False)
axes = dp.heads(result, a.metric, size="double")  # one panel per module type, one colour scale
dp.save(axes, a.out, dpi=a.dpi)
done(a.out)
