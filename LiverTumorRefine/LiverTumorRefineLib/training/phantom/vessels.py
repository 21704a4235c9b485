"""Portal and hepatic vein trees grown inside the liver."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.liver import Liver
from LiverTumorRefineLib.training.phantom.shapes import unit

Segment = tuple[np.ndarray, np.ndarray, float, float]


def _grow_tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float,
               depth: Callable[[np.ndarray], float], budget: int) -> list[Segment]:
    """A branching vessel tree grown breadth-first from ``root``, stopping at the liver surface."""
    segments: list[Segment] = []
    queue = [(root, unit(direction), radius, 0)]
    while queue and len(segments) < budget:
        p, d, r, generation = queue.pop(0)
        length = float(np.clip(r * rng.uniform(3, 6), 6, 30))
        for _try in range(4):  # wander, but steer away from the liver surface
            step = unit(d + rng.normal(0, 0.3, 3))
            q = p + step * length
            if generation == 0 or depth(q) < -0.5 * r:
                break
        else:
            continue
        d = step
        r_end = r * rng.uniform(0.85, 0.97)
        segments.append((p, q, r, r_end))
        if r_end < 1.2:
            continue
        if rng.random() < 0.45:
            ortho = unit(np.cross(d, rng.normal(size=3)))
            for sign, scale in ((1, rng.uniform(0.75, 0.9)), (-1, rng.uniform(0.55, 0.8))):
                angle = math.radians(rng.uniform(20, 50))
                queue.append((q, math.cos(angle) * d + sign * math.sin(angle) * ortho, r_end * scale, generation + 1))
        else:
            queue.append((q, d, r_end, generation + 1))
    return segments


def _near_inside(rng: np.random.Generator, target: np.ndarray, depth: Callable[[np.ndarray], float],
                 min_depth: float) -> np.ndarray | None:
    """A point near ``target`` at least ``min_depth`` mm inside the liver, if there is one."""
    return next((p for p in target + rng.normal(0, 20, (300, 3)) if depth(p) < -min_depth), None)


def paint_liver_vessels(canvas: Canvas, rng: np.random.Generator, an: Anatomy, liver: Liver) -> None:
    """Portal veins from the hilum and hepatic veins draining to the IVC, inside the liver."""
    u = rng.uniform
    grid = canvas.grid

    def depth(point: np.ndarray) -> float:
        return liver.depth(grid, point)

    clip = (liver.box, liver.occupancy)
    ivc_x, ivc_y, _ = an.ivc
    length = an.z_top - an.z_bot
    hilum_near = np.array([an.z_bot + u(0.3, 0.45) * length, ivc_y - u(15, 35), ivc_x + u(-10, 15)])
    ivc_inflow = np.array([an.z_top - u(15, 35), ivc_y, ivc_x])
    right, left, middle = (lobe.centre for lobe in an.organs["liver"])
    for near, outside, value, targets, radius, budget in (
        (hilum_near, np.array([-40.0, 5.0, 25.0]), an.phase.portal, (right, left), u(5, 7.5), 90),
        (ivc_inflow, None, an.phase.hepatic, (right, middle, left), u(4, 6.5), 60),
    ):
        root = _near_inside(rng, near, depth, 8.0)
        if root is None:
            continue
        # the trunk outside the liver: portal vein below the hilum, hepatic veins into the IVC
        start = root + outside if outside is not None else ivc_inflow
        canvas.paint_tube(start, root, radius, radius, value)
        for target in targets:
            for segment in _grow_tree(rng, root, target - root, radius * u(0.7, 0.9), depth, budget):
                canvas.paint_tube(*segment, value, clip=clip)
