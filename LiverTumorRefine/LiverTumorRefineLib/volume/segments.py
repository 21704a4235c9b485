"""Masks from segmentation files that hold named segments: DICOM SEG (``.dcm``), Slicer
``.seg.nrrd`` (single- or multi-layer, i.e. with overlapping segments) and RT structure sets
(contours, filled on a CT's grid), picked by name or number; plain mask files pass through to
``io.read_image``.

Slicer's ``.seg.nrrd`` keeps each segment in the header as ``Segment{i}_Name``,
``Segment{i}_Layer`` (which component of a multi-layer file) and ``Segment{i}_LabelValue`` (its
value in that layer); a multi-layer file is a 4D NRRD that SimpleITK reads as a 3D image with one
component per layer. Segment numbers are 1-based here (``Segment0`` is number 1), as in DICOM SEG.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.volume import io, rtstruct
from LiverTumorRefineLib.errors import RefineError


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a Slicer .seg.nrrd header."""

    number: int  # 1-based
    name: str
    layer: int
    label_value: int


def _header(path: str | os.PathLike) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}


def seg_nrrd_segments(path: str | os.PathLike) -> list[SegmentInfo]:
    """The segments a Slicer .seg.nrrd header lists (empty for any other NRRD)."""
    if not str(path).lower().endswith((".nrrd", ".nhdr")) or not Path(path).is_file():
        return []
    header = _header(path)
    found = []
    for key in header:
        match = re.fullmatch(r"Segment(\d+)_Name", key)
        if match:
            i = int(match[1])
            try:
                layer = int(header.get(f"Segment{i}_Layer", "0"))
                value = int(header.get(f"Segment{i}_LabelValue", str(i + 1)))
            except ValueError:
                raise RefineError(f"{path}: Segment{i} has a non-integer layer or label value in its header.") from None
            found.append(SegmentInfo(i + 1, header[key], layer, value))
    return sorted(found, key=lambda s: s.number)


def has_segments(path: str | os.PathLike) -> bool:
    """True for a DICOM SEG (``.dcm``) or a .seg.nrrd whose header names segments."""
    from LiverTumorRefineLib.volume.dicom import is_dicom_seg_path

    return is_dicom_seg_path(path) or bool(seg_nrrd_segments(path))


def read_seg_nrrd(path: str | os.PathLike, segment: str | int | None = None) -> sitk.Image:
    """One segment of a Slicer .seg.nrrd as a 0/1 uint8 image with the file's geometry.

    ``segment`` is a name (case-insensitive) or 1-based number; None takes the only segment, and
    for a single-layer file with several segments returns the whole label map (as a plain
    label file would be read) so that ``--label`` can still pick a value."""
    from LiverTumorRefineLib.volume.dicom import choose_segment

    infos = seg_nrrd_segments(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise RefineError(f"{path}: cannot be read as a .seg.nrrd ({str(exc).strip()[-160:]}).") from None
    layers = image.GetNumberOfComponentsPerPixel()
    if segment is None and len(infos) > 1 and layers == 1:
        return io.scalar_image(image, str(path))
    chosen = choose_segment({s.number: s.name for s in infos}, segment, path)
    info = next(s for s in infos if s.number == chosen)
    if info.layer >= layers:
        raise RefineError(f"{path}: segment {info.name!r} is in layer {info.layer} but the file has {layers} layer(s).")
    layer = sitk.VectorIndexSelectionCast(image, info.layer) if layers > 1 else image
    layer = io.scalar_image(layer, str(path))
    mask = sitk.Cast(sitk.Equal(layer, float(info.label_value)), sitk.sitkUInt8)
    mask.CopyInformation(layer)
    return mask


def segment_names(path: str | os.PathLike) -> dict[int, str]:
    """Number -> name of the segments of a DICOM SEG, .seg.nrrd or RT structure set (structures
    with contours); empty for a plain mask file."""
    from LiverTumorRefineLib.volume import dicom

    if rtstruct.is_rtstruct(path):
        return rtstruct.structure_names(rtstruct.read_structure_set(path), path)
    if dicom.is_dicom_seg_path(path):
        return dicom.segment_names(dicom.read_seg_header(path))
    return {s.number: s.name for s in seg_nrrd_segments(path)}


def read_mask(path: str | os.PathLike, segment: str | int | None = None, grid: sitk.Image | None = None,
              frame_of_reference: str | None = None) -> sitk.Image:
    """A mask or label image from ``path``: an RT structure set's structure filled on ``grid``
    (checked against the CT's ``frame_of_reference`` when given), a DICOM SEG or .seg.nrrd segment
    (``segment`` by name or number), else the plain file, for which ``segment`` is refused (use a
    label)."""
    from LiverTumorRefineLib.volume import dicom

    if rtstruct.is_rtstruct(path):
        if grid is None:
            raise RefineError(f"{path}: an RT structure set holds contours, not voxels, and is filled on the grid of "
                              "the file beside it: give that as a CT, or as a mask on the CT's grid.")
        return rtstruct.read_rtstruct_on(path, grid, segment, frame_of_reference)
    if dicom.is_dicom_seg_path(path):
        return io.to_sitk(dicom.read_seg(path, segment))
    if seg_nrrd_segments(path):
        return read_seg_nrrd(path, segment)
    if segment is not None:
        raise RefineError(f"{path}: --segment picks a segment of a DICOM SEG (.dcm), Slicer .seg.nrrd or RT structure "
                          "set; this is a plain mask file: choose its tumour value with --label instead.")
    return io.read_image(path)


def padded_to_cover(image: sitk.Image, other: sitk.Image) -> sitk.Image:
    """``image`` padded with zeros so that its grid holds every voxel centre of ``other``.

    Segmentation files are often cropped to their segments (a DICOM SEG holds only the frames
    with any, Slicer saves cropped .seg.nrrd): used as the reference grid of an evaluation they
    would silently drop predicted voxels outside that crop. Grids in other directions are left as
    they are."""
    if image.GetDimension() != 3 or other.GetDimension() != 3 or not np.allclose(
            image.GetDirection(), other.GetDirection(), atol=1e-4):
        return image
    last = np.array(other.GetSize()) - 1
    corners = [other.TransformIndexToPhysicalPoint([int(c) for c in np.array(b) * last]) for b in np.ndindex(2, 2, 2)]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lower = np.maximum(0, np.ceil(-index.min(0) - 1e-3)).astype(int)
    upper = np.maximum(0, np.ceil(index.max(0) - (np.array(image.GetSize()) - 1) - 1e-3)).astype(int)
    if not lower.any() and not upper.any():
        return image
    return sitk.ConstantPad(image, [int(n) for n in lower], [int(n) for n in upper], 0)
