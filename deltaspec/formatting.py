"""Text presentation primitives shared by every report: numbers, short layer names, width-aware grids.

Pure string work (no torch, no matplotlib), used by results.py / tables.py / the CLI and by other
report writers (`deltaspec info`, rank suggestions):

    text_grid(head, body)                 # aligned columns, as wide as the content
    text_grid(head, body, width=80)       # fits 80 characters: headers wrap at '_', then columns
                                          # from the right are left out and named in a last line
    short_names(names)                    # model.layers.0.self_attn.q_proj → L0.q_proj (unique)
    hoist_constant(head, body, ["kind"])  # columns equal in every row → one summary line instead
"""
from __future__ import annotations

import html
import math
import re
import textwrap
from typing import Optional, Sequence

import numpy as np

__all__ = ["fmt_num", "fmt_signed", "fmt_spread", "fmt_diff", "fmt_pct", "align_decimals", "tally", "shape_str", "short_names", "name_legend", "text_grid",
           "hoist_constant", "wrap", "html_table"]


def fmt_num(v) -> str:
    """4 significant digits; integers as they are; NaN/None as '-'; very small/large in e-notation."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "-"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3e}"


def fmt_signed(v) -> str:
    """fmt_num with an explicit '+' on positive values (differences)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = fmt_num(float(v))
    return s if s.startswith("-") or float(v) == 0 else "+" + s


def fmt_spread(mean, std, sep: str = " ± ") -> str:
    """`mean ± std` with the std rounded to 2 significant digits and the mean to the same decimal
    place (6.0143, 0.3137 → '6.01 ± 0.31'); a zero or missing std gives the mean alone."""
    if std is None or not math.isfinite(std) or std == 0 or mean is None or not math.isfinite(mean):
        return fmt_num(mean)
    decimals = 1 - math.floor(math.log10(abs(std)))
    if decimals > 6 or abs(mean) >= 1e5 or max(abs(mean), abs(std)) < 1e-3:
        return f"{fmt_num(float(mean))}{sep}{std:.2g}"
    decimals = max(decimals, 0)
    return f"{mean:.{decimals}f}{sep}{std:.{decimals}f}"


def fmt_diff(d, spread=None) -> str:
    """A signed difference to the precision its spread supports: rounded to the decimal place of the
    spread's second significant digit (Δ 0.08368 with spread 0.031 → '+0.084'); fmt_signed without one."""
    if d is None or not math.isfinite(d):
        return "-"
    if spread is None or not math.isfinite(spread) or spread <= 0 or abs(d) >= 1e5:
        return fmt_signed(d)
    decimals = max(1 - math.floor(math.log10(spread)), 0)
    if decimals > 6:
        return fmt_signed(d)
    s = f"{d:+.{decimals}f}"
    return "0" if float(s) == 0 else s


def fmt_pct(v) -> str:
    """A share or relative error as a percentage, one style everywhere: two decimals ('31.20%',
    '0.04%'), e-notation below 0.01% so that small errors stay visible ('1.2e-05%'); NaN as '-'."""
    if v is None or not math.isfinite(v):
        return "-"
    p = 100 * float(v)
    return f"{p:.1e}%" if p != 0 and abs(p) < 0.01 else f"{p:.2f}%"


def tally(values) -> str:
    """'q_proj ×4, k_proj ×4, lm_head' — distinct values in first-seen order with their counts."""
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{v} ×{c}" if c > 1 else str(v) for v, c in counts.items())


def shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


# ---- layer names ---------------------------------------------------------------------------------
_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def _parts(name: str):
    """(prefix before the layer index, index, rest after it) or None for names without an index."""
    m = _INDEX.search(name)
    if not m:
        return None
    return name[: m.start()], int(m.group(1)), name[m.end():]


def _tags(prefixes: set) -> dict:
    """Distinguishing tag per prefix: encoder.block / decoder.block → 'encoder.' / 'decoder.'."""
    if len(prefixes) <= 1:
        return {p: "" for p in prefixes}
    split = {p: p.split(".") for p in prefixes}
    lead = 0
    while all(len(s) > lead for s in split.values()) and len({s[lead] for s in split.values()}) == 1:
        lead += 1
    trail = 0
    while (all(len(s) > lead + trail for s in split.values())
           and len({s[len(s) - 1 - trail] for s in split.values()}) == 1):
        trail += 1
    return {p: ".".join(s[lead: len(s) - trail] or s[-1:]) + "." for p, s in split.items()}


def short_names(names: Sequence[str]) -> dict:
    """{full name: short name}, unique: `L<i>.<module>`; `L<i>.<rest after the index>` where
    that collides (MoE experts); the full names where even that collides. Names without a layer
    index (lm_head) stay as they are; several stacks (encoder/decoder) get a tag ('decoder.L0.q')."""
    names = list(dict.fromkeys(names))
    parts = {n: _parts(n) for n in names}
    tags = _tags({p[0] for p in parts.values() if p})
    levels = [
        lambda n, p: f"{tags[p[0]]}L{p[1]}.{n.rsplit('.', 1)[-1]}",
        lambda n, p: f"{tags[p[0]]}L{p[1]}.{p[2]}" if p[2] else f"{tags[p[0]]}L{p[1]}",
    ]
    for level in levels:
        short = {n: (level(n, p) if p else n) for n, p in parts.items()}
        if len(set(short.values())) == len(short):
            return short
    return {n: n for n in names}


def name_legend(short: dict, width: Optional[int] = None) -> list[str]:
    """Lines saying how short names read ('L0.q_proj = model.layers.0.self_attn.q_proj'); [] if
    no name was shortened."""
    for full, s in short.items():
        if s != full:
            return wrap(f"short names, e.g. {s} = {full}; full names in JSON/CSV", width)
    return []


# ---- grids ----------------------------------------------------------------------------------------
def _split_head(h: str) -> tuple[str, str]:
    """Two header lines for `h`, split at the '_' or ' ' that makes the longer line shortest."""
    cuts = [i for i, c in enumerate(h) if c in "_ "]
    if not cuts:
        return "", h
    i = min(cuts, key=lambda i: max(i, len(h) - i - 1))
    return h[:i], h[i + 1:]


def hoist_constant(head: list, body: list, columns: Sequence[str]):
    """Move the `columns` whose value is the same in every row out of the grid.

    Returns (head, body, summary) with summary like 'shape 128x128, kind lowrank' ('' if none).
    Heading rows (plain strings) are kept as they are.
    """
    rows = [r for r in body if not isinstance(r, str)]
    drop = [i for i, h in enumerate(head) if h in columns and rows and len({str(r[i]) for r in rows}) == 1]
    summary = ", ".join(f"{head[i]}\xa0{rows[0][i]}" for i in drop)  # no-break: `wrap` keeps "r 16" together
    keep = [i for i in range(len(head)) if i not in drop]
    body = [r if isinstance(r, str) else [r[i] for i in keep] for r in body]
    return [head[i] for i in keep], body, summary


_NUMERIC = re.compile(r"^[+-]?\d+(\.\d+)?(e[+-]?\d+)?%?(±[+-]?\d+(\.\d+)?(e[+-]?\d+)?)?$")


def align_decimals(cells: Sequence[str], pad: str = " ") -> list[str]:
    """Cells of one column padded on the right so that, right-aligned, their decimal points line up
    ('0.53' over '0.3283' becomes '0.53  '); '-' (missing) lines up with the units. Columns with any
    non-numeric cell are returned unchanged."""
    cells = [str(c) for c in cells]
    if not cells or not all(c in ("-", "", "–") or _NUMERIC.match(c) for c in cells):
        return cells

    if any("±" in c for c in cells):  # mean ± std: the ± signs line up (costs no width)
        left = max(len(c.split("±")[0]) for c in cells)
        right = max(len(c.split("±")[1]) if "±" in c else 0 for c in cells)
        return [c if c == "" else (c.split("±")[0].rjust(left, pad) + ("±" + c.split("±")[1] if "±" in c else "")).ljust(
            left + 1 + right, pad) for c in cells]

    def tail(c: str) -> str:  # the part from the decimal point on (or after the integer digits)
        if c in ("-", "", "–"):
            return ""
        m = re.match(r"[+-]?\d+", c)
        return c[m.end():] if m else ""

    n = max(len(tail(c)) for c in cells)
    return [c if c == "" else c + pad * (n - len(tail(c))) for c in cells]


def text_grid(head: list, body: list, width: Optional[int] = None, *, keep: int = 1) -> list[str]:
    """Lines of an aligned table: first column left-aligned, the others right-aligned.

    A row of `body` that is a plain string is a heading line (printed as is, not measured).
    width: fit in this many characters: first cells longer than a third of it go on a line of their
    own above their row, headers wrap onto two lines at '_', then columns are left out from the right
    (never the first `keep`) and named in a last line. None: no limit.
    """
    head = [str(h) for h in head]
    rows = [[str(x) for x in r] for r in body if not isinstance(r, str)]
    if rows:  # decimal points line up in every numeric column
        cols_ = [align_decimals([r[i] for r in rows]) for i in range(len(head))]
        rows = [[cols_[i][k] if i else r[0] for i in range(len(head))] for k, r in enumerate(rows)]

    def widths(heads):
        return [max([len(h[i]) for h in heads] + [len(r[i]) for r in rows]) for i in range(len(head))]

    heads = [head]
    w = widths(heads)
    cols = list(range(len(head)))
    total = lambda: sum(w[i] for i in cols) + 2 * (len(cols) - 1)
    if width is not None and total() > width and keep == 1 and \
            max((len(r[0]) for r in rows), default=0) > max(width // 3, len(head[0])):
        # long first cells (kohya / diffusers layer names): each on its own line above its values
        body = [x for r in body for x in ((r,) if isinstance(r, str) else (str(r[0]), [""] + list(r[1:])))]
        return text_grid(head, body, width, keep=keep)
    if width is not None and total() > width:
        split = [_split_head(h) for h in head]
        heads = [[s[0] for s in split], [s[1] for s in split]]
        w = widths(heads)
        while total() > width and len(cols) > keep:
            cols.pop()
    left_out = [head[i] for i in range(len(head)) if i not in cols]

    def line(cells):
        out = [cells[i].ljust(w[i]) if n == 0 else cells[i].rjust(w[i]) for n, i in enumerate(cols)]
        return "  ".join(out).rstrip()

    it = iter(rows)
    lines = [line(h) for h in heads if any(h[i] for i in cols)]
    lines.append("  ".join("-" * w[i] for i in cols))
    lines += [r if isinstance(r, str) else line(next(it)) for r in body]
    if left_out:
        lines += wrap(f"({len(left_out)} column{'s' if len(left_out) > 1 else ''} left out to fit {width} "
                      f"characters: {', '.join(left_out)}; to see them: --format csv, -o FILE.csv, or a wider "
                      "terminal / COLUMNS=200)", width)
    return lines


def wrap(text: str, width: Optional[int], indent: str = "  ") -> list[str]:
    """`text` as lines of at most `width` characters (continuations indented); one line if None."""
    if width is None or len(text) <= width:
        return [text.replace("\xa0", " ")]
    lines = textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [text]
    return [line.replace("\xa0", " ") for line in lines]


# ---- HTML (notebooks) -----------------------------------------------------------------------------
def html_table(head: Sequence[str], body: Sequence[Sequence], caption: Optional[str] = None,
               max_rows: int = 40) -> str:
    """A small HTML table for `_repr_html_`: numbers right-aligned, long tables cut in the middle."""
    esc = lambda x: html.escape(str(x))
    rows = list(body)
    if len(rows) > max_rows:
        half = max_rows // 2
        rows = rows[:half] + [None] + rows[-half:]
    cells = []
    for r in rows:
        if r is None:
            cells.append(f"<tr><td colspan='{len(head)}' style='text-align:center'>… {len(body) - 2 * half} more rows …"
                         "</td></tr>")
            continue
        tds = "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{esc(x)}</td>" for i, x in enumerate(r))
        cells.append(f"<tr>{tds}</tr>")
    cap = f"<caption style='text-align:left'>{esc(caption)}</caption>" if caption else ""
    ths = "".join(f"<th style='text-align:{'left' if i == 0 else 'right'}'>{esc(h)}</th>" for i, h in enumerate(head))
    return f"<table>{cap}<thead><tr>{ths}</tr></thead><tbody>{''.join(cells)}</tbody></table>"
