"""The voxel grid in local millimetres, and boxes (index ranges) on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Box = tuple[slice, slice, slice]
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable (z,1,1), (1,y,1), (1,1,x) in mm


@dataclass(frozen=True)
class Grid:
    """A voxel grid placed in local millimetres, (z, y, x) order."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # (z, y, x) mm
    start: np.ndarray  # local mm of the centre of voxel (0, 0, 0)

    @property
    def full(self) -> Box:
        """The whole grid as a box."""
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Voxels whose centres lie in the local-mm box [lo, hi] (clipped), or None if empty."""
        i0 = np.maximum(np.ceil((np.asarray(lo) - self.start) / self.spacing), 0).astype(int)
        i1 = np.minimum(np.floor((np.asarray(hi) - self.start) / self.spacing) + 1, self.shape).astype(int)
        if np.any(i1 <= i0):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))  # type: ignore[return-value]

    def coords(self, box: Box, counts: Sequence[int] | None = None) -> Coords:
        """Local coordinates of the box's voxel centres, or of ``counts`` points per axis evenly
        spanning its first to last voxel centre (the coarse grid that ``upsample`` expects)."""
        axes = []
        for ax, s in enumerate(box):
            first = self.start[ax] + s.start * self.spacing[ax]
            last = self.start[ax] + (s.stop - 1) * self.spacing[ax]
            n = s.stop - s.start if counts is None else counts[ax]
            shape = [1, 1, 1]
            shape[ax] = n
            axes.append(np.linspace(first, last, n, dtype=np.float32).reshape(shape))
        return axes[0], axes[1], axes[2]

    def index(self, point: np.ndarray) -> tuple[int, int, int] | None:
        """Nearest voxel of a local-mm point, or None outside the grid."""
        idx = np.rint((point - self.start) / self.spacing).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.shape):
            return None
        return int(idx[0]), int(idx[1]), int(idx[2])


def box_shape(box: Box) -> tuple[int, int, int]:
    """Voxel counts of a box along (z, y, x)."""
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def sub_box(outer: Box, inner: Box) -> Box:
    """``inner`` (grid indices, contained in ``outer``) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner))  # type: ignore


def intersect(a: Box, b: Box) -> Box | None:
    """The overlap of two boxes, or None if they do not overlap."""
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]
