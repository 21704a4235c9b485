"""Random voxel grid: slice spacing as clinical series have it, matrix size and field of view."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.grid import Grid

MAX_VOXELS = 9_000_000  # keeps generation near a second per case on one core


def _draw_slice_mm(rng: np.random.Generator) -> float:
    """Slice spacing as clinical series have it: 5 mm 30%, 4-5 mm 10%, 2.5 or 3 mm 20%,
    1-2 mm 20%, anything in 1-5 mm 20%."""
    r = rng.random()
    if r < 0.3:
        return 5.0
    if r < 0.4:
        return float(rng.choice((4.0, rng.uniform(4.0, 5.0))))
    if r < 0.6:
        return float(rng.choice((2.5, 3.0)))
    if r < 0.8:
        return float(rng.choice((1.0, 1.25, 1.5, 2.0)))
    return rng.uniform(1.0, 5.0)


def draw_grid(rng: np.random.Generator, an: Anatomy, size_xy: int | None, n_slices: int | None,
               spacing: Sequence[float] | None) -> Grid:
    """Spacing, size and placement. The field of view covers the abdomen when the voxel budget
    allows; otherwise (fine spacing) it is a crop centred towards the liver."""
    if spacing is None:
        s_xy = rng.uniform(0.6, 1.5)
        s_z = _draw_slice_mm(rng)
        spacing = (s_xy, s_xy, s_z)
    s_x, s_y, s_z = (float(s) for s in spacing)
    z_lo = an.z_bot - rng.uniform(0, 25)
    z_hi = an.z_top + rng.uniform(0, 25)
    nz = n_slices if n_slices is not None else max(8, round((z_hi - z_lo) / s_z) + 1)
    if size_xy is None:
        size_xy = int(np.clip(round(rng.uniform(300, 440) / s_x), 192, 320))
        if n_slices is None:  # over budget: crop in-plane first, then shorten the stack
            size_xy = min(size_xy, max(192, math.isqrt(MAX_VOXELS // nz)))
    if n_slices is None:
        nz = min(nz, MAX_VOXELS // (size_xy * size_xy))
    extent = (nz - 1) * s_z
    z0 = rng.uniform(min(z_lo, z_hi - extent), max(z_lo, z_hi - extent))  # short stacks keep part of the liver
    half_width, front, back = an.extent
    y0 = _fov_centre(rng, size_xy * s_y, -front, back, -0.1 * front) - (size_xy - 1) / 2 * s_y
    x0 = _fov_centre(rng, size_xy * s_x, -half_width, half_width, -0.4 * an.cavity[0]) - (size_xy - 1) / 2 * s_x
    return Grid((int(nz), size_xy, size_xy), np.array([s_z, s_y, s_x]), np.array([z0, y0, x0]))


def _fov_centre(rng: np.random.Generator, fov: float, body_lo: float, body_hi: float, liver: float) -> float:
    """Centre of the field of view along one in-plane axis: the body's middle when it fits,
    else as close to the liver as possible without leaving the body."""
    if fov >= body_hi - body_lo + 20:
        return 0.5 * (body_lo + body_hi) + rng.uniform(-10, 10)
    return float(np.clip(liver + rng.uniform(-20, 20), body_lo - 10 + fov / 2, body_hi + 10 - fov / 2))
