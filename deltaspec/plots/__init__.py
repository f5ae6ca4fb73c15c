"""Paper figures (matplotlib; imported only explicitly: `import deltaspec.plots as dp`).

Every plot function has the form `fn(data, *, ax=None, ...) -> Axes` (`hist` returns a list, one
Axes per module panel), never calls `show()`, and with `ax=None` makes its own figure in the shipped
paper style — outside pyplot, so scripts keep no global figure state; in a Jupyter notebook that
figure shows inline when the cell ends (`inline(False)` to stop it). `save(fig_or_ax, "fig.pdf")`
writes PDF/SVG/PNG deterministically.

    import deltaspec as ds, deltaspec.plots as dp
    runs = {"LoRA": ds.analyze("lora/"), "FT": ds.analyze("full/", base="base/")}
    dp.save(dp.hist(runs, modules=["k_proj", "v_proj"]), "fig2.pdf")   # the MultiLoRA paper's Figure 2
"""
from .energy import energy, energy_curves
from .heads import heads, heads_data
from .heatmap import heatmap, heatmap_data
from .hist import hist, histogram_data
from .notebook import inline
from .ranks import rank_needed, rank_needed_data
from .save import render, save
from .similarity import mean_similarity, similarity
from .spectrum import spectrum, spectrum_curves
from .trajectory import trajectory, trajectory_data
from .paperstyle import STYLE_PATH, paper_style, use_paper_style
from .style import DOUBLE_COLUMN, PALETTE, SINGLE_COLUMN, figsize

__all__ = ["inline", "render", "hist", "histogram_data", "spectrum", "spectrum_curves", "energy", "energy_curves", "heatmap",
           "heatmap_data", "heads", "heads_data", "rank_needed", "rank_needed_data", "trajectory", "trajectory_data", "similarity", "mean_similarity", "save", "paper_style",
           "use_paper_style", "figsize",
           "PALETTE", "SINGLE_COLUMN", "DOUBLE_COLUMN", "STYLE_PATH"]
