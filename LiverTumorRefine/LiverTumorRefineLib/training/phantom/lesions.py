"""Liver lesions: their shapes, where they go, and painting them with their look."""
from __future__ import annotations

import math

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.case import TUMOUR
from LiverTumorRefineLib.training.phantom.fields import blobs, partial_volume, sample_field, voxel_footprint
from LiverTumorRefineLib.training.phantom.grid import Grid, intersect, sub_box
from LiverTumorRefineLib.training.phantom.liver import Liver
from LiverTumorRefineLib.training.phantom.look import draw_look, lesion_fields
from LiverTumorRefineLib.training.phantom.shapes import Ellipsoid, Lesion, Waves, rotation, unit


def _draw_lesion(rng: np.random.Generator, centre: np.ndarray, radius: float) -> Lesion:
    u = rng.uniform
    parts = [Ellipsoid(centre, radius * u(0.75, 1.25, 3), rotation(rng))]
    for _ in range(rng.integers(0, 4)):
        offset = unit(rng.normal(size=3)) * radius * u(0.4, 0.8)
        parts.append(Ellipsoid(centre + offset, radius * u(0.3, 0.6, 3), rotation(rng)))
    ripples = Waves.draw(rng, 5, (max(4.0, 1.5 * radius), max(8.0, 4 * radius)), radius * u(0.02, 0.1))
    return Lesion(centre, radius, tuple(parts), ripples)


def _place_lesions(rng: np.random.Generator, grid: Grid, liver: Liver, n: int) -> list[Lesion]:
    """Centres inside the liver: mostly deep, a quarter straddling the surface (clipped there)."""
    lesions: list[Lesion] = []
    liver_size = float((-liver.sdf).max())  # deepest point: half the liver's thickness
    for _ in range(n):
        if rng.random() < 0.3:  # large (often heterogeneous) tumours: 24-60 mm across
            radius = rng.uniform(12, 30)
        else:  # 5-60 mm across, log-uniform: small lesions stay common
            radius = 0.5 * math.exp(rng.uniform(math.log(5), math.log(60)))
        radius = min(radius, 0.6 * liver_size)
        at_edge = rng.random() < 0.25
        for _attempt in range(6):
            centre = _find_centre(rng, grid, liver, radius, at_edge, lesions)
            if centre is not None:
                lesions.append(_draw_lesion(rng, centre, radius))
                break
            radius = max(2.5, 0.75 * radius)
    return lesions


def _find_centre(rng: np.random.Generator, grid: Grid, liver: Liver, radius: float, at_edge: bool,
                 others: list[Lesion]) -> np.ndarray | None:
    """A random liver voxel at the wanted depth, inside the stack, clear of other lesions."""
    lo = np.array([s.start for s in liver.box])
    hi = np.array([s.stop for s in liver.box])
    z_margin = min(radius, 0.5 * (grid.shape[0] - 1) * grid.spacing[0])
    z_lo, z_hi = grid.start[0] + z_margin, grid.start[0] + (grid.shape[0] - 1) * grid.spacing[0] - z_margin
    for idx in rng.integers(lo, hi, size=(400, 3)):
        f = liver.sdf[tuple(idx - lo)]
        if not (-0.5 * radius < f < 0 if at_edge else f < -0.7 * radius):
            continue
        centre = grid.start + idx * grid.spacing
        if not z_lo <= centre[0] <= z_hi:
            continue
        if all(np.linalg.norm(centre - o.centre) > 1.1 * (radius + o.radius) + 2 for o in others):
            return centre
    return None


_LESION_REACH_MM = 11.0  # >= 1.3 halo_mm and 2 soft_mm + margin_mm


def paint_lesions(canvas: Canvas, rng: np.random.Generator, an: Anatomy, liver: Liver, n: int) -> None:
    """Place ``n`` lesions in the liver and paint each with its drawn look; label them tumour."""
    grid = canvas.grid
    for lesion in _place_lesions(rng, grid, liver, n):
        look = draw_look(rng, an.phase, lesion)
        # the widest halo or soft margin, for every look: the box (hence the sampled shape and
        # the label) does not depend on the appearance
        box = grid.box(*lesion.bounds(_LESION_REACH_MM + 2 * float(grid.spacing.max())))
        box = None if box is None else intersect(box, liver.box)
        if box is None:
            continue
        shape_fn, detail_fn, shape_names, detail_names = lesion_fields(look, lesion)
        # big lesions are smooth on the voxel scale: sample their shape coarser and upsample
        step = max(0.8, lesion.radius / 10)
        fields = dict(zip(shape_names, sample_field(grid, box, shape_fn, step)))
        fields.update(zip(detail_names, sample_field(grid, box, detail_fn, min(step, 1.5))))
        f = fields["f"]
        in_liver = sub_box(liver.box, box)
        liver_occ = liver.occupancy[in_liver]
        footprint = voxel_footprint(f)
        if look.halo_hu:  # darker parenchyma fading out over halo_mm, painted over by the tumour
            h = np.clip(1.0 - (f + 0.3 * look.halo_mm * fields["margin"]) / look.halo_mm, 0.0, 1.0)
            h = h * h * (3.0 - 2.0 * h)
            h *= liver_occ
            h *= canvas.label[box] != TUMOUR
            canvas.image[box] += look.halo_hu * h
        visible = f + look.margin_mm * fields["margin"] if look.margin_mm else f
        frac = np.minimum(partial_volume(visible, look.soft_mm, None if look.margin_mm else footprint), liver_occ)
        value = an.phase.liver + look.delta + fields["texture"]
        if look.mottle_hu:
            value += look.mottle_hu * blobs(rng, f.shape, grid.spacing, look.mottle_mm)
        if look.rim_delta:
            rim = 1.0 - partial_volume(f + fields["rim"], footprint=footprint)
            if "cover" in fields:
                rim *= np.clip(0.5 + 1.5 * (fields["cover"] - look.rim_cover), 0.0, 1.0)
            value += look.rim_delta * rim
        if look.capsule_hu:
            ring = 1.0 - partial_volume(f + look.capsule_mm, footprint=footprint)
            value += (an.phase.liver + look.capsule_hu - value) * ring
        if look.necrosis_hu is not None:
            core = partial_volume(fields["core"], look.core_soft)
            value += (look.necrosis_hu + 0.3 * fields["texture"] - value) * core
        canvas.paint(box, frac, value)
        canvas.label[box][(f < 0) & (liver.sdf[in_liver] < 0)] = TUMOUR
