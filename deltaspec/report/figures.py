"""Matplotlib figures as inline SVG for the HTML report: no external reference, unique ids, alt text.

The plot functions of `deltaspec.plots` draw; this only serialises. Text stays text (svg.fonttype
none: small, selectable, rendered in the page's font); the XML declaration, DOCTYPE, RDF metadata and
namespace URLs are dropped (an HTML parser puts <svg> in the SVG namespace by itself), `xlink:href`
becomes SVG 2 `href`, and every id is prefixed per figure so several figures never clash.
"""
from __future__ import annotations

import html
import io
import itertools
import re

_counter = itertools.count()
SCALE = 2.0  # px per pt: 8 pt paper-style text reads as 16 px on screen (a single-column figure is 475 px wide)


def svg_of(fig_or_axes, alt: str) -> str:
    """An inline <svg role="img"> of a Figure (or an Axes / list of Axes of one), labelled by `alt`."""
    import matplotlib as mpl

    from ..plots.paperstyle import paper_style

    fig = fig_or_axes
    if not hasattr(fig, "savefig"):
        first = fig[0] if isinstance(fig, (list, tuple)) else fig
        fig = first.figure
    buf = io.StringIO()
    with paper_style(), mpl.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return clean_svg(buf.getvalue(), alt, f"f{next(_counter)}")


_NUM = re.compile(r"(\d+\.\d\d)\d+")


def _compact(svg: str) -> str:
    """Smaller, same picture: coordinates to 0.01 pt, unreferenced group ids and indentation dropped."""
    svg = re.sub(r'\b(d|x|y|x1|x2|y1|y2|transform|points)="([^"]*)"',
                 lambda m: m[1] + '="' + _NUM.sub(r"\1", m[2]) + '"', svg)
    used = set(re.findall(r'#([\w.-]+)', svg))
    svg = re.sub(r'<g id="([^"]+)"', lambda m: f'<g id="{m[1]}"' if m[1] in used else "<g", svg)
    return re.sub(r">\s+<", "><", re.sub(r"\s*\n\s*", " ", svg))


def clean_svg(svg: str, alt: str, prefix: str) -> str:
    """Strip what an inline SVG must not carry (see the module docstring) and add role/label/title."""
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = svg.replace("xlink:href=", "href=")
    for i in sorted(set(re.findall(r'\bid="([^"]+)"', svg)), key=len, reverse=True):
        new = f"{prefix}-{i}"
        svg = svg.replace(f'id="{i}"', f'id="{new}"').replace(f'"#{i}"', f'"#{new}"').replace(f"url(#{i})", f"url(#{new})")
    svg = re.sub(r'<svg\b([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"',
                 lambda m: f'<svg{m[1]} width="{float(m[2]) * SCALE:.0f}" height="{float(m[3]) * SCALE:.0f}"', svg,
                 count=1)
    svg = _compact(svg)
    label = html.escape(alt, quote=True)
    svg = re.sub(r"<svg\b", f'<svg role="img" aria-labelledby="{prefix}-title"', svg, count=1)
    return re.sub(r"(<svg\b[^>]*>)", lambda m: f'{m[1]}<title id="{prefix}-title">{label}</title>', svg, count=1)
