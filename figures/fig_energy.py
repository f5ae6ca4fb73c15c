"""Cumulative energy share of ΔW's top-k directions on our samples (LoRA, MultiLoRA, FT).

    python figures/fig_energy.py           # → figures/energy.png
Same as: deltaspec plot energy sample_checkpoints/{lora,multilora,full} --base sample_checkpoints/base
         --labels LoRA,MultiLoRA,FT --mark 16 -o figures/energy.png
"""
import deltaspec.plots as dp
from _samples import analyses, args, done

a = args(__doc__.splitlines()[0], "energy.png")
runs = analyses(a.samples)
rank = min(r.rank for r in runs["LoRA"].layers)
dp.save(dp.energy(runs, mark=[rank], title=f"all common layers, median (IQR); dotted: k = {rank}"), a.out, dpi=a.dpi)
done(a.out)
