"""A text progress bar on stderr for long CLI work (refinement, training)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable matching the engine's ``progress(fraction, message)``; redraws at most 10x/s."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream, width
        self._last = 0.0
        self._live = stream.isatty()

    def __call__(self, fraction: float, message: str = "") -> bool:
        now = time.monotonic()
        if self._live and (now - self._last > 0.1 or fraction >= 1.0):
            filled = int(self.width * min(max(fraction, 0.0), 1.0))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {message[:40]:<40}")
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
            self._last = now
        return True
