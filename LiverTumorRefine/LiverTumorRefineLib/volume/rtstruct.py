"""RT structure sets (DICOM RTSTRUCT) as masks: the contours that radiotherapy planning systems and
many PACS viewers store for a lesion, filled on a CT's slices.

A structure set holds points in patient millimetres, not voxels, so it is read onto a grid: one
structure (ROI), picked by name or number like a DICOM SEG segment, has its closed planar contours
placed on the grid's slices and filled there. A voxel is in the mask when its centre lies inside an
odd number of the structure's contours on its slice (the even-odd rule), so a contour inside
another is a hole. The file is read with pydicom; only the polygon fill is this module's.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.errors import RefineError

# Contours drawn on the CT lie on its slice centres; one farther than this (in slices) from every
# slice was drawn on another grid, and filling it on the nearest slice would misplace it.
PLANE_TOLERANCE = 0.25


def is_rtstruct(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` file whose header says it is an RT structure set."""
    if not str(path).lower().endswith(".dcm") or not Path(path).is_file():
        return False
    import pydicom

    try:
        # force: structure sets are often written without the DICOM preamble (as pydicom's own sample is)
        header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"], force=True)
    except Exception:  # noqa: BLE001 - not DICOM: another reader will say what it is
        return False
    return str(header.get("Modality", "")).upper() == "RTSTRUCT"


def read_structure_set(path: str | os.PathLike) -> Any:
    """The pydicom dataset of an RT structure set; RefineError when it cannot be read."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise RefineError(f"{path}: cannot be read as an RT structure set ({str(exc)[:160]}).") from None


def structure_names(ds: Any, path: str | os.PathLike) -> dict[int, str]:
    """ROI number -> ROI name of the structures that have contours."""
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in ds.get("StructureSetROISequence", [])}
    contoured = {int(item.ReferencedROINumber) for item in ds.get("ROIContourSequence", [])
                 if len(item.get("ContourSequence", []))}
    found = {number: name for number, name in names.items() if number in contoured}
    if not found:
        raise RefineError(f"{path}: this RT structure set has no contoured structure (ROI), so there is no mask in "
                          "it: export the structure set again with the lesion's contours.")
    return found


def structure_contours(ds: Any, number: int, path: str | os.PathLike) -> list[np.ndarray]:
    """The closed planar contours of ROI ``number`` as (n, 3) arrays of LPS millimetres."""
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == number)
    contours, other = [], set()
    for contour in item.ContourSequence:
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        values = [float(v) for v in contour.get("ContourData", [])]
        if len(values) % 3:
            raise RefineError(f"{path}: a contour of structure {number} has {len(values)} coordinates, not x, y, z "
                              "triples: the file is damaged; export the structure set again.")
        points = np.asarray(values, dtype=float).reshape(-1, 3)
        if kind == "CLOSED_PLANAR" and len(points) >= 3:
            contours.append(points)
        else:
            other.add(kind if kind != "CLOSED_PLANAR" else "CLOSED_PLANAR with under 3 points")
    if not contours:
        raise RefineError(f"{path}: structure {number} has no closed planar contour (it holds "
                          f"{', '.join(sorted(other))}), so it encloses no voxels: choose a structure drawn as "
                          "closed contours with --segment.")
    return contours


def _to_index(points: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """(n, 3) LPS millimetres -> (n, 3) continuous voxel indices (x, y, z) of ``grid``."""
    scaled = np.array(grid.GetDirection(), dtype=float).reshape(3, 3) * np.array(grid.GetSpacing(), dtype=float)
    return np.linalg.solve(scaled, (points - np.array(grid.GetOrigin(), dtype=float)).T).T


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


def rasterise(contours: list[np.ndarray], grid: sitk.Image, where: str | os.PathLike) -> np.ndarray:
    """The (z, y, x) uint8 mask of ``contours`` (LPS mm) on ``grid``'s slices, even-odd filled."""
    size = grid.GetSize()
    mask = np.zeros(size[::-1], dtype=bool)
    outside = 0
    for points in contours:
        index = _to_index(points, grid)
        plane = float(np.median(index[:, 2]))
        k = int(round(plane))
        if np.ptp(index[:, 2]) > 2 * PLANE_TOLERANCE or abs(plane - k) > PLANE_TOLERANCE:
            raise RefineError(f"{where}: its contours do not lie on the CT's slices (one lies {plane:.2f} slices along "
                              "the CT's slice axis): they were drawn on another series or a reformatted CT. Give the "
                              "CT series the structure set was drawn on.")
        if not 0 <= k < size[2]:
            outside += 1
            continue
        mask[k] ^= fill_polygon(index[:, :2], (size[1], size[0]))
    if outside == len(contours):
        raise RefineError(f"{where}: every contour lies outside the CT's slices: check that the structure set "
                          "belongs to this CT.")
    if outside:
        warnings.warn(f"{where}: {outside} of {len(contours)} contours lie beyond the CT's first or last slice and "
                      "were left out.", UserWarning, stacklevel=3)
    return mask.astype(np.uint8)


def check_frame_of_reference(ds: Any, frame_of_reference: str | None, where: str | os.PathLike) -> None:
    """Refuse a structure set drawn in another patient coordinate system than the CT's (when both say)."""
    if not frame_of_reference:
        return
    frames = {str(item.ReferencedFrameOfReferenceUID) for item in ds.get("StructureSetROISequence", [])
              if item.get("ReferencedFrameOfReferenceUID") is not None}
    frames |= {str(item.FrameOfReferenceUID) for item in ds.get("ReferencedFrameOfReferenceSequence", [])
               if item.get("FrameOfReferenceUID") is not None}
    if frames and frame_of_reference not in frames:
        raise RefineError(f"{where}: its contours are in another frame of reference ({', '.join(sorted(frames))}) than "
                          f"the CT ({frame_of_reference}): they belong to another scan. Give the CT series the "
                          "structure set was drawn on.")


def read_rtstruct_on(path: str | os.PathLike, grid: sitk.Image, segment: str | int | None = None,
                     frame_of_reference: str | None = None) -> sitk.Image:
    """One structure of an RT structure set as a 0/1 uint8 image on ``grid`` (a CT or mask image).

    ``segment`` picks the structure by ROI name (case-insensitive) or ROI number; None takes the
    only contoured one. ``frame_of_reference``, the CT's FrameOfReferenceUID when known, refuses
    the contours of another scan."""
    from LiverTumorRefineLib.volume.dicom import choose_segment

    ds = read_structure_set(path)
    check_frame_of_reference(ds, frame_of_reference, path)
    number = choose_segment(structure_names(ds, path), segment, path)
    if grid.GetDimension() != 3:
        raise RefineError(f"{path}: an RT structure set is filled on a 3D CT; the image given is {grid.GetDimension()}D.")
    mask = sitk.GetImageFromArray(rasterise(structure_contours(ds, number, path), grid, path))
    mask.CopyInformation(grid)
    return mask
