"""HTML building blocks for the report: escaping, tables, the page shell with its inline CSS.

Nothing here refers outside the file: no scripts, no stylesheets, no fonts, no images by URL; a
Content-Security-Policy meta tag forbids the browser to load anything even if something slipped in.
"""
from __future__ import annotations

import html
import math
import re
from typing import Iterable, Optional, Sequence

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"

CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--alt:#f6f8fa;--pos:#0a6b3d;--neg:#a4200d}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
 "DejaVu Sans",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:1.2rem 1.2rem 3rem}
h1{font-size:1.6rem;margin:.2rem 0 .3rem}h2{font-size:1.25rem;margin:2rem 0 .6rem;padding-bottom:.25rem;
 border-bottom:1px solid var(--line)}h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
p,li{max-width:80ch}.muted{color:var(--muted)}
nav ul{display:flex;flex-wrap:wrap;gap:.3rem 1rem;padding:0;margin:.4rem 0 0;list-style:none}
a{color:#0550ae}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.86em}
pre{background:var(--alt);border:1px solid var(--line);padding:.6rem .8rem;overflow-x:auto;white-space:pre}
.scroll{overflow-x:auto;margin:.4rem 0 .8rem;border:1px solid var(--line);border-radius:4px}
table{border-collapse:collapse;font-size:.86rem;width:100%}
th,td{padding:.22rem .55rem;border-bottom:1px solid var(--line);text-align:right;white-space:pre;
 font-variant-numeric:tabular-nums}
th{background:var(--alt);font-weight:600;white-space:normal;vertical-align:bottom}
th:first-child,td:first-child{text-align:left}td.l,th.l{text-align:left}
tbody tr:nth-child(even){background:#fbfcfd}
.pos{color:var(--pos)}.neg{color:var(--neg)}
.find{background:var(--alt);border-left:4px solid #0550ae;padding:.4rem .9rem;margin:.4rem 0 .8rem}
.find p,.find li{margin:.25rem 0;max-width:none}.find ul{margin:.2rem 0;padding-left:1.2rem}
td.dim{color:var(--muted)}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;border-radius:4px}
.warn li{max-width:none}
.figs{display:flex;flex-wrap:wrap;gap:1.2rem 1.6rem;align-items:flex-start}
figure{margin:0;max-width:100%}figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:var(--muted);margin-top:.2rem}
details{margin:.5rem 0}summary{cursor:pointer;font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.4rem 0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;overflow-wrap:anywhere}
@media (max-width:560px){main{padding:.8rem}}
@media print{.scroll{overflow:visible}details{display:block}}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def num(v, signed: bool = False) -> tuple[str, str]:
    """(text, css class) of a table value: numbers formatted like the terminal tables, NaN as '–'."""
    from ..formatting import fmt_num as _fmt

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–", ""
    if isinstance(v, tuple):  # (text, css class) made by the caller
        return v
    if isinstance(v, str):
        return v, ""
    s = _fmt(v)
    if signed and float(v) != 0:
        return (s if s.startswith("-") else "+" + s), ("neg" if float(v) < 0 else "pos")
    return s, ""


def table(head: Sequence[str], rows: Iterable[Sequence], signed_from: Optional[int] = None,
          left: Sequence[int] = (), caption: Optional[str] = None) -> str:
    """A scrollable table. Columns from `signed_from` on show signed, coloured differences."""
    out = ['<div class="scroll"><table>']
    if caption:
        out.append(f"<caption class='muted'>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th{" class=l" if i in left else ""}>{esc(h).replace("_", "_<wbr>")}</th>'
                                       for i, h in enumerate(head)) + "</tr></thead><tbody>")
    from ..formatting import align_decimals

    rows = [list(r) for r in rows]
    shown = [[num(v, signed=signed_from is not None and i >= signed_from) for i, v in enumerate(r)] for r in rows]
    for i in range(len(head)):  # decimal points (and ± signs) line up: figure spaces have a digit's width
        col = align_decimals([r[i][0] for r in shown], pad="\u2007") if shown else []
        for r, text in zip(shown, col):
            r[i] = (text, r[i][1])
    for row in shown:
        cells = []
        for i, (text, cls) in enumerate(row):
            cls = " ".join(c for c in (cls, "l" if i in left else "") if c)
            cells.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{esc(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def kv(pairs: Iterable[tuple[str, object]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


def figure(svg: str, caption: str) -> str:
    """A figure whose caption wraps at the figure's own width."""
    w = re.search(r'<svg\b[^>]*\swidth="(\d+)"', svg)
    style = f' style="width:{w[1]}px"' if w else ""
    return f"<figure{style}>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def page(title: str, sections: Sequence[tuple[str, str, str]], intro: str = "") -> str:
    """The whole document: sections are (anchor id, heading, HTML body)."""
    nav = "".join(f'<li><a href="#{sid}">{esc(h)}</a></li>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(h)}</h2>{b}</section>' for sid, h, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><header><h1>{esc(title)}</h1>{intro}<nav aria-label=\"sections\"><ul>{nav}</ul></nav>"
            f"</header>{body}</main></body></html>\n")
