"""Painting organs: ellipsoid organs, the liver's neighbours, hollow stomach and bowel."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.fields import blobs, partial_volume, sample_field
from LiverTumorRefineLib.training.phantom.grid import Box, Coords
from LiverTumorRefineLib.training.phantom.shapes import Ellipsoid


def paint_organ(canvas: Canvas, shape: Ellipsoid, value: float | Callable[[Coords], np.ndarray],
                 clip: np.ndarray | Callable[[Box], np.ndarray] | None = None) -> None:
    """Paint an ellipsoid organ; ``value`` may depend on position; ``clip`` (a full-grid
    occupancy, or a function of the box giving one) keeps it where it may be."""
    box = canvas.grid.box(*shape.bounds(2 * float(canvas.grid.spacing.max())))
    if box is None:
        return
    frac = partial_volume(sample_field(canvas.grid, box, shape.sdf))
    if clip is not None:
        frac *= clip(box) if callable(clip) else clip[box]
    canvas.paint(box, frac, value if np.isscalar(value) else value(canvas.grid.coords(box)))


def _shrunk(shape: Ellipsoid, by: float) -> Ellipsoid:
    return Ellipsoid(shape.centre, np.maximum(shape.radii - by, 1.0), shape.rot)


def paint_vessels_and_organs(canvas: Canvas, rng: np.random.Generator, an: Anatomy, cavity: np.ndarray) -> None:
    """Aorta, IVC, kidneys, spleen, stomach and gallbladder: the liver's neighbours."""
    u = rng.uniform
    grid, ph = canvas.grid, an.phase
    z_span = (grid.start[0] - 20, grid.start[0] + grid.shape[0] * grid.spacing[0] + 20)
    for (x, y, r), value in ((an.aorta, ph.aorta), (an.ivc, 0.5 * (ph.portal + ph.hepatic))):
        tilt = rng.normal(0, 6, 2)
        canvas.paint_tube(np.array([z_span[0], y - tilt[0], x - tilt[1]]), np.array([z_span[1], y + tilt[0], x + tilt[1]]),
                          r, r * u(0.9, 1.1), value)
    for kidney in an.organs["kidney"]:
        paint_organ(canvas, kidney, ph.kidney_cortex, cavity)
        paint_organ(canvas, _shrunk(kidney, u(4, 8)), ph.kidney_medulla, cavity)
        sinus = kidney.centre + np.array([0, -0.3 * kidney.radii[1], -np.sign(kidney.centre[2]) * 0.6 * kidney.radii[2]])
        paint_organ(canvas, Ellipsoid(sinus, kidney.radii * 0.45, kidney.rot), an.hu["visceral_fat"], cavity)
    for spleen in an.organs["spleen"]:
        paint_organ(canvas, spleen, ph.spleen + u(-10, 10), cavity)
    for stomach in an.organs["stomach"]:
        paint_hollow(canvas, rng, stomach, an, cavity, _STOMACH)
    for gallbladder in an.organs["gallbladder"]:
        paint_organ(canvas, gallbladder, an.hu["muscle"] + u(0, 30), cavity)
        paint_organ(canvas, _shrunk(gallbladder, u(1.5, 3)), u(0, 25), cavity)


_STOMACH = (0.5, 0.4, 0.1, 0.0)  # chances of gas over fluid, fluid only, oral contrast, faeces
BOWEL = (0.4, 0.3, 0.1, 0.2)


def paint_hollow(canvas: Canvas, rng: np.random.Generator, shape: Ellipsoid, an: Anatomy,
                  clip: np.ndarray | Callable[[Box], np.ndarray], contents: Sequence[float]) -> None:
    """Stomach or bowel: an enhancing wall around gas over fluid, fluid, oral contrast or faeces."""
    u = rng.uniform
    paint_organ(canvas, shape, an.hu["muscle"] + u(0, 40), clip)
    kind = rng.choice(4, p=contents)
    fluid = (u(0, 30), u(0, 30), u(150, 400), u(-250, -50))[kind]
    mottle = 80.0 if kind == 3 else 5.0  # faeces: gas bubbles in a soft matrix
    level = shape.centre[1] + shape.radii.max() * (u(-1.2, 0.2) if kind == 0 else -2.0)  # gas rises anteriorly
    gas = u(-1000, -900)

    def content(c: Coords) -> np.ndarray:
        z, y, x = c
        gas_frac = np.clip(0.5 - (y - level) / canvas.grid.spacing[1], 0.0, 1.0)
        texture = blobs(rng, (z.shape[0], y.shape[1], x.shape[2]), canvas.grid.spacing, 4.0)
        return fluid + mottle * texture + gas_frac * (gas - fluid)

    paint_organ(canvas, _shrunk(shape, u(2, 5)), content, clip)
