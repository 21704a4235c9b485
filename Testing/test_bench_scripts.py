"""Every benchmark script in bench/ starts: its imports resolve (a moved module once broke one
unnoticed) and ``--help`` prints its usage. Helpers imported by the scripts are not scripts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
HELPERS = {"cases.py", "rss.py"}  # imported by the scripts, no command line of their own
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_starts(script):
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
