"""Subspace similarity φ(i, j) of LoRA and MultiLoRA updates (top-i vs top-j left singular vectors).

    python figures/fig_similarity.py       # v_proj, averaged over layers → figures/similarity.png
Same as: deltaspec plot similarity sample_checkpoints/lora sample_checkpoints/multilora
         --modules v_proj -o figures/similarity.png
"""
import deltaspec.plots as dp
from _samples import analyses, args, done

a = args(__doc__.splitlines()[0], "similarity.png",
         lambda p: p.add_argument("--module", default="v_proj"))
runs = analyses(a.samples, vectors=True, kinds=("lora", "multilora"))
grid = dp.mean_similarity(runs, modules=a.module, k=16)
dp.save(dp.similarity(grid, labels=list(runs), title=f"{a.module}: φ(i, j), mean over layers"), a.out, dpi=a.dpi)
done(a.out)
