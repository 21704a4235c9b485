"""Resident memory of this process, for the benchmarks (Linux /proc; getrusage elsewhere)."""
from __future__ import annotations

import resource
from pathlib import Path


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size in MB."""
    current = _status_mb("VmRSS")
    return float("nan") if current is None else current


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) where Linux allows it (/proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last reset (VmHWM), else since the process started."""
    peak = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak
