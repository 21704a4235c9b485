"""Progress: the engine's one progress type, and a bar on stderr for long CLI work.

Every long step takes ``progress(fraction, message)`` (``Progress``): fraction 0..1, a short
message; returning False asks the step to stop (it raises ``RefineCancelled``). ``report``
calls it, ``part`` maps a sub-step's 0..1 onto its share of the whole.

On a terminal: a bar redrawn in place at most 10 times a second. Redirected to a file (a
training run under nohup or a batch scheduler): one plain line per 5% so the log shows progress
without filling up with carriage returns.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from LiverTumorRefineLib.errors import RefineCancelled

Progress = Callable[[float, str], Optional[bool]]


def report(progress: Progress | None, fraction: float, message: str) -> None:
    """Tell ``progress`` (if any); raise ``RefineCancelled`` when it answers False."""
    if progress is not None and progress(fraction, message) is False:
        raise RefineCancelled()


def part(progress: Progress | None, start: float, end: float, prefix: str = "") -> Progress | None:
    """``progress`` for a sub-step whose own 0..1 covers ``start``..``end`` of the whole
    (``prefix`` goes before its messages)."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * float(fraction), prefix + message)


class ProgressBar:
    """Callable matching the engine's ``progress(fraction, message)``; never cancels."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30, log_step: float = 0.05) -> None:
        stream = sys.stderr if stream is None else stream  # looked up now: sys.stderr may have been replaced
        self.label, self.stream, self.width, self.log_step = label, stream, width, log_step
        self._last = 0.0
        self._logged = -1
        self._live = stream.isatty()

    def __call__(self, fraction: float, message: str = "") -> bool:
        fraction = min(max(fraction, 0.0), 1.0)
        if self._live:
            self._draw(fraction, message)
        else:
            self._log(fraction, message)
        return True

    def _draw(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last > 0.1 or fraction >= 1.0:
            filled = int(self.width * fraction)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {message[:40]:<40}")
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
            self._last = now

    def _log(self, fraction: float, message: str) -> None:
        step = int(fraction / self.log_step + 1e-9)
        if step > self._logged:
            self._logged = step
            self.stream.write(f"{self.label} {fraction * 100:5.1f}% {message}\n")
            self.stream.flush()
