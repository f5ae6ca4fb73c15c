"""A small progress bar on stderr (no dependency): shown on a terminal, silent otherwise.

    lora: [#######-------------]  5/16 layers  2.1 layers/s  ETA 0:05  SVD L4.q_proj 12s

One line, redrawn in place with '\\r', never wider than the terminal (so it never wraps onto a new
line), labelled with its input when there are several (`label=`), with a state
(`status("SVD L4.q_proj")`) that shows before the first layer is done, the rate and the time left.
A timer thread redraws it every `refresh` seconds, so the clock, the ETA and the time spent in the
current step keep moving while one long step (a 4096x4096 SVD: ~20 s on one core) runs; it never
freezes at "6/56, ETA 1:44" until the step ends.

Own code rather than tqdm or rich (measured, benchmarks/README.md "Progress bar"): tqdm redraws only
inside update() (its monitor thread merely resets `miniters` after 10 s without a redraw), so it
would freeze during a long SVD exactly as the old bar did; rich.progress refreshes on a timer but is
not a core dependency (the design allows torch, numpy, scipy, matplotlib, safetensors and click) and
imports ~30x slower than this module (0.42 s vs 0.013 s, tqdm 0.28 s, best of 5 on the loaded 2-core
test machine); ~110 lines cover what deltaspec needs.
"""
from __future__ import annotations

import os
import sys
import threading
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
    label: the input's name, first on the line (several inputs: which one is running).
    refresh: seconds between timer redraws (0: redraw only on status/update).
    """

    def __init__(self, total: int, unit: str = "items", enabled: bool | None = None, stream=None,
                 width: int | None = None, min_interval: float = 0.1, label: str = "", refresh: float = 0.5):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.unit, self.n, self.note, self.label = total, unit, 0, "", label
        self.width, self.min_interval = width, min_interval
        self.t0 = self.step_t0 = time.perf_counter()
        self._last = -1.0  # time of the last redraw
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = None
        if self.enabled:
            self._draw()
            if refresh and refresh > 0:
                self._timer = threading.Thread(target=self._tick, args=(refresh,), daemon=True)
                self._timer.start()

    def _tick(self, refresh: float) -> None:
        while not self._stop.wait(refresh):
            self._draw()

    def status(self, text: str) -> None:
        """What is happening now ('reading L4.q_proj', 'SVD L4.q_proj'); redrawn at once."""
        self.note, self.step_t0 = text, time.perf_counter()
        if self.enabled:
            self._draw()

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.n += n
        if note is not None:
            self.note = note
        self.step_t0 = time.perf_counter()
        if self.enabled and (time.perf_counter() - self._last >= self.min_interval or self.n >= self.total):
            self._draw()

    def line(self, width: int) -> str:
        """The bar as it would be drawn at `width` columns (at most width - 1 characters)."""
        now = time.perf_counter()
        elapsed = now - self.t0
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
        label = f"{self.label}: " if self.label else ""
        step = now - self.step_t0
        note = f"{self.note} {step:.0f}s" if self.note and step >= 2 and self.n < self.total else self.note
        room = width - 1 - len(label) - len(stats) - 3  # what a bar may take: '[' + bar + '] ' before the stats
        want = room - (len(note) + 2 if note else 0)  # the whole state if there is room
        bar_w = min(24, want) if want >= 10 else max(0, min(10, room - 12))
        frac = self.n / self.total if self.total else 1.0
        bar = f"[{'#' * int(bar_w * frac):-<{bar_w}}] " if bar_w >= 5 else ""
        text = f"{label}{bar}{stats}"
        note = note[: max(0, width - 1 - len(text) - 2)]
        return (f"{text}  {note}" if note else text)[: width - 1]

    def _draw(self) -> None:
        with self._lock:  # the timer thread and the caller draw the same line
            if self._stop.is_set() and self._timer is not None and threading.current_thread() is self._timer:
                return
            width = self.width or terminal_columns(self.stream)
            self._last = time.perf_counter()
            self.stream.write("\r" + self.line(width).ljust(width - 1))
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self.enabled:
            self.note = ""
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
