"""Lesion-by-lesion review of a refinement: one row per lesion, and per-lesion accept/reject.

A *lesion* here is a 26-connected component of coarse ∪ refined (``lesion_labels``), numbered
1..N in raster order of the (z, y, x) array. Each row gives the lesion's slice range, volume and
RECIST-style axial diameters before (coarse) and after (refined) refinement, Dice against a
reference when one is given, the confidence and decision the Refiner reported for it, a status and
flags a reader should look at.

    labels = lesion_labels(coarse, refined)
    rows = review_lesions(coarse, refined, spacing_zyx, reference=truth, refiner_lesions=stats["lesions"],
                          geometry=volume.geometry, labels=labels)
    edited = apply_decisions(coarse, refined, labels, {3: REJECT})   # lesion 3 back to its coarse outline
    write_report(rows, "lesions.csv")

Everything works on (z, y, x) arrays; slice numbers are array indices of axis 0 (the engine reads
volumes reoriented to the closest LPS order, so these are axial slices counted from inferior).
"""
from __future__ import annotations

import csv
import io as text_io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.volume.atomic import write_text
from LiverTumorRefineLib.refine.boxes import component_labels, lesion_box
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Geometry

ACCEPT, REJECT = "accept", "reject"
REFINED, KEPT_COARSE, UNCHANGED = "refined", "kept coarse", "unchanged"
FLAG_DIAMETER = "diameter change >= 20%"
FLAG_MEASURABLE = "crosses the 10 mm measurability threshold"
DIAMETER_CHANGE = 0.20  # relative change of the longest diameter that is flagged
MEASURABLE_MM = 10.0  # RECIST 1.1: a lesion is measurable from 10 mm longest axial diameter (CT)
PERPENDICULAR_TOLERANCE_DEG = 5.0
# Perpendicular search: at most this many boundary points (pairs grow with its square).
MAX_BOUNDARY_POINTS = 2000
REPORT_SUFFIXES = (".csv", ".json")


@dataclass
class AxialDiameters:
    """RECIST-style diameters of a mask: the longest in-plane diameter over all axial slices, on
    the slice where it is largest, and the longest extent perpendicular to it on that slice.
    Lengths in mm between voxel centres; ``slice`` and the end points are (z, y, x) voxel indices
    (None for an empty mask)."""

    longest_mm: float = 0.0
    perpendicular_mm: float = 0.0
    slice: Optional[int] = None
    longest_ends: Optional[tuple[tuple[int, int, int], tuple[int, int, int]]] = None
    perpendicular_ends: Optional[tuple[tuple[int, int, int], tuple[int, int, int]]] = None


@dataclass
class LesionReview:
    """One lesion of the review (see the module docstring). Volumes in ml, lengths in mm;
    Dice, confidence and ``centre_lps`` are None when not available."""

    lesion: int
    first_slice: int
    last_slice: int
    status: str
    confidence: Optional[float]
    coarse_ml: float
    refined_ml: float
    coarse_diameter_mm: float
    refined_diameter_mm: float
    coarse_perpendicular_mm: float
    refined_perpendicular_mm: float
    diameter_slice: Optional[int]  # where the refined (else coarse) longest diameter lies
    coarse_dice: Optional[float] = None
    refined_dice: Optional[float] = None
    flags: list[str] = field(default_factory=list)
    reason: str = ""
    centre_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)  # voxel index of the lesion's centroid
    centre_lps: Optional[tuple[float, float, float]] = None  # the same point in mm (LPS)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON types."""
        return asdict(self)


def lesion_labels(coarse: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """26-connected components of coarse ∪ refined labelled 1..N (0 = background)."""
    coarse, refined = _bool(coarse, "coarse"), _bool(refined, "refined")
    _same_shape(coarse, refined=refined)
    return component_labels(coarse | refined)


def apply_decisions(coarse: np.ndarray, refined: np.ndarray, labels: np.ndarray,
                    decisions: Mapping[int, str]) -> np.ndarray:
    """A new refined mask with each lesion's decision applied: ``REJECT`` gives the lesion its
    coarse voxels back, ``ACCEPT`` keeps its refined voxels. Only the voxels of rejected lesions
    (``labels == k``) can change; the inputs are not modified. ``labels`` comes from
    ``lesion_labels(coarse, refined)`` of the *original* refinement, so decisions can be changed
    and re-applied in any order."""
    coarse, refined = _bool(coarse, "coarse"), _bool(refined, "refined")
    _same_shape(coarse, refined=refined, labels=labels)
    n = int(labels.max()) if labels.size else 0
    rejected = []
    for lesion, decision in decisions.items():
        if decision not in (ACCEPT, REJECT):
            raise RefineError(f"Lesion {lesion}: unknown decision {decision!r}; use {ACCEPT!r} or {REJECT!r}.")
        if not (isinstance(lesion, (int, np.integer)) and 1 <= lesion <= n):
            raise RefineError(f"Lesion {lesion!r} does not exist: the lesions are numbered 1 to {n}.")
        if decision == REJECT:
            rejected.append(int(lesion))
    out = refined.copy()
    if rejected:
        region = np.isin(labels, rejected)
        out[region] = coarse[region]
    return out


def reject_lesion(coarse: np.ndarray, refined: np.ndarray, labels: np.ndarray, lesion: int) -> np.ndarray:
    """``refined`` with lesion ``lesion`` given its coarse voxels back (see ``apply_decisions``)."""
    return apply_decisions(coarse, refined, labels, {lesion: REJECT})


def accept_lesion(coarse: np.ndarray, refined: np.ndarray, labels: np.ndarray, lesion: int) -> np.ndarray:
    """``refined`` unchanged (a copy): accepting a lesion keeps its refinement."""
    return apply_decisions(coarse, refined, labels, {lesion: ACCEPT})


def axial_diameters(mask: np.ndarray, spacing_zyx: Sequence[float]) -> AxialDiameters:
    """Longest axial diameter (max distance between voxel centres of one slice's boundary, over
    all slices) and its perpendicular on that slice: the longest chord within 5 degrees of
    perpendicular, or off perpendicular by at most one voxel along the long axis (small lesions
    have few exactly perpendicular voxel pairs), measured across the long axis.

    The farthest pair of a slice lies on its convex hull, whose vertices are all leftmost or
    rightmost voxels of their rows; only those are compared, and slices whose bounding box
    cannot beat the best so far are skipped, so an 80 ml lesion takes milliseconds."""
    mask = _bool(mask, "mask")
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    out = AxialDiameters()
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return out
    rows_any, cols_any = mask.any(axis=2), mask.any(axis=1)
    diagonal = []
    for z in occupied:
        r, c = np.flatnonzero(rows_any[z]), np.flatnonzero(cols_any[z])
        diagonal.append(math.hypot((r[-1] - r[0]) * sy, (c[-1] - c[0]) * sx))
    best, best_pair, best_z = -1.0, None, None
    for i in np.argsort(diagonal)[::-1]:
        if diagonal[i] <= best:
            break
        z = int(occupied[i])
        points = _row_extremes(mask[z])
        mm = points * (sy, sx)
        d2 = ((mm[:, None, :] - mm[None, :, :]) ** 2).sum(axis=2)
        a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
        if math.sqrt(d2[a, b]) > best:
            best, best_pair, best_z = math.sqrt(d2[a, b]), (points[a], points[b]), z
    out.longest_mm, out.slice = float(best), best_z
    p, q = best_pair
    out.longest_ends = ((best_z, int(p[0]), int(p[1])), (best_z, int(q[0]), int(q[1])))
    if best > 0:
        out.perpendicular_mm, ends = _perpendicular(mask[best_z], (sy, sx), (q - p) * (sy, sx) / best)
        if ends is not None:
            out.perpendicular_ends = tuple((best_z, int(e[0]), int(e[1])) for e in ends)  # type: ignore[assignment]
    return out


def review_lesions(coarse: np.ndarray, refined: np.ndarray, spacing_zyx: Sequence[float],
                   reference: Optional[np.ndarray] = None,
                   refiner_lesions: Optional[Sequence[Mapping[str, Any]]] = None,
                   geometry: Optional[Geometry] = None, labels: Optional[np.ndarray] = None) -> list[LesionReview]:
    """One ``LesionReview`` per lesion of coarse ∪ refined (bool (z, y, x) masks on one grid).

    ``reference``: a truth mask; each lesion's Dice is computed against the truth components
    (26-connected) that touch it, so truth the lesion missed at its edge counts, another lesion's
    truth does not. ``refiner_lesions``: the Refiner's ``stats["lesions"]``; each of our lesions
    takes the confidence, decision and reason of the Refiner row that best matches it (slice
    range overlap and coarse voxel count). ``geometry``: the grid's placement, for ``centre_lps``.
    ``labels``: ``lesion_labels(coarse, refined)`` if already computed."""
    coarse, refined = _bool(coarse, "coarse"), _bool(refined, "refined")
    if reference is not None:
        reference = _bool(reference, "reference")
    if len(spacing_zyx) != 3 or not all(float(s) > 0 for s in spacing_zyx):
        raise RefineError(f"The voxel spacing must be three positive numbers (z, y, x) in mm, got {spacing_zyx!r}.")
    _same_shape(coarse, refined=refined, reference=reference, labels=labels)
    if labels is None:
        labels = lesion_labels(coarse, refined)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []
    # Every voxel that counts lies in the box of the lesions and the reference (whose components
    # touching a lesion count whole): the rest of a CT is work for nothing.
    region = lesion_box(labels > 0 if reference is None else (labels > 0) | reference, (0, 0, 0))
    origin = tuple(r.start for r in region)
    spacing = tuple(float(s) for s in spacing_zyx)
    rows, boxes, coarse_counts = _lesion_rows(coarse[region], refined[region], labels[region],
                                              None if reference is None else reference[region], n, spacing,
                                              origin, geometry)
    if refiner_lesions:
        _attach_refiner_rows(rows, boxes, coarse_counts, labels.shape, refiner_lesions)
    return rows


def _lesion_rows(coarse: np.ndarray, refined: np.ndarray, labels: np.ndarray, reference: Optional[np.ndarray],
                 n: int, spacing: tuple[float, float, float], origin: Sequence[int], geometry: Optional[Geometry]
                 ) -> tuple[list[LesionReview], dict[int, tuple[int, ...]], dict[int, int]]:
    """The rows of lesions 1..n of crops whose first voxel is ``origin`` of the whole grid (every
    index in the rows and boxes is the whole grid's, placed by ``geometry``), with each lesion's
    inclusive box and coarse voxel count."""
    oz, oy, ox = origin
    ml = float(np.prod(spacing)) / 1000.0
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.Execute(sitk.GetImageFromArray(np.asarray(labels, dtype=np.uint32)))
    truth_size = _truth_sizes(labels, reference, n) if reference is not None else None
    rows, boxes, coarse_counts = [], {}, {}
    for k in range(1, n + 1):
        x0, y0, z0, nx, ny, nz = shape_stats.GetBoundingBox(k)
        box = (slice(z0, z0 + nz), slice(y0, y0 + ny), slice(x0, x0 + nx))
        boxes[k] = (oz + z0, oz + z0 + nz - 1, oy + y0, oy + y0 + ny - 1, ox + x0, ox + x0 + nx - 1)
        inside = labels[box] == k
        c, r = coarse[box] & inside, refined[box] & inside
        n_c, n_r = int(np.count_nonzero(c)), int(np.count_nonzero(r))
        coarse_counts[k] = n_c
        dc, dr = axial_diameters(c, spacing), axial_diameters(r, spacing)
        centre = np.argwhere(inside).mean(axis=0) + (oz + z0, oy + y0, ox + x0)
        first = oz + z0
        row = LesionReview(
            lesion=k, first_slice=first, last_slice=first + nz - 1, status=REFINED if n_c != n_r or np.any(c != r) else UNCHANGED,
            confidence=None, coarse_ml=round(n_c * ml, 4), refined_ml=round(n_r * ml, 4),
            coarse_diameter_mm=round(dc.longest_mm, 2), refined_diameter_mm=round(dr.longest_mm, 2),
            coarse_perpendicular_mm=round(dc.perpendicular_mm, 2), refined_perpendicular_mm=round(dr.perpendicular_mm, 2),
            diameter_slice=(dr.slice + first) if dr.slice is not None else (dc.slice + first) if dc.slice is not None else None,
            centre_zyx=tuple(round(float(v), 2) for v in centre),  # type: ignore[arg-type]
        )
        if geometry is not None:
            row.centre_lps = _to_lps(centre, geometry)
        if truth_size is not None:
            t = reference[box] & inside  # type: ignore[index]
            row.coarse_dice = _dice(int(np.count_nonzero(c & t)), n_c, int(truth_size[k]))
            row.refined_dice = _dice(int(np.count_nonzero(r & t)), n_r, int(truth_size[k]))
        row.flags = lesion_flags(row.coarse_diameter_mm, row.refined_diameter_mm)
        rows.append(row)
    return rows, boxes, coarse_counts


def lesion_flags(coarse_diameter_mm: float, refined_diameter_mm: float) -> list[str]:
    """The review flags for one lesion's longest diameters before and after refinement."""
    flags = []
    c, r = coarse_diameter_mm, refined_diameter_mm
    if (c > 0 and abs(r - c) >= DIAMETER_CHANGE * c - 1e-9) or (c == 0 and r > 0):
        flags.append(FLAG_DIAMETER)
    if (c < MEASURABLE_MM) != (r < MEASURABLE_MM):
        flags.append(FLAG_MEASURABLE)
    return flags


CSV_COLUMNS = ("lesion", "first_slice", "last_slice", "status", "confidence", "coarse_ml", "refined_ml",
               "coarse_diameter_mm", "refined_diameter_mm", "coarse_perpendicular_mm", "refined_perpendicular_mm",
               "diameter_slice", "coarse_dice", "refined_dice", "flags", "reason", "centre_z", "centre_y", "centre_x",
               "centre_l_mm", "centre_p_mm", "centre_s_mm")


def report_text(rows: Iterable[LesionReview], suffix: str) -> str:
    """The report as CSV (one line per lesion, flags joined by "; ", empty cells for missing
    values) or JSON (``{"lesions": [row, ...]}``), by ``suffix`` (".csv" or ".json")."""
    rows = list(rows)
    if suffix == ".json":
        return json.dumps({"lesions": [row.to_dict() for row in rows]}, indent=1) + "\n"
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        d = row.to_dict()
        d["flags"] = "; ".join(row.flags)
        d["centre_z"], d["centre_y"], d["centre_x"] = row.centre_zyx
        lps = row.centre_lps or (None, None, None)
        d["centre_l_mm"], d["centre_p_mm"], d["centre_s_mm"] = lps
        writer.writerow(["" if d[c] is None else d[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def report_suffix(path: str | os.PathLike) -> str:
    """".csv" or ".json" for a report path; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise RefineError(f"{path}: a lesion report is a .csv or .json file; give a name ending in one of those.")
    return suffix


def write_report(rows: Iterable[LesionReview], path: str | os.PathLike, force: bool = False) -> None:
    """Write the report (CSV or JSON by the name's extension) atomically, verified by reading
    it back; an existing file is refused unless ``force``."""
    suffix = report_suffix(path)
    if Path(path).exists() and not force:
        from LiverTumorRefineLib.volume.io import exists_error

        raise exists_error(path)
    write_text(path, report_text(rows, suffix))


def _row_extremes(plane: np.ndarray) -> np.ndarray:
    """(row, column) of the leftmost and rightmost foreground voxel of every occupied row."""
    rows = np.flatnonzero(plane.any(axis=1))
    sub = plane[rows]
    left = np.argmax(sub, axis=1)
    right = plane.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    return np.concatenate([np.stack([rows, left], 1), np.stack([rows, right], 1)])


def _boundary(plane: np.ndarray) -> np.ndarray:
    """(row, column) of the voxels with a 4-neighbour outside the mask."""
    padded = np.pad(plane, 1)
    core = plane & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(plane & ~core)


def _perpendicular(plane: np.ndarray, spacing_yx: tuple[float, float], axis: np.ndarray
                   ) -> tuple[float, Optional[tuple[np.ndarray, np.ndarray]]]:
    """Longest extent across unit ``axis`` (mm, y-x) between boundary voxels of ``plane``."""
    points = _boundary(plane)
    if len(points) > MAX_BOUNDARY_POINTS:
        points = points[np.linspace(0, len(points) - 1, MAX_BOUNDARY_POINTS).astype(np.intp)]
    mm = points * spacing_yx
    normal = np.array([-axis[1], axis[0]])
    along, across = mm @ axis, mm @ normal
    d_along = np.abs(along[:, None] - along[None, :])
    d_across = np.abs(across[:, None] - across[None, :])
    slack = max(math.tan(math.radians(PERPENDICULAR_TOLERANCE_DEG)), 0.0) * d_across
    ok = d_along <= np.maximum(slack, max(spacing_yx) + 1e-6)
    if not ok.any():
        return 0.0, None
    d_across = np.where(ok, d_across, -1.0)
    a, b = np.unravel_index(int(np.argmax(d_across)), d_across.shape)
    return float(d_across[a, b]), (points[a], points[b])


def _truth_sizes(labels: np.ndarray, reference: np.ndarray, n: int) -> np.ndarray:
    """Per lesion 1..n, the voxel count of the truth components that touch it."""
    truth_labels = component_labels(reference)
    both = (labels > 0) & (truth_labels > 0)
    pairs = np.unique(np.stack([labels[both], truth_labels[both]]), axis=1)
    sizes = np.bincount(truth_labels.ravel(), minlength=int(truth_labels.max()) + 1)
    out = np.zeros(n + 1, dtype=np.int64)
    np.add.at(out, pairs[0], sizes[pairs[1]])
    return out


def _dice(intersection: int, a: int, b: int) -> Optional[float]:
    return round(2.0 * intersection / (a + b), 4) if a + b else None


def _to_lps(centre_zyx: np.ndarray, geometry: Geometry) -> tuple[float, float, float]:
    reference = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    reference.SetSpacing(geometry.spacing)
    reference.SetOrigin(geometry.origin)
    reference.SetDirection(geometry.direction)
    point = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_zyx[::-1]])
    return tuple(round(float(v), 2) for v in point)  # type: ignore[return-value]


def _attach_refiner_rows(rows: list[LesionReview], boxes: Mapping[int, tuple[int, ...]], coarse_counts: Mapping[int, int],
                         shape: Sequence[int], refiner_lesions: Sequence[Mapping[str, Any]]) -> None:
    """Give each row the confidence, decision and reason of the best-matching Refiner row.

    ``boxes`` and ``coarse_counts``: per lesion number, its inclusive (z0, z1, y0, y1, x0, x1) box
    and its coarse voxel count; ``shape``: the grid's. The Refiner's rows carry bounding boxes and
    voxel counts, not voxels, so the match scores the overlap of the boxes (intersection over union
    of their volumes; rows without a box use the slice range) and the agreement of coarse voxel
    counts; a Refiner lesion that merged several of ours (through voxels it proposed and then
    dropped) matches each of them."""
    for row in rows:
        best, best_score = None, -math.inf
        for candidate in refiner_lesions:
            theirs_box = candidate.get("box") or (*candidate["slices"], 0, shape[1] - 1, 0, shape[2] - 1)
            ours_box = boxes[row.lesion] if candidate.get("box") else (row.first_slice, row.last_slice, *theirs_box[2:])
            overlap = _box_iou(ours_box, theirs_box)
            if overlap <= 0:
                continue
            ours, theirs = coarse_counts[row.lesion], int(candidate.get("coarse_voxels", 0))
            agreement = 1.0 - abs(ours - theirs) / max(ours, theirs, 1)
            score = overlap + agreement
            if score > best_score:
                best, best_score = candidate, score
        if best is None:
            continue
        row.confidence = float(best["confidence"]) if best.get("confidence") is not None else None
        row.reason = str(best.get("reason", ""))
        if best.get("decision") == KEPT_COARSE:
            row.status = KEPT_COARSE


def _box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two inclusive (z0, z1, y0, y1, x0, x1) boxes."""
    inter = union_a = union_b = 1
    for axis in range(3):
        lo, hi = max(a[2 * axis], b[2 * axis]), min(a[2 * axis + 1], b[2 * axis + 1])
        if hi < lo:
            return 0.0
        inter *= hi - lo + 1
        union_a *= a[2 * axis + 1] - a[2 * axis] + 1
        union_b *= b[2 * axis + 1] - b[2 * axis] + 1
    return inter / (union_a + union_b - inter)


def _bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise RefineError(f"The {name} mask must be a 3-D (z, y, x) array, got shape {mask.shape}.")
    return mask.astype(bool, copy=False)


def _same_shape(first: np.ndarray, **others: Optional[np.ndarray]) -> None:
    for name, other in others.items():
        if other is not None and np.shape(other) != first.shape:
            raise RefineError(f"The {name} array has shape {np.shape(other)} but the coarse mask has {first.shape}; "
                              "put them on one grid first.")
