"""Spectrum curves on our samples: σ_i/σ_1 of ΔW against i, median over all adapted layers.

    python figures/fig_spectrum.py         # → figures/spectrum.png
Same as: deltaspec plot spectrum sample_checkpoints/{lora,multilora,full} --base sample_checkpoints/base
         --labels LoRA,MultiLoRA,FT --modules q_proj,k_proj,v_proj,o_proj -o figures/spectrum.png
"""
import deltaspec.plots as dp
from _samples import analyses, args, done

a = args(__doc__.splitlines()[0], "spectrum.png")
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the layers every method adapts
dp.save(dp.spectrum(analyses(a.samples), modules=ATTN, title="attention projections, median over layers (IQR)"),
        a.out, dpi=a.dpi)
done(a.out)
