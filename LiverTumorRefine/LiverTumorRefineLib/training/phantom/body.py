"""Painting the body from outside in: skin, fat, wall muscle, cavity, lung bases and heart."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.fields import Field, partial_volume, sample_field, voxel_footprint
from LiverTumorRefineLib.training.phantom.organs import paint_organ

_COARSE_MM = 4.0  # sampling step of big smooth fields before upsampling


def body_fields(an: Anatomy) -> Field:
    """Skin, muscle and cavity surfaces as three offsets of one superellipse cylinder (mm)."""

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        wobble = an.outline(z, y, x)
        out = []
        for depth in (2, 1, 0):
            a, front, back = an.layer(depth, x)
            b = np.where(y < 0, front, back)
            rho = (np.abs(x / a) ** an.power + np.abs(y / b) ** an.power) ** (1.0 / an.power)
            out.append((rho - 1.0) * 0.5 * (a + b) + wobble)
        return np.stack(np.broadcast_arrays(*out))

    return fn


def paint_body(canvas: Canvas, rng: np.random.Generator, an: Anatomy) -> np.ndarray:
    """Air, subcutaneous fat, wall muscle and visceral fat; returns the cavity occupancy."""
    body = body_fields(an)

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        surfaces = body(z, y, x)
        texture = rng.standard_normal(surfaces.shape[1:]).astype(np.float32)  # mesenteric strands
        return np.concatenate([surfaces, texture[None]])

    skin, muscle, cavity, texture = sample_field(canvas.grid, canvas.grid.full, fn, _COARSE_MM)
    footprint = voxel_footprint(skin)  # offsets of one shape: one footprint serves all three
    hu = an.hu
    image = canvas.image
    image[...] = -1000.0
    image += partial_volume(skin, footprint=footprint) * (hu["fat"] + 1000.0)
    image += partial_volume(muscle, footprint=footprint) * (hu["muscle"] - hu["fat"])
    inside = partial_volume(cavity, footprint=footprint)
    texture *= rng.uniform(5, 25)
    texture += hu["visceral_fat"] - hu["muscle"]
    image += inside * texture
    return inside


def paint_thorax(canvas: Canvas, rng: np.random.Generator, an: Anatomy, cavity: np.ndarray) -> None:
    """Lung bases above the diaphragm (deep posterior recesses beside the liver) and the heart."""
    grid = canvas.grid
    apex, height = an.dome[0], an.dome[1]
    box = grid.box((apex - 2.5 * height - 10, -1e4, -1e4), (1e4, 1e4, 1e4))
    if box is None:
        return
    thickness = rng.uniform(3, 6)

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dome = an.dome_z(y, x)
        return np.stack(np.broadcast_arrays(dome - z, np.abs(z - dome + thickness / 2) - thickness / 2))

    lung, diaphragm = sample_field(grid, box, fn, _COARSE_MM)
    canvas.paint(box, partial_volume(lung) * cavity[box], an.hu["lung"])
    canvas.paint(box, partial_volume(diaphragm) * cavity[box], an.hu["muscle"])
    paint_organ(canvas, an.organs["heart"][0], 0.5 * (an.hu["muscle"] + an.phase.aorta), cavity)
