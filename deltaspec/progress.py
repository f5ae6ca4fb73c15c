"""A minimal progress bar on stderr (no dependency): shown on a terminal, silent otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    """`Progress(total, "layers")`; call `update()` per item and `close()` at the end.

    enabled=None shows it only when stderr is a terminal, so pipes, CI logs and JSON/CSV on stdout
    stay clean.
    """

    def __init__(self, total: int, unit: str = "items", enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.unit, self.n = total, unit, 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.n >= self.total):
            self._last = now
            frac = self.n / self.total if self.total else 1.0
            bar = "#" * int(24 * frac)
            self.stream.write(f"\r[{bar:<24}] {self.n}/{self.total} {self.unit} {now - self.t0:6.1f}s {note[:40]:<40}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
