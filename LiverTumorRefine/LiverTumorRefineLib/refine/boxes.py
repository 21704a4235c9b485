"""Where to refine: boxes around the coarse lesions, so cost follows the lesions, not the volume."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorRefineLib.config import PatchConfig

Box = tuple[slice, slice, slice]

# Side of the occupancy blocks (voxels) used to find lesion clusters: coarse enough that the
# occupancy grid of a 1024x1024x1000 mask is small, fine enough to separate lesions a few cm apart.
BLOCK = 8


def component_labels(mask: np.ndarray) -> np.ndarray:
    """26-connected components of ``mask`` (Z, Y, X) labelled 1..N (0 = background) in raster
    order, as a uint32 array of its own. Only the mask's bounding box is labelled: lesions fill a
    small part of a CT, and labelling is in raster order, so the labels are those of the whole array."""
    out = np.zeros(mask.shape, np.uint32)
    if not mask.any():
        return out
    box = lesion_box(mask, (0, 0, 0))
    labelled = sitk.ConnectedComponent(sitk.GetImageFromArray(mask[box].astype(np.uint8)), True)
    out[box] = sitk.GetArrayViewFromImage(labelled)  # copied while ``labelled`` is alive
    return out


def label_boxes(labels: np.ndarray, n: int) -> list[tuple[int, int, int, int, int, int]]:
    """Inclusive (z0, z1, y0, y1, x0, x1) voxel box of each label 1..n of ``labels``, at its index
    (index 0, the background, and a label that is absent get an empty box, first > last). One pass
    over the array (``ndimage.find_objects``), whatever ``n`` is."""
    empty = (0, -1) * 3
    boxes = [_inclusive(box) if box is not None else empty for box in ndimage.find_objects(labels, max_label=n)]
    return [empty] + boxes + [empty] * (n - len(boxes))  # find_objects stops at the largest label present


def _inclusive(box: Sequence[slice]) -> tuple[int, int, int, int, int, int]:
    return tuple(int(v) for s in box for v in (s.start, s.stop - 1))  # type: ignore[return-value]


def crop_margin(spacing_zyx: Sequence[float], cfg: PatchConfig) -> tuple[int, int, int]:
    """Voxels to add around a lesion so every patch (half a patch in-plane) and every context
    slice of its boundary lies inside the crop."""
    half = cfg.patch_mm / 2
    z_reach = max(abs(c) for c in cfg.context_mm)
    return (math.ceil(z_reach / spacing_zyx[0]) + 1, math.ceil(half / spacing_zyx[1]) + 1, math.ceil(half / spacing_zyx[2]) + 1)


def lesion_box(mask: np.ndarray, margin: Sequence[int]) -> Box:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis, clipped to the array."""
    box = []
    for axis, m in enumerate(margin):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - m, 0), min(int(hits[-1]) + 1 + m, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def grown_box(box: Sequence[slice], margin: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels per axis, clipped to an array of ``shape``."""
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape))  # type: ignore[return-value]


def lesion_boxes(mask: np.ndarray, margin: Sequence[int]) -> list[Box]:
    """Disjoint boxes that together hold every foreground voxel of ``mask`` with ``margin``:
    one per cluster of lesions whose grown boxes touch. Refining each box alone gives the same
    result as one box around everything (patches of one box never reach into another), at a
    memory cost that follows the lesions: two small lesions in opposite corners of a huge CT no
    longer make a crop of most of the volume."""
    occupied = _occupancy(mask, BLOCK)
    labels = component_labels(occupied)
    boxes = []
    for label in range(1, int(labels.max()) + 1):
        blocks = lesion_box(labels == label, (0, 0, 0))
        region = tuple(slice(b.start * BLOCK, min(b.stop * BLOCK, n)) for b, n in zip(blocks, mask.shape))
        inner = lesion_box(mask[region], (0, 0, 0))  # exact extent of the foreground in those blocks
        box = tuple(slice(max(r.start + i.start - m, 0), min(r.start + i.stop + m, n))
                    for r, i, m, n in zip(region, inner, margin, mask.shape))
        boxes.append(box)
    return _merge_overlapping(boxes)


def _occupancy(mask: np.ndarray, block: int) -> np.ndarray:
    """Which ``block``³ blocks hold foreground, computed a slab of slices at a time (no
    mask-sized temporary)."""
    nz, ny, nx = mask.shape
    by, bx = -(-ny // block), -(-nx // block)
    out = np.zeros((-(-nz // block), by, bx), bool)
    for k, z in enumerate(range(0, nz, block)):
        plane = mask[z:z + block].any(axis=0)
        padded = np.zeros((by * block, bx * block), bool)
        padded[:ny, :nx] = plane
        out[k] = padded.reshape(by, block, bx, block).any(axis=(1, 3))
    return out


def _merge_overlapping(boxes: list[Box]) -> list[Box]:
    """Replace overlapping boxes by their hull until none overlap."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if all(a.start < b.stop and b.start < a.stop for a, b in zip(boxes[i], boxes[j])):
                    boxes[i] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(boxes[i], boxes[j]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes, key=lambda b: tuple(s.start for s in b))
