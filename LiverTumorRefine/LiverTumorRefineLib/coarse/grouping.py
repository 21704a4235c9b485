"""Which lesion each positive click belongs to, when clicks come one list at a time.

A Slicer point list holds every positive click of every lesion. A click placed after a result
exists is a correction of the lesion it touches (a missed part next to it), not a new lesion: grown
as a lesion of its own it would cut the first one's region in two (bench/clicks.py, "separate").
So each point carries a lesion number (its description "lesion N" in Slicer and in ``.mrk.json``
files); a point without one is given one here: the lesion of the previous result's piece it lies
in or next to (within ``GROUP_REACH_MM``), else a new lesion.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

LESION_WORD = "lesion"
# A click this near (mm) to a piece of the previous result corrects that piece's lesion. Chosen of 0, 2,
# 5, 10 and 15 on tuning phantoms 95000-95029 (bench/click_grouping.py): 96% of corrective positive
# clicks lie within 15 mm of their own lesion's result (78% within 5 mm), and no lesion's first click
# within 15 mm of another's (the nearest was 15.7 mm). Clustered small lesions come closer.
GROUP_REACH_MM = 15.0
_NUMBER = re.compile(rf"^\s*{LESION_WORD}[\s_-]*(\d+)\s*$", re.IGNORECASE)


def lesion_number(text: Optional[str]) -> Optional[int]:
    """The lesion number a point's description gives ("lesion 2", "Lesion-2"), or None."""
    found = _NUMBER.match(text or "")
    return int(found.group(1)) if found and int(found.group(1)) > 0 else None


def lesion_label(number: int) -> str:
    """The description that gives a point lesion ``number``."""
    return f"{LESION_WORD} {number}"


def assign_lesions(points_zyx: Sequence[Sequence[float]], given: Sequence[Optional[int]],
                   previous: Optional[np.ndarray], spacing_zyx: Sequence[float],
                   reach_mm: float = GROUP_REACH_MM) -> list[int]:
    """A lesion number for each point (voxel indices z, y, x, in placement order).

    ``given``: each point's number where it has one (None: none). ``previous``: the last result's
    mask on the same grid (None: no result yet, so every unnumbered point is a lesion of its own).
    An unnumbered point inside a piece (26-connected) of ``previous``, or within ``reach_mm`` of
    one, belongs to the lesion of the earlier point in that piece (the nearest piece when several
    are in reach); a point with no numbered piece in reach starts a new lesion.
    """
    if len(given) != len(points_zyx):
        raise ValueError("one given number (or None) per point")
    if previous is None or not previous.any():
        return numbered(given)
    numbers: list[Optional[int]] = list(given)
    pieces = Pieces(previous, spacing_zyx)
    # each point's nearest piece in reach, (0, inf) for none
    near = [pieces.nearest(tuple(int(round(float(v))) for v in p), reach_mm) for p in points_zyx]
    lesion_of_piece: dict[int, int] = {}
    for (piece, distance), number in zip(near, numbers):  # numbered points name their pieces first
        if number is not None and piece and distance == 0.0:
            lesion_of_piece.setdefault(piece, number)
    next_number = max([n for n in numbers if n is not None], default=0) + 1
    for i, (piece, distance) in enumerate(near):
        if numbers[i] is not None:
            continue
        if piece in lesion_of_piece:  # a piece (non-zero) within reach_mm
            numbers[i] = lesion_of_piece[piece]
            continue
        numbers[i] = next_number
        next_number += 1
        if piece and distance == 0.0:
            lesion_of_piece.setdefault(piece, numbers[i])  # type: ignore[arg-type]
    return [int(n) for n in numbers]  # type: ignore[arg-type]


def numbered(given: Sequence[Optional[int]]) -> list[int]:
    """Each point's given lesion number, and for each point without one a new lesion after the
    largest given (no result yet to join)."""
    first_new = max([n for n in given if n is not None], default=0) + 1
    new = iter(range(first_new, first_new + len(given)))
    return [int(n) if n is not None else next(new) for n in given]


class Pieces:
    """The 26-connected pieces of a mask, labelled on its bounding box only (a CT-sized label map
    would cost hundreds of megabytes for a few lesions)."""

    def __init__(self, mask: np.ndarray, spacing_zyx: Sequence[float]) -> None:
        where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        self.box = tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)
        self.labels, _ = ndimage.label(mask[self.box], structure=np.ones((3, 3, 3), dtype=bool))
        self.spacing = np.asarray(spacing_zyx, dtype=np.float64)

    def nearest(self, voxel: Sequence[int], reach_mm: float) -> tuple[int, float]:
        """The piece nearest to ``voxel`` within ``reach_mm`` and its distance (mm; 0 inside it),
        or (0, inf) when none is in reach."""
        local = np.asarray(voxel) - np.array([b.start for b in self.box])
        half = np.ceil(reach_mm / self.spacing).astype(int)
        low = np.maximum(local - half, 0)
        high = np.minimum(local + half + 1, self.labels.shape)
        if np.any(high <= low):
            return 0, float("inf")
        window = self.labels[tuple(slice(int(a), int(b)) for a, b in zip(low, high))]
        found = np.argwhere(window > 0)
        if not len(found):
            return 0, float("inf")
        distance = np.sqrt((((found + low - local) * self.spacing) ** 2).sum(axis=1))
        k = int(np.argmin(distance))
        if distance[k] > reach_mm:
            return 0, float("inf")
        return int(window[tuple(found[k])]), float(distance[k])


def grouped(points: Sequence[Sequence[float]], numbers: Sequence[int]) -> list[list[tuple[float, ...]]]:
    """``points`` as one list per lesion, lesions in the order of their first point, each lesion's
    points in their own order (its first point places its crop)."""
    lesions: dict[int, list[tuple[float, ...]]] = {}
    for point, number in zip(points, numbers):
        lesions.setdefault(int(number), []).append(tuple(float(v) for v in point))
    return list(lesions.values())
