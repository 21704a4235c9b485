"""The refinement case: a CT with its truth and coarse tumour masks on one grid.

Training, validation, the benchmarks and the tests all pass cases in this one form (datasets and
phantoms load a CT with its label map, ``phantom.Case``; ``trainset.with_coarse`` turns those into
refinement cases by adding coarse masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class RefineCase:
    """CT in HU, truth and coarse tumour masks (bool), all (z, y, x) on one grid with ``spacing_zyx``
    in mm. ``liver``: the liver mask where the source has one; ``set``: which collection the case
    belongs to in a benchmark (phantoms, lits117, real, ...)."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    coarse: np.ndarray
    spacing_zyx: tuple[float, ...]
    liver: Optional[np.ndarray] = None
    set: str = ""
