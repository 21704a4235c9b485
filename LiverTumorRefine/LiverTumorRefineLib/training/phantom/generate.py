"""Generating phantoms: one case from its seed, painted outside in, and a series of them written."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import draw_anatomy
from LiverTumorRefineLib.training.phantom.body import paint_body, paint_thorax
from LiverTumorRefineLib.training.phantom.bowel import paint_bowel
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.case import Case, write_case
from LiverTumorRefineLib.training.phantom.lesions import paint_lesions
from LiverTumorRefineLib.training.phantom.liver import paint_liver
from LiverTumorRefineLib.training.phantom.organs import paint_vessels_and_organs
from LiverTumorRefineLib.training.phantom.scanner import add_scanner
from LiverTumorRefineLib.training.phantom.skeleton import paint_ribs, paint_spine
from LiverTumorRefineLib.training.phantom.vessels import paint_liver_vessels
from LiverTumorRefineLib.training.phantom.voxelgrid import draw_grid
from LiverTumorRefineLib.volume.geometry import Geometry, Volume


def make_phantom(seed: int, size_xy: int | None = None, n_slices: int | None = None,
                 spacing: Sequence[float] | None = None, n_tumours: int | None = None) -> Case:
    """A random abdominal CT phantom named ``phantom_<seed>``, the same for the same arguments.

    ``spacing`` is (x, y, z) mm like ``Geometry.spacing``; left out, in-plane spacing is drawn
    from 0.6-1.5 mm and slice spacing from 1-5 mm. ``size_xy`` (in-plane voxels) and
    ``n_slices`` default to a field of view over the abdomen and a stack over the liver, within
    a budget of ``MAX_VOXELS``. ``n_tumours`` (default 1-6) lesions are requested; a very small
    liver section may hold fewer.
    """
    rng = np.random.default_rng(seed)
    an = draw_anatomy(rng)
    grid = draw_grid(rng, an, size_xy, n_slices, spacing)
    canvas = Canvas(grid, np.empty(grid.shape, np.float32), np.zeros(grid.shape, np.uint8))
    cavity = paint_body(canvas, rng, an)
    paint_thorax(canvas, rng, an, cavity)
    paint_spine(canvas, rng, an)
    paint_ribs(canvas, rng, an)
    paint_vessels_and_organs(canvas, rng, an, cavity)
    liver = paint_liver(canvas, rng, an)
    paint_bowel(canvas, rng, an, cavity, liver)
    if liver is not None:
        paint_liver_vessels(canvas, rng, an, liver)
        paint_lesions(canvas, rng, an, liver, int(rng.integers(1, 7)) if n_tumours is None else n_tumours)
    add_scanner(canvas, rng)
    shift = np.array([rng.uniform(-700, 100), rng.uniform(-40, 40), rng.uniform(-30, 30)])  # table position
    origin = grid.start + shift
    geometry = Geometry(spacing=tuple(float(v) for v in grid.spacing[::-1]),
                        origin=tuple(float(v) for v in origin[::-1]))
    return Case(f"phantom_{seed}", Volume(canvas.image, geometry), Volume(canvas.label, geometry))


def write_phantoms(out_dir: str | Path, n_cases: int, seed: int) -> list[Path]:
    """Generate and write ``n_cases`` phantoms (case i uses seed ``seed + i``); returns the CT paths."""
    return [write_case(make_phantom(seed + i), out_dir)[0] for i in range(n_cases)]
