"""Painting the spine, its muscles, and the ribs."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.fields import partial_volume
from LiverTumorRefineLib.training.phantom.grid import Coords
from LiverTumorRefineLib.training.phantom.organs import paint_organ
from LiverTumorRefineLib.training.phantom.shapes import cylinder


def paint_spine(canvas: Canvas, rng: np.random.Generator, an: Anatomy) -> None:
    """Vertebral bodies with cortex and discs, canal and arch, paraspinal and psoas muscles."""
    u = rng.uniform
    hu, grid = an.hu, canvas.grid
    rx, ry = an.vb_radii
    canal_r = u(7, 10)
    canal_y = an.spine_y + ry + canal_r + u(1, 3)
    for side in (-1, 1):
        paint_organ(canvas, cylinder(canal_y + u(10, 20), side * u(25, 35), u(18, 28), u(18, 28)), hu["muscle"])
        top = np.array([grid.start[0] + grid.shape[0] * grid.spacing[0], an.spine_y - u(0, 5), side * (rx + u(8, 14))])
        bottom = top - np.array([grid.shape[0] * grid.spacing[0], 0, -side * 10])
        canvas.paint_tube(top, bottom, u(4, 8), u(12, 22), hu["muscle"] + u(-5, 5))  # psoas widens caudally
    pitch, disc, disc_hu, cortex = u(27, 36), u(5, 10), u(70, 110), u(1.5, 2.5)
    phase = u(0, pitch)

    def vertebra(c: Coords) -> np.ndarray:
        z, y, x = c
        f = cylinder(an.spine_y, 0.0, ry, rx).sdf(z, y, x)
        value = hu["cancellous"] + (hu["bone"] - hu["cancellous"]) * (1.0 - partial_volume(f + cortex))
        disc_f = np.abs((z - phase) % pitch - pitch / 2) - disc / 2  # negative inside a disc
        disc_frac = np.clip(0.5 - disc_f / grid.spacing[0], 0.0, 1.0)
        return value + disc_frac * (disc_hu - value)

    paint_organ(canvas, cylinder(an.spine_y, 0.0, ry, rx), vertebra)
    paint_organ(canvas, cylinder(canal_y, 0.0, canal_r + u(4, 6), canal_r + u(4, 6)), hu["bone"])
    paint_organ(canvas, cylinder(canal_y + canal_r + u(12, 18), 0.0, u(12, 18), u(3, 5)), hu["bone"])
    paint_organ(canvas, cylinder(canal_y, 0.0, canal_r, canal_r), u(0, 20))


def paint_ribs(canvas: Canvas, rng: np.random.Generator, an: Anatomy) -> None:
    """Rib arcs in the wall muscle, sloping down anteriorly, both sides."""
    grid = canvas.grid
    ax, ay_ant, ay_post = an.cavity + 0.5 * an.muscle
    slope = rng.uniform(0.3, 0.7)
    z_lo, z_hi = grid.start[0], grid.start[0] + grid.shape[0] * grid.spacing[0]
    z = an.z_top + rng.uniform(10, 30)
    while z > z_lo - 40:
        for side in (-1, 1):
            angles = np.linspace(rng.uniform(1.1, 1.4), -rng.uniform(0.2, 1.2), 7)  # posterior to anterior
            ys = np.where(np.sin(angles) > 0, ay_post, ay_ant) * np.sin(angles)
            pts = np.stack([z + slope * ys, ys, side * ax * np.cos(angles)], axis=1)
            if pts[:, 0].max() < z_lo or pts[:, 0].min() > z_hi:
                continue
            radius, value = rng.uniform(3, 4.5), rng.uniform(300, 800)
            for p, q in zip(pts[:-1], pts[1:]):
                canvas.paint_tube(p, q, radius, radius, value)
        z -= rng.uniform(22, 32)
