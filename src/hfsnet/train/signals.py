"""Graceful stop on SIGINT/SIGTERM: finish the step, save, exit; a second SIGINT exits at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class GracefulStop:
    """Context manager recording the first SIGINT/SIGTERM in ``signum`` instead of dying.

    The trainer polls ``signum`` after every step. After the first signal SIGINT gets its default
    handler back, so a second Ctrl-C raises KeyboardInterrupt immediately; checkpoints are written
    atomically, so that cannot corrupt one.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
