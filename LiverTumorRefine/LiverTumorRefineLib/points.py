"""Seed points: parsing them from the command line or a Slicer markups file, and mapping them
from patient coordinates to voxel indices.

Inline seeds are RAS millimetres as Slicer shows them: ``"R,A,S;R,A,S"``. A Slicer markups
file (``.mrk.json``) stores its points in LPS or RAS (its ``coordinateSystem``); both are read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import io
from .errors import RefineError
from .volume import Volume

Point = tuple[float, float, float]


def parse_seeds(spec: str) -> list[Point]:
    """RAS points from ``"R,A,S;R,A,S"`` or from a ``.mrk.json`` file path."""
    if spec.lower().endswith(".json") or Path(spec).is_file():
        return read_markups(spec)
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
    path = Path(path)
    if not path.is_file():
        raise RefineError(f"Seed file {path} does not exist: export the point list from Slicer (.mrk.json).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        markups = data["markups"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RefineError(f"{path} is not a Slicer markups file (.mrk.json with a \"markups\" list).") from None
    points = []
    for markup in markups:
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise RefineError(f"{path}: unknown coordinateSystem {system!r} (LPS or RAS expected).")
        for control in markup.get("controlPoints", []):
            position = control.get("position")
            if not isinstance(position, list) or len(position) != 3:
                continue
            x, y, z = (float(v) for v in position)
            points.append((-x, -y, z) if system == "LPS" else (x, y, z))
    if not points:
        raise RefineError(f"{path} holds no points: place one point inside each lesion and save again.")
    return points


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
