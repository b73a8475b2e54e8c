"""A dependency-free progress line for training epochs (stderr, so --json stdout stays clean)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# A terminal line redrawn more often than this is unreadable, and each redraw costs the
# trainer a host sync to read the loss.
TTY_REDRAW_SECONDS = 0.2


class Progress:
    """Redraws one line in a terminal (at most every ``TTY_REDRAW_SECONDS``); elsewhere (logs,
    CI) prints about ten lines per epoch. The last step is always shown."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self._next_plain = 0.0
        self._next_redraw = 0.0  # perf_counter time

    def due(self, done: int) -> bool:
        """Whether :meth:`update` after ``done`` steps would draw (the caller reads the numbers
        only then)."""
        if not self.enabled:
            return False
        if done == self.total:
            return True
        if self.tty:
            return time.perf_counter() >= self._next_redraw
        return done / max(1, self.total) >= self._next_plain

    def update(self, done: int, images: int, loss: float | None = None,
               acc: float | None = None) -> None:
        """Draw the line if due; ``loss`` and ``acc`` are left out when None (a pass that
        does not train, such as the feature cache's)."""
        if not self.due(done):
            return
        now = time.perf_counter()
        fraction = done / max(1, self.total)
        self._next_plain = fraction + 0.1
        self._next_redraw = now + TTY_REDRAW_SECONDS
        rate = images / max(1e-9, now - self.start)
        width = 24
        bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
        scores = (f"loss {loss:.4f} acc {100 * acc:5.1f}% " if loss is not None
                  and acc is not None else "")
        line = f"{self.label} [{bar}] {done}/{self.total} {scores}{rate:,.0f} img/s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
