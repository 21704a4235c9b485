"""The image and label being painted, with partial volume, and tapered tubes (vessels, ribs)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LiverTumorRefineLib.training.phantom.grid import Box, Grid, intersect, sub_box


@dataclass
class Canvas:
    """The image (HU) and label being painted, on their grid."""

    grid: Grid
    image: np.ndarray
    label: np.ndarray

    def paint(self, box: Box, frac: np.ndarray, value: float | np.ndarray) -> None:
        """Mix ``value`` into the image by ``frac`` (partial volume)."""
        sub = self.image[box]
        sub += frac * (value - sub)

    def paint_tube(self, a: np.ndarray, b: np.ndarray, ra: float, rb: float, value: float,
                   clip: tuple[Box, np.ndarray] | None = None) -> None:
        """Paint a tapered tube from ``a`` to ``b``; ``clip`` (box, occupancy) limits it to an organ."""
        r = max(ra, rb) + 2 * float(self.grid.spacing.max())
        box = self.grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if clip is not None and box is not None:
            box = intersect(box, clip[0])
        if box is None:
            return
        frac = _tube_occupancy(self.grid, box, a, b, ra, rb)
        if clip is not None:
            frac *= clip[1][sub_box(clip[0], box)]
        self.paint(box, frac, value)


def _tube_occupancy(grid: Grid, box: Box, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Occupancy of a tapered capsule, with the footprint taken from the exact local normal."""
    z, y, x = grid.coords(box)
    d = (z - a[0], y - a[1], x - a[2])
    ab = b - a
    t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    q = [d[i] - t * ab[i] for i in range(3)]
    dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    s = grid.spacing
    width = (np.abs(q[0]) * s[0] + np.abs(q[1]) * s[1] + np.abs(q[2]) * s[2]) / np.maximum(dist, 1e-3)
    width = np.maximum(width, float(s.min()))
    return np.clip(0.5 - (dist - (ra + t * (rb - ra))) / width, 0.0, 1.0)
