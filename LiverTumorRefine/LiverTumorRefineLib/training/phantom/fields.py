"""Sampling implicit fields on the grid (coarse, then upsampled) and partial volume from them."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.training.phantom.grid import Box, Grid, box_shape

Field = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def upsample(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of (C, z, y, x) or (z, y, x) samples whose corner points coincide with
    the corner voxels of ``shape`` (``Grid.coords`` with counts)."""
    if coarse.shape[-3:] == tuple(shape):
        return np.ascontiguousarray(coarse, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))
    t = t[None] if t.ndim == 4 else t[None, None]
    out = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    return (out if coarse.ndim == 4 else out[0]).numpy()


def sample_field(grid: Grid, box: Box, fn: Field, step_mm: float | None = None) -> np.ndarray:
    """Evaluate ``fn`` on the box's voxels; with ``step_mm``, on a grid about that coarse and
    upsample. ``fn`` may return (C, z, y, x) for several fields sharing the coarse grid."""
    shape = box_shape(box)
    if step_mm is None:
        return np.ascontiguousarray(np.broadcast_to(fn(*grid.coords(box)), shape), dtype=np.float32)
    counts = [min(n, max(2, math.ceil((n - 1) * sp / step_mm) + 1)) for n, sp in zip(shape, grid.spacing)]
    coarse = fn(*grid.coords(box, counts))
    coarse = np.broadcast_to(coarse, coarse.shape[:-3] + tuple(counts))
    return upsample(coarse, shape)


def voxel_footprint(f: np.ndarray) -> np.ndarray:
    """How much ``f`` changes across each voxel: sum over axes of the mean |difference| to the
    two neighbours. Along the surface normal this is the voxel's projected width."""
    w = np.zeros_like(f)
    for ax in range(3):
        n = f.shape[ax]
        if n < 2:
            continue
        d = np.abs(np.diff(f, axis=ax))
        d *= 0.5
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, n - 1), slice(1, n)
        w[tuple(lo)] += d
        w[tuple(hi)] += d
    return w


def partial_volume(f: np.ndarray, soft_mm: float = 0.0, footprint: np.ndarray | None = None) -> np.ndarray:
    """Fraction of each voxel inside ``f < 0`` (``f`` roughly a distance in mm); ``soft_mm``
    widens the edge beyond the voxel size (blurred lesion margins)."""
    w = voxel_footprint(f) if footprint is None else footprint.copy()
    w += 1e-3 + 2.0 * soft_mm
    out = np.divide(f, w)
    np.subtract(0.5, out, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def blobs(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, size_mm: float) -> np.ndarray:
    """Random blobs about ``size_mm`` across, roughly unit variance: coarse noise upsampled."""
    counts = [min(n, max(2, math.ceil((n - 1) * s / size_mm) + 1)) for n, s in zip(shape, spacing)]
    return upsample(rng.standard_normal(counts).astype(np.float32), shape)
