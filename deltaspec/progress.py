"""A small progress bar on stderr (no dependency): shown on a terminal, silent otherwise.

    [#######-----------------]  5/16 layers  2.1 layers/s  ETA 0:05  SVD L4.q_proj

One line, redrawn in place with '\\r', never wider than the terminal (so it never wraps onto a new
line), with a state (`status("reading L4.q_proj")`) that shows before the first layer is done, the
rate and the time left. Own code rather than tqdm/rich: ~60 lines cover it, and the CLI stays free
of an extra dependency and its import time.
"""
from __future__ import annotations

import os
import sys
import time


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def terminal_columns(stream) -> int:
    """$COLUMNS when set, else the width of the terminal behind `stream`, else 80."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80


class Progress:
    """`Progress(total, "layers")`; `status(text)` when a step starts, `update()` when one is done,
    `close()` at the end.

    enabled=None shows it only when the stream (stderr) is a terminal, so pipes, CI logs and
    JSON/CSV on stdout stay clean. width=None follows the terminal (re-read at every redraw).
    """

    def __init__(self, total: int, unit: str = "items", enabled: bool | None = None, stream=None,
                 width: int | None = None, min_interval: float = 0.1):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.unit, self.n, self.note = total, unit, 0, ""
        self.width, self.min_interval = width, min_interval
        self.t0 = time.perf_counter()
        self._last = -1.0  # time of the last redraw
        if self.enabled:
            self._draw()

    def status(self, text: str) -> None:
        """What is happening now ('reading L4.q_proj', 'SVD L4.q_proj'); redrawn at once."""
        self.note = text
        if self.enabled:
            self._draw()

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.n += n
        if note is not None:
            self.note = note
        if self.enabled and (time.perf_counter() - self._last >= self.min_interval or self.n >= self.total):
            self._draw()

    def line(self, width: int) -> str:
        """The bar as it would be drawn at `width` columns (at most width - 1 characters)."""
        elapsed = time.perf_counter() - self.t0
        count = f"{self.n}/{self.total} {self.unit}"
        if self.n and elapsed > 0:
            rate = self.n / elapsed
            speed = (f"{rate:.0f} {self.unit}/s" if rate >= 100 else f"{rate:.3g} {self.unit}/s" if rate >= 1
                     else f"{1 / rate:.3g} s/{self.unit.rstrip('s')}")
            tail = f"ETA {_clock((self.total - self.n) / rate)}" if self.n < self.total else f"in {_clock(elapsed)}"
        else:
            speed, tail = "", _clock(elapsed)
        stats = f"{count}  {tail}"
        if speed and len(stats) + len(speed) + 2 <= width - 1:  # the rate goes first when narrow
            stats = f"{count}  {speed}  {tail}"
        room = width - 1 - len(stats) - 3  # what a bar may take: '[' + bar + '] ' before the stats
        want = room - (len(self.note) + 2 if self.note else 0)  # the whole state if there is room
        bar_w = min(24, want) if want >= 10 else max(0, min(10, room - 12))
        frac = self.n / self.total if self.total else 1.0
        bar = f"[{'#' * int(bar_w * frac):-<{bar_w}}] " if bar_w >= 5 else ""
        text = f"{bar}{stats}"
        note = self.note[: max(0, width - 1 - len(text) - 2)]
        return (f"{text}  {note}" if note else text)[: width - 1]

    def _draw(self) -> None:
        width = self.width or terminal_columns(self.stream)
        self._last = time.perf_counter()
        self.stream.write("\r" + self.line(width).ljust(width - 1))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.note = ""
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
