"""A dependency-free progress line for training epochs (stderr, so --json stdout stays clean)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one line in a terminal; elsewhere (logs, CI) prints about ten lines per epoch."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self._next_plain = 0.0

    def update(self, done: int, images: int, loss: float, acc: float) -> None:
        if not self.enabled:
            return
        fraction = done / max(1, self.total)
        if not self.tty and fraction < self._next_plain and done != self.total:
            return
        self._next_plain = fraction + 0.1
        rate = images / max(1e-9, time.perf_counter() - self.start)
        width = 24
        bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
        line = (f"{self.label} [{bar}] {done}/{self.total} loss {loss:.4f} "
                f"acc {100 * acc:5.1f}% {rate:,.0f} img/s")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
