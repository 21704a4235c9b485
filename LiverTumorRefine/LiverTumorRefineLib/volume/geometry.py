"""A voxel array with its physical geometry, carried through the engine unchanged.

Array axes are (z, y, x) as in SimpleITK's ``GetArrayFromImage``; ``spacing``, ``origin`` and
``direction`` follow SimpleITK (x, y, z order, LPS, direction row-major 3x3).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a voxel grid (SimpleITK conventions: x, y, z; LPS)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array axis order (z, y, x), as the engine's array code wants it."""
        return (float(self.spacing[2]), float(self.spacing[1]), float(self.spacing[0]))

    def same_grid(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """True when both describe the same physical grid (size is checked separately)."""
        return (
            np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


@dataclass
class Volume:
    """A (z, y, x) array plus its geometry."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.geometry.spacing_zyx

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on the same grid holding ``array``."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match grid {self.array.shape}")
        return Volume(array, self.geometry)
