"""Bowel loops packed around the liver."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.grid import Box, intersect, sub_box
from LiverTumorRefineLib.training.phantom.liver import Liver
from LiverTumorRefineLib.training.phantom.organs import BOWEL, paint_hollow


def paint_bowel(canvas: Canvas, rng: np.random.Generator, an: Anatomy, cavity: np.ndarray, liver: Liver | None) -> None:
    """Bowel loops in the cavity, packed against the liver but never inside it or other organs."""
    solid = [s for name in ("kidney", "spleen", "stomach", "gallbladder") for s in an.organs[name]]

    def outside_liver(box: Box) -> np.ndarray:
        clip = cavity[box].copy()
        overlap = None if liver is None else intersect(box, liver.box)
        if overlap is not None:
            clip[sub_box(box, overlap)] *= 1.0 - liver.occupancy[sub_box(liver.box, overlap)]
        return clip

    for loop in an.organs["bowel"]:
        inside_liver = liver is not None and liver.depth(canvas.grid, loop.centre) < 0.5 * loop.radii.max()
        if inside_liver or any(float(s.sdf(*loop.centre)) < 5.0 for s in solid):
            continue
        paint_hollow(canvas, rng, loop, an, outside_liver, BOWEL)
