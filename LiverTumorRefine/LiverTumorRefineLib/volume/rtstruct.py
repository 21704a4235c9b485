"""RT structure sets (DICOM RTSTRUCT), the contours that radiotherapy planning systems and many
PACS viewers store for a lesion: read as masks on a CT's slices, and written from refined masks.

A structure set holds points in patient millimetres, not voxels, so it is read onto a grid: one
structure (ROI), picked by name or number like a DICOM SEG segment, has its closed planar contours
placed on the grid's slices and filled there. A voxel is in the mask when its centre lies inside an
odd number of the structure's contours on its slice (the even-odd rule), so a contour inside
another is a hole. Written, a mask's contours run through its voxel edges' midpoints, corners cut
(``polygons``), so reading them back gives the same voxels. Files are read and written with pydicom.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.polygons import fill_polygon, mask_outlines

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


def grid_covering(path: str | os.PathLike, grid: sitk.Image) -> sitk.Image:
    """``grid`` extended with empty slices, before its first or after its last, so that every
    contour of the structure set lies on one of its slices: a reference drawn as contours is
    scored on a prediction's grid, which (a DICOM SEG's) may be cropped to the predicted slices."""
    ds = read_structure_set(path)
    planes = [_to_index(np.array([float(v) for v in contour.ContourData[:3]]).reshape(1, 3), grid)[0, 2]
              for item in ds.get("ROIContourSequence", []) for contour in item.get("ContourSequence", [])
              if len(contour.get("ContourData", [])) >= 3]
    if not planes or grid.GetDimension() != 3:
        return grid
    before = max(0, int(round(-min(planes))))
    after = max(0, int(round(max(planes) - (grid.GetSize()[2] - 1))))
    return sitk.ConstantPad(grid, [0, 0, before], [0, 0, after], 0) if before or after else grid


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
    return structure_on(read_structure_set(path), path, grid, segment, frame_of_reference)


def structure_on(ds: Any, path: str | os.PathLike, grid: sitk.Image, segment: str | int | None = None,
                 frame_of_reference: str | None = None) -> sitk.Image:
    """``read_rtstruct_on`` for the structure set ``ds`` already read from ``path``."""
    from LiverTumorRefineLib.volume.dicom import choose_segment

    check_frame_of_reference(ds, frame_of_reference, path)
    number = choose_segment(structure_names(ds, path), segment, path)
    if grid.GetDimension() != 3:
        raise RefineError(f"{path}: an RT structure set is filled on a 3D CT; the image given is {grid.GetDimension()}D.")
    mask = sitk.GetImageFromArray(rasterise(structure_contours(ds, number, path), grid, path))
    mask.CopyInformation(grid)
    return mask


# --------------------------------------------------------------------------------------------
# RT structure set out

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_REFERENCE = "1.2.840.10008.3.1.2.3.1"  # what RTReferencedStudySequence names the study by
ROI_COLORS = {"Liver": (128, 174, 128), "Tumor": (0, 200, 0)}  # the refined outline is green in Slicer too


def write_rtstruct(labels: Any, series: Any, out: str | os.PathLike, names: dict[int, str] | None = None,
                   force: bool = False) -> Path:
    """Write ``labels`` (a ``Volume`` on ``series``' grid, as ``dicom.read_series`` returns it) as an
    RT structure set referencing the series' images: one structure per non-zero value, named by
    ``names`` (default as ``dicom.write_seg``), each slice's outlines (through the midpoints of the voxel
    edges, corners cut) as closed
    planar contours (a hole as a contour of its own). Filling the contours gives the voxels back
    exactly: the file is written atomically and read back to check that. Returns the path."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from LiverTumorRefineLib.volume import dicom
    from LiverTumorRefineLib.volume.atomic import atomic_path

    out, numbers, names = dicom.labels_to_write(labels, series, out, force, names)
    first = series.datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "RTSTRUCT", generate_uid(), 1
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 9100
    ds.SeriesDescription, ds.OperatorsName = "LiverTumorRefine refined", ""
    ds.Manufacturer, ds.ManufacturerModelName = "LiverTumorRefine", "LiverTumorRefine"
    ds.SoftwareVersions = dicom.version()
    ds.StructureSetLabel, ds.StructureSetName = "Refined", "LiverTumorRefine"
    ds.StructureSetDate, ds.StructureSetTime = _now()
    images = _contour_images(series)
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(first, series, images)]
    frame = str(first.FrameOfReferenceUID)
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, value in enumerate(numbers, start=1):
        name = names.get(value, f"Label {value}")
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = list(ROI_COLORS.get(name, (255, 255, 0)))
        contours = _slice_contours(labels, labels.array == value, images)
        if contours:
            item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = "ORGAN" if name.lower() == "liver" else "GTV"
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    with atomic_path(out, ".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        _verify_rtstruct(tmp, labels, numbers, frame)
    return out


def _now() -> tuple[str, str]:
    import datetime

    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _contour_images(series: Any) -> list[Any]:
    """Per slice of the volume, the image reference its contours name (a multi-frame CT: its frame)."""
    from pydicom.dataset import Dataset

    from LiverTumorRefineLib.volume import dicom

    order = dicom.frame_slices(series)
    frames = {slice_index: frame for frame, slice_index in enumerate(order)} if order is not None else None
    images = []
    for k in range(series.shape[0]):
        source = series.datasets[0] if frames is not None else series.datasets[k]
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        if frames is not None:
            image.ReferencedFrameNumber = frames[k] + 1
        images.append(image)
    return images


def _frame_of_reference(first: Any, series: Any, images: list[Any]) -> Any:
    """The structure set's reference to the CT: frame of reference, study, series and its images."""
    from pydicom.dataset import Dataset

    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_uid
    unique = {(str(i.ReferencedSOPInstanceUID), i.get("ReferencedFrameNumber")): i for i in images}
    referenced_series.ContourImageSequence = list(unique.values())
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_REFERENCE, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _slice_contours(labels: Any, mask: np.ndarray, images: list[Any]) -> list[Any]:
    """Closed planar contours of ``mask`` (on ``labels``' grid), slice by slice, in LPS mm."""
    from pydicom.dataset import Dataset

    geometry = labels.geometry
    scaled = np.array(geometry.direction, dtype=float).reshape(3, 3) * np.array(geometry.spacing, dtype=float)
    origin = np.array(geometry.origin, dtype=float)
    contours = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        for outline in mask_outlines(mask[k], cut_corners=True):
            index = np.column_stack([outline, np.full(len(outline), float(k))])  # x, y, z voxel indices
            points = origin + index @ scaled.T
            contour = Dataset()
            contour.ContourImageSequence = [images[k]]
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            contour.ContourData = [f"{v:.4f}".rstrip("0").rstrip(".") for v in points.ravel()]
            contours.append(contour)
    return contours


def _verify_rtstruct(path: str, labels: Any, numbers: list[int], frame: str) -> None:
    """Read the written structure set back onto the labels' grid: every structure fills its voxels."""
    from LiverTumorRefineLib.volume import io

    grid = io.to_sitk(labels.with_array(np.zeros(labels.array.shape, dtype=np.uint8)))
    ds = read_structure_set(path)
    for number, value in enumerate(numbers, start=1):
        expected = labels.array == value
        if not expected.any():
            continue
        back = sitk.GetArrayFromImage(structure_on(ds, path, grid, number, frame)).astype(bool)
        if not np.array_equal(back, expected):
            raise RuntimeError(f"{path}: structure {number} does not read back as written")  # a bug
    if len(ds.StructureSetROISequence) != len(numbers):
        raise RuntimeError(f"{path}: written structure set holds {len(ds.StructureSetROISequence)} structures")  # a bug
