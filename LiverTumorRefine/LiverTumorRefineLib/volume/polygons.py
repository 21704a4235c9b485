"""Closed polygons and the pixels they enclose, both ways: a contour filled by the even-odd rule
(the pixels whose centres it encloses), and a mask's outlines traced along pixel edges (or through
their midpoints, corners cut), so that filling them gives the mask back exactly. Coordinates are
(x, y) = (column, row) of pixel centres.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (rows y, columns x) of ``shape`` whose centres lie inside the closed polygon ``xy``
    ((n, 2) continuous column, row coordinates), by the even-odd rule, one scan line per row."""
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(max(0, int(np.ceil(y0.min()))), min(shape[0] - 1, int(np.floor(y0.max()))) + 1)
    if rows.size == 0:
        return mask
    r = rows[:, None].astype(float)
    crosses = (y0 > r) != (y1 > r)  # edges that a row's scan line crosses (half-open, so a vertex counts once)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.where(crosses, x0 + (r - y0) * (x1 - x0) / (y1 - y0), np.inf)
    at = np.sort(at, axis=1)  # each row's crossings first, in order; an even number of them
    starts, ends = at[:, 0::2], at[:, 1::2]
    pairs = min(starts.shape[1], ends.shape[1])
    starts, ends = starts[:, :pairs], ends[:, :pairs]
    inside = np.isfinite(ends)
    # A centre x is inside when start <= x < end for one pair: columns ceil(start) .. ceil(end) - 1.
    first = np.clip(np.ceil(starts[inside]), 0, shape[1]).astype(int)
    stop = np.clip(np.ceil(ends[inside]), 0, shape[1]).astype(int)
    row_of = np.broadcast_to(rows[:, None], starts.shape)[inside]
    edges = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(edges, (row_of, first), 1)
    np.add.at(edges, (row_of, stop), -1)
    return np.cumsum(edges[:, :-1], axis=1) > 0


def mask_outlines(mask: np.ndarray, cut_corners: bool = False) -> list[np.ndarray]:
    """The closed outlines of a 2D bool mask (rows y, columns x) as (n, 2) arrays of (x, y)
    coordinates, along pixel edges (vertices at half-integers), without collinear vertices.

    ``cut_corners``: each outline runs through the midpoints of its pixel edges instead (the
    marching-squares outline at level 0.5), so a diagonal boundary is a straight line rather than a
    staircase. It passes every pixel centre at 0.35 pixel or more, on the same side, so the fill
    is the same.

    Filled together by the even-odd rule (``fill_polygon`` each, XOR-ed) they give ``mask`` back:
    a hole is an outline of its own. No outline passes a vertex twice (where pixels touch only at
    a corner, two outlines meet there; cut, they stay apart), so each is a simple polygon."""
    edges = _boundary_edges(np.asarray(mask, dtype=bool))
    leaving = defaultdict(list)  # corner -> the edges that start there
    for index, (x0, y0, _, _) in enumerate(edges.tolist()):
        leaving[(x0, y0)].append(index)
    used = np.zeros(len(edges), dtype=bool)
    outlines = []
    for first in range(len(edges)):
        if used[first]:
            continue
        corners, index = [], first
        while not used[index]:  # every corner has as many edges in as out: the walk ends where it began
            used[index] = True
            x0, y0, x1, y1 = edges[index].tolist()
            corners.append((x0, y0))
            index = next((j for j in leaving[(x1, y1)] if not used[j]), first)
        for loop in _simple_loops(corners):
            points = np.array(loop, dtype=float)  # consecutive corners, one pixel edge apart
            if cut_corners:
                points = (points + np.roll(points, -1, axis=0)) / 2
            outlines.append(_without_collinear(points) - 0.5)
    return outlines


def _boundary_edges(mask: np.ndarray) -> np.ndarray:
    """Directed pixel edges (x0, y0, x1, y1) between mask and background, as pixel corners (corner
    (x, y) is the top-left of pixel (row y, column x)), each pixel's own edges running round it."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    found = []
    for outside, start, end in (
            (padded[:-2, 1:-1], (1, 0), (0, 0)),  # the row above is outside: top edge, right to left
            (padded[1:-1, :-2], (0, 0), (0, 1)),  # the column to the left: left edge, downwards
            (padded[2:, 1:-1], (0, 1), (1, 1)),  # the row below: bottom edge, left to right
            (padded[1:-1, 2:], (1, 1), (1, 0))):  # the column to the right: right edge, upwards
        rows, cols = np.nonzero(inside & ~outside)
        found.append(np.stack([cols + start[0], rows + start[1], cols + end[0], rows + end[1]], axis=1))
    return np.concatenate(found).astype(np.int64)


def _simple_loops(corners: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """A closed walk cut where it passes a corner again, into loops that pass each corner once
    (the same edges, so the same even-odd fill)."""
    pending, loops = [corners], []
    while pending:
        loop, seen = pending.pop(), {}
        for i, corner in enumerate(loop):
            if corner in seen:
                j = seen[corner]
                pending += [loop[j:i], loop[:j] + loop[i:]]
                break
            seen[corner] = i
        else:
            loops.append(loop)
    return loops


def _without_collinear(corners: np.ndarray) -> np.ndarray:
    """A closed outline without the vertices where it runs straight on."""
    before = corners - np.roll(corners, 1, axis=0)
    after = np.roll(corners, -1, axis=0) - corners
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    return corners[turns]
