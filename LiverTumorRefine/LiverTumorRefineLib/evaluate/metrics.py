"""Segmentation metrics in millimetres, following the LiTS challenge conventions.

Overlap metrics (Dice, Jaccard, VOE, RVD) count voxels. Surface metrics (ASSD, MSSD, HD95) follow
``medpy.metric.binary`` 0.5 with ``connectivity=2``: a mask's surface is the mask minus its binary
erosion by the 18-neighbourhood (voxels outside the volume count as background, so objects
touching the border have a surface there), and each surface voxel's distance is the exact Euclidean
distance, in mm, to the nearest surface voxel of the other mask.

The erosion is done with array slicing and the exact distance transform is scipy's (the one
medpy itself calls, in C: a tenth of the time of the vectorised numpy transform it replaced). Work
is confined to the bounding box of both masks, so the cost follows the object, not the volume.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from LiverTumorRefineLib.errors import RefineError

METRIC_KEYS = ("dice", "jaccard", "voe", "rvd", "assd", "mssd", "hd95")

# Offsets of the 18-neighbourhood plus the centre (scipy generate_binary_structure(3, 2)).
_NEIGHBOURHOOD_18 = tuple(
    offset
    for offset in itertools.product((-1, 0, 1), repeat=3)
    if sum(abs(step) for step in offset) <= 2
)


def compute_metrics(
    truth: np.ndarray, pred: np.ndarray, spacing_zyx: Sequence[float]
) -> dict[str, float]:
    """Dice, Jaccard, VOE, RVD and surface distances (mm) of ``pred`` against ``truth``.

    Both arrays are (z, y, x) and read as booleans (non-zero is foreground); they are not modified.
    Returns a dict with keys ``dice, jaccard, voe, rvd, assd, mssd, hd95``:

    * ``rvd`` is (|pred| - |truth|) / |truth|; 0 when both are empty, inf when only truth is.
    * ``assd`` is the mean over the surface distances of both directions pooled together,
      ``mssd`` the symmetric Hausdorff distance and ``hd95`` the 95th percentile of the pooled
      distances (as medpy's ``assd``, ``hd`` and ``hd95``).
    * When both masks are empty every distance is 0 and Dice/Jaccard are 1; when exactly one is
      empty every distance is inf.
    """
    truth_b, pred_b = _as_masks(truth, pred)
    spacing = _check_spacing(spacing_zyx, truth_b.ndim)
    box = _union_box(truth_b, pred_b)  # every voxel that counts: a lesion is a small part of a CT
    if box is not None:
        truth_b, pred_b = truth_b[box], pred_b[box]
    result = _overlap_metrics(truth_b, pred_b)
    result.update(_surface_metrics(truth_b, pred_b, spacing))
    return result


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two masks of one shape (non-zero is foreground), 1 when both are empty: the overlap
    alone, for the benchmarks and training loops that score many masks."""
    return _overlap_metrics(*_as_masks(truth, pred))["dice"]


def overlap_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice, Jaccard, VOE and RVD only (as ``compute_metrics``), without the surface distances
    that cost most of its time: for evaluations that report overlap alone."""
    return _overlap_metrics(*_as_masks(truth, pred))


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """An aligned plain-text table, one row per entry of ``rows`` (e.g. coarse and refined).

    Columns are Dice, VOE, RVD, ASSD mm, MSSD mm and HD95 mm; each row is a dict as returned by
    :func:`compute_metrics`.
    """
    columns = (
        ("Dice", "dice"),
        ("VOE", "voe"),
        ("RVD", "rvd"),
        ("ASSD mm", "assd"),
        ("MSSD mm", "mssd"),
        ("HD95 mm", "hd95"),
    )
    header = [""] + [title for title, _ in columns]
    body = [[name] + [_format_value(values[key]) for _, key in columns] for name, values in rows.items()]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def render(line: list[str]) -> str:
        # Row names read best left-aligned, numbers right-aligned so decimals line up.
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return "\n".join(render(line) for line in [header] + body)


def _format_value(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3f}"


def _as_masks(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth_a, pred_a = np.asarray(truth), np.asarray(pred)
    if truth_a.shape != pred_a.shape:
        raise RefineError(
            f"Cannot compare masks of different shapes: truth {truth_a.shape} vs prediction "
            f"{pred_a.shape}; resample the prediction onto the reference grid first."
        )
    if truth_a.ndim != 3:
        raise RefineError(f"Masks must be 3-D (z, y, x) arrays, got shape {truth_a.shape}.")
    return truth_a.astype(bool, copy=False), pred_a.astype(bool, copy=False)  # read only: no copy of bool masks


def _check_spacing(spacing_zyx: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise RefineError(
            f"Voxel spacing must be {ndim} positive numbers (z, y, x in mm), got {tuple(spacing_zyx)}."
        )
    return spacing


def _overlap_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    n_truth = int(np.count_nonzero(truth))
    n_pred = int(np.count_nonzero(pred))
    n_inter = int(np.count_nonzero(truth & pred))
    n_union = n_truth + n_pred - n_inter
    dice = 2.0 * n_inter / (n_truth + n_pred) if n_truth + n_pred else 1.0
    jaccard = n_inter / n_union if n_union else 1.0
    if n_truth:
        rvd = (n_pred - n_truth) / n_truth
    else:
        rvd = 0.0 if n_pred == 0 else math.inf
    return {"dice": dice, "jaccard": jaccard, "voe": 1.0 - jaccard, "rvd": float(rvd)}


def _surface_metrics(truth: np.ndarray, pred: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    truth_any, pred_any = truth.any(), pred.any()
    if not truth_any and not pred_any:
        return {"assd": 0.0, "mssd": 0.0, "hd95": 0.0}
    if not truth_any or not pred_any:
        return {"assd": math.inf, "mssd": math.inf, "hd95": math.inf}
    truth_c, pred_c = _crop_to_union(truth, pred)
    truth_surface, pred_surface = _surface(truth_c), _surface(pred_c)
    # Pooled like medpy: distances from pred's surface to truth's, then the reverse.
    distances = np.concatenate(
        [
            _distances_to(truth_surface, spacing)[pred_surface],
            _distances_to(pred_surface, spacing)[truth_surface],
        ]
    )
    return {
        "assd": float(distances.mean()),
        "mssd": float(distances.max()),
        "hd95": float(np.percentile(distances, 95)),
    }


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of ``a | b`` (None when both are empty), found axis by axis without a
    union-sized temporary."""
    box = []
    for axis in range(a.ndim):
        other_axes = tuple(i for i in range(a.ndim) if i != axis)
        hits = np.flatnonzero(a.any(axis=other_axes) | b.any(axis=other_axes))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded by one background voxel.

    The pad stands in for whatever lies around the box: background inside the volume, and outside
    it the background medpy's erosion assumes (scipy ``border_value=0``), so erosion and distances
    in the crop equal those in the whole volume.
    """
    crop = _union_box(a, b)
    return np.pad(a[crop], 1), np.pad(b[crop], 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    """``mask`` minus its erosion by the 18-neighbourhood; the mask's outer layer must be empty."""
    inner = tuple(slice(1, n - 1) for n in mask.shape)
    eroded = np.ones_like(mask[inner])
    for offset in _NEIGHBOURHOOD_18:
        shifted = tuple(slice(1 + step, n - 1 + step) for step, n in zip(offset, mask.shape))
        eroded &= mask[shifted]
    surface = mask.copy()
    surface[inner] &= ~eroded
    return surface


def _distances_to(features: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (mm) from every voxel to the nearest ``True`` voxel of ``features``."""
    return ndimage.distance_transform_edt(~features, sampling=spacing)
