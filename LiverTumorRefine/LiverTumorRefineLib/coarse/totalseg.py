"""TotalSegmentator as a coarse source: its ``liver_vessels`` task outputs ``liver_tumor``.

TotalSegmentator is an optional, separately installed tool (``pip install TotalSegmentator``,
or the TotalSegmentator extension in 3D Slicer, which installs the same command). It is run as
a subprocess on the CT file; its tumour mask becomes the coarse mask. When it is absent the
error says how to get it and which built-in coarse sources need nothing more.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Volume

EXECUTABLE = "TotalSegmentator"
TASK = "liver_vessels"  # outputs liver_vessels.nii.gz and liver_tumor.nii.gz
TUMOUR_FILE = "liver_tumor.nii.gz"
INSTALL_HINT = ("TotalSegmentator is not installed: install it with `pip install TotalSegmentator` (its "
                "liver_vessels model is downloaded on first use), or in 3D Slicer install the TotalSegmentator "
                "extension and restart. Without it, use one click per lesion (--seeds) or the built-in automatic "
                "coarse network (--auto-coarse).")


def find_executable() -> str | None:
    """The ``TotalSegmentator`` command on PATH (or beside this Python), or None."""
    found = shutil.which(EXECUTABLE)
    if found:
        return found
    beside = Path(sys.executable).with_name(EXECUTABLE)
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def command(ct_path: str | os.PathLike, out_dir: str | os.PathLike, device: str, executable: str) -> list[str]:
    """The TotalSegmentator command line for our task and ``device`` ("auto", "cpu", "cuda")."""
    args = [executable, "-i", str(ct_path), "-o", str(out_dir), "--task", TASK]
    if device == "cpu":
        args += ["--device", "cpu"]
    elif device == "cuda":
        args += ["--device", "gpu"]
    return args


def tumour_mask(ct_path: str | os.PathLike, reference: Volume, device: str = "auto") -> np.ndarray:
    """TotalSegmentator's liver tumour mask for the CT file, on ``reference``'s grid (the CT as
    the engine holds it, reoriented to LPS). RefineError when the tool is absent or fails."""
    executable = find_executable()
    if executable is None:
        raise RefineError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="livertumorrefine-totalseg-") as work:
        try:
            done = subprocess.run(command(ct_path, work, device, executable), capture_output=True, text=True)
        except OSError as exc:
            raise RefineError(f"TotalSegmentator could not be started ({exc}): reinstall it. {INSTALL_HINT}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RefineError(f"TotalSegmentator failed (exit {done.returncode}): {' / '.join(tail) or 'no message'}. "
                              "Check that its liver_vessels model can be downloaded or is installed.")
        out = Path(work) / TUMOUR_FILE
        if not out.is_file():
            raise RefineError(f"TotalSegmentator finished but wrote no {TUMOUR_FILE}: this version may not have the "
                              f"{TASK} task; update it with `pip install -U TotalSegmentator`.")
        mask = io.resample_mask_to(io.to_lps(io.read_image(out)), io.to_sitk(reference))
        return io.from_sitk(mask).array > 0
