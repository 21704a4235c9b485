"""A phantom case (CT and label on one grid), its label values, and writing it as NIfTI."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Volume

BACKGROUND, LIVER, TUMOUR = 0, 1, 2


@dataclass
class Case:
    """A CT volume (float32 HU) and its label (uint8: 0 background, 1 liver, 2 tumour) on one grid."""

    name: str
    image: Volume
    label: Volume


def write_case(case: Case, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>_ct.nii.gz`` (int16 HU) and ``<name>_label.nii.gz`` (uint8) with their
    geometry, replacing earlier files of that name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{case.name}_ct.nii.gz", out / f"{case.name}_label.nii.gz"
    hu = np.clip(np.rint(case.image.array), -32768, 32767).astype(np.int16)
    io.write_volume(Volume(hu, case.image.geometry), paths[0], force=True)
    io.write_volume(Volume(case.label.array.astype(np.uint8), case.label.geometry), paths[1], force=True)
    return paths
