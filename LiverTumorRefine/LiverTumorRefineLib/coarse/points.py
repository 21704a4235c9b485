"""Seed points: parsing them from the command line or a Slicer markups file, and mapping them
from patient coordinates to voxel indices.

Inline seeds are RAS millimetres as Slicer shows them: ``"R,A,S;R,A,S"``. A Slicer markups
file (``.mrk.json``) stores its points in LPS or RAS (its ``coordinateSystem``); both are read.
Negative clicks (a leak to remove) come as a second list (``--negative-seeds``) or, in one file,
as points whose label or description, or whose point list's name, starts with "neg"
(``is_negative``). In a file, positive points whose description is "lesion N" are one lesion's
clicks (as the Slicer module numbers them, ``coarse.grouping``); every other point is a lesion.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from LiverTumorRefineLib.coarse.grouping import grouped, lesion_number, numbered
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Volume

Point = tuple[float, float, float]


class MarkupPoint(NamedTuple):
    """A markups control point: its RAS position, whether it is negative, its lesion number (or None)."""

    position: Point
    negative: bool
    lesion: Optional[int]


def is_seed_file(spec: str) -> bool:
    """Whether ``spec`` names a markups file rather than inline seeds, decided by its syntax alone
    (a long seed string must never be tried as a path): a ``.json`` name, or no comma at all."""
    return spec.strip().lower().endswith(".json") or ("," not in spec and spec.strip() != "")


def parse_seeds(spec: str) -> list[Point]:
    """RAS points from ``"R,A,S;R,A,S"`` or from a ``.mrk.json`` file path."""
    if is_seed_file(spec):
        return read_markups(spec.strip())
    points = []
    for number, part in enumerate((p for p in spec.split(";") if p.strip()), start=1):
        try:
            values = [float(v) for v in part.replace(" ", "").split(",")]
        except ValueError:
            values = []
        if len(values) != 3 or not all(np.isfinite(values)):
            raise RefineError(f"Seed {number} ({part.strip()!r}) is not R,A,S in millimetres: write seeds as "
                              "\"R,A,S;R,A,S\" (as Slicer shows them) or give a .mrk.json file.")
        points.append((values[0], values[1], values[2]))
    if not points:
        raise RefineError("No seeds given: write them as \"R,A,S;R,A,S\" or give a .mrk.json file.")
    return points


def read_markups(path: str | os.PathLike) -> list[Point]:
    """The control points of a Slicer markups JSON file, in RAS."""
    return [point.position for point in read_signed_markups(path)]


def is_negative(markup_name: Any, control: dict[str, Any]) -> bool:
    """Whether a markups control point is a negative click: its label or description, or its point
    list's name, starts with "neg" (e.g. "neg-1", "negative", a list named "Negative clicks")."""
    words = (markup_name, control.get("label"), control.get("description"))
    return any(isinstance(w, str) and w.strip().lower().startswith("neg") for w in words)


def parse_signed_seeds(spec: str) -> tuple[list[Any], list[Point]]:
    """(positive, negative) RAS points from inline seeds (all positive) or a ``.mrk.json`` file
    (negative ones marked as ``is_negative`` says); RefineError when there is no positive one.
    Each positive item is a lesion: a point, or the list of the points numbered with one lesion."""
    if not is_seed_file(spec):
        return parse_seeds(spec), []
    signed = read_signed_markups(spec.strip())
    positive = [p for p in signed if not p.negative]
    if not positive:
        raise RefineError(f"{spec.strip()} holds only negative points: place one positive point inside each lesion.")
    points = [p.position for p in positive]
    numbers = numbered([p.lesion for p in positive])
    lesions = [group[0] if len(group) == 1 else group for group in grouped(points, numbers)]
    return lesions, [p.position for p in signed if p.negative]  # type: ignore[misc]


def read_signed_markups(path: str | os.PathLike) -> list[MarkupPoint]:
    """The control points of a Slicer markups JSON file in RAS, each with whether it is negative and
    its lesion number (a description "lesion N"; None without one)."""
    path = io.readable_file(path, "Seed file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        markups = data["markups"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RefineError(f"{path} is not a Slicer markups file (.mrk.json with a \"markups\" list).") from None
    points: list[MarkupPoint] = []
    for markup in markups:
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise RefineError(f"{path}: unknown coordinateSystem {system!r} (LPS or RAS expected).")
        for control in markup.get("controlPoints", []):
            position = control.get("position")
            if not isinstance(position, list) or len(position) != 3:
                continue
            if not all(_finite_number(v) for v in position):
                label = control.get("label") or f"number {len(points) + 1}"
                raise RefineError(f"{path}: point {label} has position {position!r}, which is not three numbers: "
                                  "place the point again in Slicer and save the point list.")
            x, y, z = (float(v) for v in position)
            description = control.get("description")
            points.append(MarkupPoint((-x, -y, z) if system == "LPS" else (x, y, z), is_negative(markup.get("name"), control),
                                      lesion_number(description if isinstance(description, str) else None)))
    if not points:
        raise RefineError(f"{path} holds no points: place one point inside each lesion and save again.")
    return points


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_points(points: Sequence[Any]) -> list[Point]:
    """``points`` as RAS triples of floats; RefineError naming the first that is not three finite numbers."""
    out = []
    for number, point in enumerate(points, start=1):
        try:
            values = [float(v) for v in point]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise RefineError(f"Seed {number} ({point!r}) is not a point: give each seed as three numbers (R, A, S) "
                              "in millimetres.")
        out.append((values[0], values[1], values[2]))
    return out


def voxel_to_ras(voxel_zyx: Sequence[float], image: Volume) -> Point:
    """The RAS point (mm, as Slicer shows it) of voxel index (z, y, x) of ``image``."""
    reference = io.to_sitk(Volume(np.zeros((1, 1, 1), np.uint8), image.geometry))
    x, y, z = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(tuple(voxel_zyx))])
    return (-x, -y, z)  # SimpleITK is LPS


def ras_to_voxels(points_ras: Sequence[Point], image: Volume) -> list[tuple[float, float, float]]:
    """Continuous voxel indices (z, y, x) of ``image`` for RAS points; a point outside the CT is
    an error that names it."""
    reference = io.to_sitk(Volume(np.zeros((1, 1, 1), np.uint8), image.geometry))
    shape = image.array.shape
    out = []
    for number, (r, a, s) in enumerate(points_ras, start=1):
        i, j, k = reference.TransformPhysicalPointToContinuousIndex((-r, -a, s))  # SimpleITK is LPS
        voxel = (k, j, i)
        if any(not -0.5 <= v < n - 0.5 for v, n in zip(voxel, shape)):
            raise RefineError(f"Seed {number} at RAS ({r:g}, {a:g}, {s:g}) mm lies outside the CT: check that the "
                              "seeds were placed on this CT (same patient and series).")
        out.append(voxel)
    return out
