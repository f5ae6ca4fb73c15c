"""Figure 2 of the MultiLoRA paper on our samples: histograms of σ_i/σ_1 of ΔW for k_proj and v_proj.

    python figures/fig2_hist.py            # → figures/fig2_hist.png
Same as: deltaspec plot hist sample_checkpoints/{lora,multilora,full} --base sample_checkpoints/base
         --labels LoRA,MultiLoRA,FT --modules k_proj,v_proj -o figures/fig2_hist.png
"""
import deltaspec.plots as dp
from _samples import analyses, args, done

a = args(__doc__.splitlines()[0], "fig2_hist.png")
dp.save(dp.hist(analyses(a.samples), modules=["k_proj", "v_proj"]), a.out, dpi=a.dpi)
done(a.out)
