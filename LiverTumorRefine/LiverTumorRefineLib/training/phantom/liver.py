"""The liver: its shape among its neighbours, texture and label."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.body import body_fields
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.case import LIVER
from LiverTumorRefineLib.training.phantom.fields import Field, partial_volume, sample_field
from LiverTumorRefineLib.training.phantom.grid import Box, Grid
from LiverTumorRefineLib.training.phantom.shapes import Waves, cylinder, smin


@dataclass
class Liver:
    """The painted liver: its box, signed distance and occupancy on the box's voxels."""

    box: Box
    sdf: np.ndarray  # signed distance (mm) on the box's voxels
    occupancy: np.ndarray

    def depth(self, grid: Grid, point: np.ndarray) -> float:
        """Signed distance at the voxel nearest ``point`` (+inf outside the box)."""
        idx = grid.index(point)
        if idx is None or any(not (s.start <= i < s.stop) for i, s in zip(idx, self.box)):
            return math.inf
        return float(self.sdf[tuple(i - s.start for i, s in zip(idx, self.box))])


def _liver_shape(rng: np.random.Generator, an: Anatomy) -> tuple[Field, tuple[np.ndarray, np.ndarray]]:
    """The liver: smoothly united, warped lobes pressed against the wall and under the diaphragm,
    making room for its neighbours. Returns the field and its bounds."""
    u = rng.uniform
    lobes = an.organs["liver"]
    warp_mm = u(3, 10)
    warp = [Waves.draw(rng, 4, (60, 160), warp_mm) for _ in range(3)]
    blend, wall_gap, dome_gap = u(10, 25), u(-0.5, 3), u(3, 6)
    lo = np.min([lobe.bounds(3 * warp_mm)[0] for lobe in lobes], axis=0)
    hi = np.max([lobe.bounds(3 * warp_mm)[1] for lobe in lobes], axis=0)
    body = body_fields(an)
    rx, ry = an.vb_radii
    neighbours = [s for name in ("kidney", "stomach", "spleen", "heart", "gallbladder") for s in an.organs[name]]
    neighbours += [cylinder(y, x, r, r) for x, y, r in (an.aorta, an.ivc)]
    neighbours.append(cylinder(an.spine_y, 0.0, ry + 15, rx + 15))
    neighbours = [s for s in neighbours if np.all(s.bounds()[0] < hi) and np.all(s.bounds()[1] > lo)]
    gaps = u(-0.5, 4, len(neighbours))  # a fat plane, or organs touching with no visible border

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        wz, wy, wx = z + warp[0](z, y, x), y + warp[1](z, y, x), x + warp[2](z, y, x)
        f = lobes[0].sdf(wz, wy, wx)
        for lobe in lobes[1:]:
            f = smin(f, lobe.sdf(wz, wy, wx), blend)
        f = np.maximum(f, body(z, y, x)[2] + wall_gap)
        f = np.maximum(f, z - an.dome_z(y, x) + dome_gap)
        for shape, gap in zip(neighbours, gaps):
            f = np.maximum(f, gap - shape.sdf(z, y, x))
        return f

    return fn, (lo, hi)


def paint_liver(canvas: Canvas, rng: np.random.Generator, an: Anatomy) -> Liver | None:
    """Paint and label the liver with its texture; None if it misses the grid."""
    shape, bounds = _liver_shape(rng, an)
    box = canvas.grid.box(*bounds)
    if box is None:
        return None
    texture_hu = rng.uniform(1, 6)
    perfusion = Waves.draw(rng, 3, (40, 150), rng.uniform(0, 6))  # large-scale enhancement variation
    patchy = Waves.draw(rng, 4, (15, 50), rng.uniform(1.5, 4.5))  # parenchymal heterogeneity, about +-5-10 HU

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = shape(z, y, x)
        texture = texture_hu * rng.standard_normal(f.shape) + perfusion(z, y, x) + patchy(z, y, x)
        return np.stack(np.broadcast_arrays(f, texture))

    sdf, texture = sample_field(canvas.grid, box, fn, 3.0)
    occupancy = partial_volume(sdf)
    texture += an.phase.liver
    canvas.paint(box, occupancy, texture)
    canvas.label[box][sdf < 0] = LIVER
    return Liver(box, sdf, occupancy)
