"""A shareable, self-contained HTML report of one or several analyses (a presenter, like `plots`).

    import deltaspec as ds
    from deltaspec import report
    res = {"LoRA": ds.analyze("lora/"), "FT": ds.analyze("full/", base="base/")}
    html = report.build(res, suggestions={k: r.suggest_ranks() for k, r in res.items()})
    open("report.html", "w").write(html)

One file, no external reference at all (inline CSS, inline SVG figures with alt text, no scripts,
a Content-Security-Policy that forbids loading anything): it opens offline in any browser and can be
mailed or attached to a paper's supplement. Imports matplotlib (for the figures).
"""
from .build import build
from .provenance import describe, files_of, sha256

__all__ = ["build", "describe", "files_of", "sha256"]
