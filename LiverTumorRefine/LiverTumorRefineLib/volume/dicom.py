"""DICOM in and out: CT series (a folder of slice files or one enhanced multi-frame file, or one
file standing for its series) as ``Volume``s, DICOM SEG segments onto a CT grid, and refined masks
written as DICOM SEG referencing their source series.

Sorting, spacing checks, pixel transforms and SEG frame placement are highdicom's (frames are
matched by their plane positions, never by file order); this module only chooses which files
form the volume and converts highdicom's affine to the engine's SimpleITK/LPS ``Geometry``.
pydicom and highdicom are imported inside the functions, so NIfTI-only use never loads them.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.atomic import atomic_path
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

SEG_SUFFIX = ".dcm"
LITS_SEGMENT_NAMES = {1: "Liver", 2: "Tumor"}


@dataclass
class DicomSeries:
    """One CT series: its volume (slices along the slice normal; None when read headers only) and
    the pydicom datasets of the slices kept, in that order, or of its one multi-frame file."""

    volume: Volume | None
    geometry: Geometry
    shape: tuple[int, int, int]
    datasets: list[Any]
    folder: Path

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def _imports():  # noqa: ANN202 - the two modules
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise RefineError("DICOM input and output need pydicom and highdicom: pip install pydicom highdicom") from None
    return pydicom, highdicom


def is_dicom_seg_path(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` file name, the form DICOM SEG inputs and outputs take here."""
    return str(path).lower().endswith(SEG_SUFFIX)


# --------------------------------------------------------------------------------------------
# CT series


def _read_headers(folder: Path, pixels: bool) -> list[Any]:
    pydicom, _ = _imports()
    datasets = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
        except Exception:  # noqa: BLE001 - not DICOM (DICOMDIR readers, notes, .DS_Store): skipped
            continue
        if is_image(ds):
            datasets.append(ds)
    return datasets


def is_image(ds: Any) -> bool:
    """A CT image this reader places: a slice with its position, orientation and pixel spacing, or
    an enhanced (multi-frame) image."""
    return ("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds) or is_multiframe(ds)


def is_multiframe(ds: Any) -> bool:
    """An enhanced (multi-frame) image: the whole series in one file, its geometry per frame in the
    functional groups (Enhanced CT, Legacy Converted Enhanced CT). A SEG is multi-frame too, but no CT."""
    return ("PerFrameFunctionalGroupsSequence" in ds and int(ds.get("NumberOfFrames", 1) or 1) > 1
            and ds.get("Modality") != "SEG")


def _normal(ds: Any) -> np.ndarray:
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(orientation[:3], orientation[3:])


def _grid_key(ds: Any) -> tuple:
    """Slices that can share one volume: same orientation (to 1e-3), pixel spacing and size."""
    return (tuple(np.round([float(v) for v in ds.ImageOrientationPatient], 3)),
            tuple(round(float(v), 4) for v in ds.PixelSpacing), int(ds.Rows), int(ds.Columns))


def _position(ds: Any, normal: np.ndarray) -> float:
    """The slice's position along ``normal`` (mm)."""
    return float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))


def _distinct_slices(path: Path, datasets: list[Any]) -> list[Any]:
    """``datasets`` without copies of one instance (the same SOPInstanceUID in two files: the first
    is kept). Two different images at one position are refused: two acquisitions (phases) stored in
    one series, or a series merged from two, would otherwise be mixed or cut short."""
    first: dict[str, Any] = {}
    for ds in datasets:
        first.setdefault(str(ds.get("SOPInstanceUID") or id(ds)), ds)
    unique = list(first.values())
    normal = _normal(unique[0])
    at: dict[float, list[Any]] = {}
    for ds in unique:
        at.setdefault(round(_position(ds, normal), 2), []).append(ds)
    clashes = [group for group in at.values() if len(group) > 1]
    if not clashes:
        return unique
    acquisitions = sorted({str(ds.get("AcquisitionNumber", "") or "none") for group in clashes for ds in group})
    example = ", ".join(Path(str(getattr(ds, "filename", "?"))).name for ds in clashes[0][:2])
    what = (f"{len(acquisitions)} acquisitions (AcquisitionNumber {', '.join(acquisitions)}) at the same slice positions"
            if len(acquisitions) > 1 else "two different images at the same slice position")
    raise RefineError(f"{path}: its series holds {what}, e.g. {example} ({len(clashes)} positions): put the files of "
                      "one acquisition in a folder of their own.")


def _main_run(path: Path, datasets: list[Any]) -> list[Any]:
    """The run of slices at the most common spacing along the slice normal, sorted along it (one
    image per position: ``_distinct_slices``); single slices off that run (a stray slice at another
    spacing) are left out. Two runs of several slices (a missing slice, or two spacings) are
    refused: keeping the longer part would crop the CT without saying where."""
    normal = _normal(datasets[0])
    by_position = sorted(datasets, key=lambda ds: _position(ds, normal))
    positions = np.array([_position(ds, normal) for ds in by_position])
    if len(by_position) < 3:
        return by_position
    steps = np.round(np.diff(positions), 2)
    common = Counter(s for s in steps.tolist() if s > 0).most_common(1)
    if not common:
        return by_position[:1]
    step = common[0][0]
    runs, start = [], 0
    for i in range(len(steps) + 1):  # runs of consecutive steps equal to the common one
        if i == len(steps) or abs(steps[i] - step) > max(0.01 * step, 1e-3):
            runs.append((start, i))
            start = i + 1
    several = [run for run in runs if run[1] > run[0]]
    if len(several) > 1:
        (_, end), (after, _) = several[0], several[1]
        raise RefineError(f"{path}: the slices do not form one regular volume: {step:g} mm apart, but "
                          f"{positions[after] - positions[end]:g} mm between the slices at {positions[end]:.1f} and "
                          f"{positions[after]:.1f} mm along the slice normal (a slice missing, or two spacings). Export "
                          "the series again, complete, or resample it to one spacing (e.g. in 3D Slicer).")
    best = max(runs, key=lambda run: run[1] - run[0])
    return by_position[best[0]:best[1] + 1]


# In a folder of several series, one with at least MIN_VOLUME_SLICES images beside series of at most
# MAX_LOCALIZER_SLICES (scouts) is read; any other mix is refused, since which one is meant is unclear.
MIN_VOLUME_SLICES = 10
MAX_LOCALIZER_SLICES = 3


def _select_series(folder: Path, datasets: list[Any], series_uid: str | None) -> list[Any]:
    if not datasets:
        inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        hint = f" It holds folders ({', '.join(inside[:6])}): give one series folder." if inside else ""
        raise RefineError(f"{folder}: no DICOM image slices found; give the folder of one CT series.{hint}")
    series = Counter(str(ds.SeriesInstanceUID) for ds in datasets)
    if series_uid is not None:
        if series_uid not in series:
            raise RefineError(f"{folder}: no series {series_uid}; series there: {', '.join(series)}.")
        return [ds for ds in datasets if str(ds.SeriesInstanceUID) == series_uid]
    if len(series) > 1:
        described = "; ".join(f"{uid} ({n} files, {_series_name(datasets, uid)}, e.g. {_a_file_of(datasets, uid)})"
                              for uid, n in series.items())
        (main, count), *others = series.most_common()
        if count >= MIN_VOLUME_SLICES and all(n <= MAX_LOCALIZER_SLICES for _, n in others):
            # a study exported into one folder: the CT beside its localizers (scouts), which are no volume
            warnings.warn(f"{folder} holds {len(series)} DICOM series: {described}. Reading the one volume, "
                          f"{_series_name(datasets, main)}; the others have {MAX_LOCALIZER_SLICES} images or fewer "
                          "(localizers).", UserWarning, stacklevel=4)
            return [ds for ds in datasets if str(ds.SeriesInstanceUID) == main]
        raise RefineError(f"{folder} holds {len(series)} DICOM series: {described}. Give one file of the series you "
                          "want as the CT (it stands for its whole series), or put each series in its own folder.")
    return datasets


def _a_file_of(datasets: list[Any], uid: str) -> str:
    """The path of one file of series ``uid`` (the first by name), to give as the CT."""
    return min(str(ds.filename) for ds in datasets if str(ds.SeriesInstanceUID) == uid)


def _series_of_file(path: Path) -> str:
    """The SeriesInstanceUID of the image file ``path``; RefineError when it is no image slice."""
    pydicom, _ = _imports()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for non-DICOM files
        raise RefineError(f"{path}: not a readable DICOM file ({str(exc)[:120]}); give a CT series folder or one of "
                          "its files.") from None
    modality = str(ds.get("Modality", "")).upper()
    if modality in ("SEG", "RTSTRUCT"):
        kind = "a DICOM SEG" if modality == "SEG" else "an RT structure set"
        raise RefineError(f"{path} is {kind}, not a CT image: give it as the mask, and the CT series (its folder or "
                          "one of its files) as the CT.")
    if "SeriesInstanceUID" not in ds or not is_image(ds):
        raise RefineError(f"{path}: a DICOM file that is no image slice ({modality or 'no modality'}); give a CT "
                          "series folder or one of its image files.")
    return str(ds.SeriesInstanceUID)


def _series_name(datasets: list[Any], uid: str) -> str:
    ds = next(d for d in datasets if str(d.SeriesInstanceUID) == uid)
    return f"#{ds.get('SeriesNumber', '?')} {ds.get('SeriesDescription', '') or 'no description'}".strip()


def _series_datasets(folder: str | os.PathLike, pixels: bool, series_uid: str | None) -> tuple[Path, list[Any]]:
    """The slices of the series in ``folder`` that form its main regular volume, sorted along
    the normal, with a warning naming how many odd slices (other orientation, size or spacing,
    e.g. a reformatted localiser stored in the series) were left out. ``folder`` may be one file
    of the series: its series is read from the file's folder."""
    path = Path(folder).expanduser()
    if path.is_file():  # one file stands for its series (as 3D Slicer loads a series from one file)
        series_uid = series_uid or _series_of_file(path)
        path = path.parent
    elif not path.exists():
        raise RefineError(f"{path}: not found; give a DICOM CT series folder or one of its files.")
    elif not path.is_dir():
        raise RefineError(f"{path}: not a folder; give the folder holding one DICOM CT series.")
    datasets = _select_series(path, _read_headers(path, pixels), series_uid)
    multiframe = [ds for ds in datasets if is_multiframe(ds)]
    if multiframe:
        if len(datasets) > 1:
            raise RefineError(f"{path}: its series holds {len(multiframe)} multi-frame image(s) and {len(datasets) - len(multiframe)} "
                              "other image file(s); put the one multi-frame (enhanced) CT file in a folder of its own.")
        return path, datasets
    groups = Counter(_grid_key(ds) for ds in datasets)
    main = groups.most_common(1)[0][0]
    grid = [ds for ds in datasets if _grid_key(ds) == main]
    distinct = _distinct_slices(path, grid)
    kept = _main_run(path, distinct)
    copies, dropped = len(grid) - len(distinct), len(datasets) - len(grid) + len(distinct) - len(kept)
    if copies:
        warnings.warn(f"{path}: {copies} file(s) are copies of another slice (the same SOPInstanceUID); each slice is "
                      "read once.", UserWarning, stacklevel=3)
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} of {len(datasets) - copies} slices that do not belong to the main "
                      f"regular volume (another orientation, size or slice spacing); kept {len(kept)}.", UserWarning,
                      stacklevel=3)
    return path, kept


# What decodes the compressed transfer syntaxes PACS exports use (JPEG Lossless, JPEG baseline and
# extended, JPEG 2000): GDCM, a dependency of this package, so only a broken install lacks it.
DECODERS_HINT = "pip install python-gdcm"


def check_decodable(path: Path, datasets: Sequence[Any]) -> None:
    """Refuse, before any pixel is read, a series whose transfer syntax this installation cannot
    decode, naming the syntax and what to do (pydicom's own error is a traceback about plugins)."""
    from pydicom.pixels import get_decoder

    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in datasets if "TransferSyntaxUID" in getattr(ds, "file_meta", {})}
    for uid in sorted(syntaxes):
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise RefineError(f"{path}: the CT slices are stored as '{uid.name}' ({uid}), which this installation cannot "
                              f"decode. Install the decoders ({DECODERS_HINT}), or export the series uncompressed "
                              "(for example with `gdcmconv --raw`, or from Slicer's DICOM module).")


def geometry_from_affine(affine: np.ndarray) -> Geometry:
    """Engine geometry of a highdicom affine (LPS, indices (slice, row, column)); the engine's
    array is (z, y, x) = (slice, row, column), so SimpleITK's x axis is the column axis."""
    affine = np.asarray(affine, dtype=float)
    vectors = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]  # x (columns), y (rows), z (slices)
    spacing = tuple(float(np.linalg.norm(v)) for v in vectors)
    direction = np.stack([v / s for v, s in zip(vectors, spacing)], axis=1)  # columns are axis directions
    return Geometry(spacing, tuple(float(o) for o in affine[:3, 3]), tuple(float(d) + 0.0 for d in direction.ravel()))  # no -0.0


def affine_from_geometry(geometry: Geometry) -> np.ndarray:
    """The highdicom affine (indices (slice, row, column) to LPS mm) of an engine geometry."""
    direction = np.array(geometry.direction, dtype=float).reshape(3, 3) * np.array(geometry.spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = direction[:, 2], direction[:, 1], direction[:, 0]
    affine[:3, 3] = geometry.origin
    return affine


def _along_normal(volume: Any, normal: np.ndarray) -> Any:
    """highdicom stacks slices right-handed (often descending along the normal); flip to the
    DICOM reader convention (SimpleITK's): slice index increases along the slice normal."""
    return volume.flip_spatial(0) if float(np.dot(volume.affine[:3, 0], normal)) < 0 else volume


def read_series(folder: str | os.PathLike, series_uid: str | None = None, pixels: bool = True) -> DicomSeries:
    """The CT series in ``folder`` in HU (RescaleSlope/Intercept applied) with its geometry.

    Slices are ordered by position along the slice normal, never by file name; slices that do
    not fit the main regular volume are dropped with a warning. ``folder`` may also be one file of
    the series, which picks its series in its folder. A folder with several series is refused
    unless ``series_uid`` (or such a file) picks one. ``pixels=False`` reads headers only (geometry
    and datasets for a SEG writer; ``volume`` is None).
    """
    _, hd = _imports()
    path, kept = _series_datasets(folder, pixels, series_uid)
    if pixels:
        check_decodable(path, kept)
    if is_multiframe(kept[0]):
        return _read_multiframe(hd, path, kept[0], pixels)
    normal = _normal(kept[0])
    if pixels:
        try:
            hd_volume = hd.get_volume_from_series(kept, dtype=np.float32, apply_modality_transform=None,
                                                  apply_voi_transform=False, orientation_tol=1e-3)
        except (ValueError, AttributeError) as exc:
            raise RefineError(f"{path}: the slices do not form a regular volume ({exc}).") from None
        hd_volume = _along_normal(hd_volume, normal)
        geometry = geometry_from_affine(hd_volume.affine)
        array = np.ascontiguousarray(hd_volume.array.astype(np.float32, copy=False))
        volume: Volume | None = Volume(array, geometry)
        shape = array.shape
    else:  # the same geometry from the headers: x along a row, y down a column, z along the normal
        first = kept[0]
        cosines = np.array([float(v) for v in first.ImageOrientationPatient]).reshape(2, 3)
        z_step = (float(np.dot([float(v) for v in kept[-1].ImagePositionPatient], normal))
                  - float(np.dot([float(v) for v in first.ImagePositionPatient], normal))) / max(len(kept) - 1, 1)
        row_mm, column_mm = (float(v) for v in first.PixelSpacing)  # between rows, between columns
        direction = np.stack([cosines[0], cosines[1], normal], axis=1)
        geometry = Geometry((column_mm, row_mm, z_step if len(kept) > 1 else float(first.get("SliceThickness") or 1.0)),
                            tuple(float(v) for v in first.ImagePositionPatient),
                            tuple(float(d) for d in direction.ravel()))
        volume, shape = None, (len(kept), int(first.Rows), int(first.Columns))
    if not np.allclose(geometry.origin, [float(v) for v in kept[0].ImagePositionPatient], atol=1e-3):
        raise RuntimeError(f"{path}: series geometry does not start at the first slice")  # a bug
    return DicomSeries(volume, geometry, tuple(int(n) for n in shape), kept, path)


def _read_multiframe(hd: Any, path: Path, ds: Any, pixels: bool) -> DicomSeries:
    """``read_series`` for one enhanced (multi-frame) CT file: highdicom places its frames by their
    plane positions; slices are ordered along the normal as for a series of files."""
    image = hd.Image.from_dataset(ds, copy=False)
    try:
        if pixels:
            hd_volume: Any = image.get_volume(dtype=np.float32, apply_real_world_transform=False,
                                              apply_modality_transform=None, apply_voi_transform=False)
        else:
            hd_volume = image.get_volume_geometry()
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise RefineError(f"{path}: the frames of its multi-frame CT do not form a regular volume ({exc}).") from None
    if hd_volume is None:
        raise RefineError(f"{path}: the frames of its multi-frame CT do not form a regular volume.")
    hd_volume = _along_normal(hd_volume, np.cross(hd_volume.affine[:3, 2], hd_volume.affine[:3, 1]))
    geometry = geometry_from_affine(hd_volume.affine)
    shape = tuple(int(n) for n in hd_volume.spatial_shape)
    volume = Volume(np.ascontiguousarray(hd_volume.array.astype(np.float32, copy=False)), geometry) if pixels else None
    return DicomSeries(volume, geometry, shape, [ds], path)  # type: ignore[arg-type]


def frame_slices(series: DicomSeries) -> list[int] | None:
    """For a multi-frame series, the volume slice index of each of its frames, in file order (a SEG
    of a multi-frame source lists its frames in that order); None for a series of files."""
    ds = series.datasets[0]
    if not is_multiframe(ds):
        return None
    geometry = series.geometry
    direction = np.array(geometry.direction, dtype=float).reshape(3, 3)
    normal, origin = direction[:, 2], np.array(geometry.origin, dtype=float)
    slices = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        slices.append(int(round(float(np.dot(position - origin, normal)) / geometry.spacing[2])))
    return slices


def frame_of_reference(series: DicomSeries) -> str | None:
    """The series' FrameOfReferenceUID; None when it has none (then nothing can be checked against it)."""
    uid = series.datasets[0].get("FrameOfReferenceUID")
    return str(uid) if uid else None


# --------------------------------------------------------------------------------------------
# DICOM SEG in


def _read_seg(path: str | os.PathLike) -> Any:
    _, hd = _imports()
    path = Path(path)
    if not path.is_file():
        raise RefineError(f"{path}: file not found.")
    try:
        return hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many types for non-SEG files
        raise RefineError(f"{path}: {_not_a_seg(path)} ({str(exc)[:160]}).") from None


# What a .dcm that is no SEG usually is, and what to do with it.
_OTHER_DICOM = {
    "RTSTRUCT": "an RT structure set (contours), not a DICOM SEG: it has no voxels of its own; refine, evaluate "
                "and training data read it filled on the CT's slices (volume.rtstruct.read_rtstruct_on)",
    "CT": "a CT image, not a DICOM SEG: give the CT as --image (its series folder, or this file) and the segmentation "
          "as --mask",
}


def _not_a_seg(path: Path) -> str:
    """Why ``path`` is no readable DICOM SEG, naming what it is when it is another DICOM object."""
    pydicom, _ = _imports()
    try:
        modality = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality", ""))
    except Exception:  # noqa: BLE001 - not DICOM at all
        modality = ""
    return _OTHER_DICOM.get(modality, "not a readable DICOM SEG")


def segment_names(seg: Any) -> dict[int, str]:
    """Segment number -> label of a highdicom Segmentation."""
    return {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}


def choose_segment(names: dict[int, str], segment: str | int | None, where: str | os.PathLike) -> int:
    """The number of the segment named ``segment`` (label, case-insensitive, or its number). When
    None: the only one, else the one segment named as a tumour (``labels.names_a_tumour``: a
    Liver + Tumor file), with a warning naming it. RefineError listing the segments otherwise."""
    from LiverTumorRefineLib.volume.labels import names_a_tumour

    listed = ", ".join(f"{n} {name!r}" for n, name in names.items())
    if segment is None:
        if len(names) == 1:
            return next(iter(names))
        tumours = [number for number, name in names.items() if names_a_tumour(name)]
        if len(tumours) == 1:
            warnings.warn(f"{where} holds {len(names)} segments ({listed}): using {tumours[0]} "
                          f"{names[tumours[0]]!r}, the one named as a tumour (--segment picks another).",
                          UserWarning, stacklevel=2)
            return tumours[0]
        raise RefineError(f"{where} holds {len(names)} segments ({listed}): choose one with --segment NAME or NUMBER.")
    text = str(segment).strip()
    matches = [n for n, name in names.items() if name.strip().lower() == text.lower()]
    if not matches and text.isdigit() and int(text) in names:
        matches = [int(text)]
    if not matches:
        raise RefineError(f"{where} has no segment {text!r}; segments there: {listed}.")
    if len(matches) > 1:
        raise RefineError(f"{where} has several segments named {text!r} ({matches}): give its number instead.")
    return matches[0]


def read_seg_header(path: str | os.PathLike) -> Any:
    """A DICOM SEG as a highdicom Segmentation (for ``segment_names``); RefineError if unreadable."""
    return _read_seg(path)


def read_seg(path: str | os.PathLike, segment: str | int | None = None) -> Volume:
    """One segment of a DICOM SEG as a 0/1 uint8 volume on the SEG's own grid (the span of its
    frames, placed by plane position; frames the SEG omits are empty). A FRACTIONAL SEG (a
    probability map) is thresholded at 0.5, as probability maps are everywhere else."""
    seg = _read_seg(path)
    number = choose_segment(segment_names(seg), segment, path)
    fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
    try:
        if fractional:  # a probability (or occupancy) map in [0, 1]: the segment is where it is >= 0.5
            hd_volume = seg.get_volume(segment_numbers=[number], rescale_fractional=True, allow_missing_positions=True,
                                       dtype=np.float32)
        else:
            hd_volume = seg.get_volume(segment_numbers=[number], combine_segments=True, relabel=True,
                                       skip_overlap_checks=True, allow_missing_positions=True, dtype=np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise RefineError(f"{path}: segment {number} is not a regular 3D volume ({str(exc)[:160]}).") from None
    hd_volume = _along_normal(hd_volume, np.cross(hd_volume.affine[:3, 2], hd_volume.affine[:3, 1]))
    values = hd_volume.array.reshape(hd_volume.spatial_shape)  # drop the one-segment channel axis, if any
    array = np.ascontiguousarray((values >= 0.5 if fractional else values > 0).astype(np.uint8))
    return Volume(array, geometry_from_affine(hd_volume.affine))


def read_seg_on(path: str | os.PathLike, reference: Volume, segment: str | int | None = None) -> Volume:
    """One segment of a DICOM SEG on ``reference``'s grid (0/1 uint8): highdicom's
    ``match_geometry`` (pad, crop, permute; no resampling) when the grids align, else nearest
    neighbour resampling. Refused when it falls outside the reference."""
    from LiverTumorRefineLib.volume import io

    _, hd = _imports()
    own = read_seg(path, segment)
    target = hd.VolumeGeometry(affine_from_geometry(reference.geometry), reference.array.shape, "PATIENT")
    source = hd.Volume(own.array, affine_from_geometry(own.geometry), "PATIENT")
    try:
        array = source.match_geometry(target).array
    except RuntimeError:  # grids do not align: resample
        array = io.from_sitk(io.resample_mask_to(io.to_sitk(own), io.to_sitk(reference))).array
    return Volume(np.ascontiguousarray(array.astype(np.uint8)), reference.geometry)


# --------------------------------------------------------------------------------------------
# DICOM SEG out


def check_seg_output(out: str | os.PathLike, image_path: str | os.PathLike, force: bool) -> Path:
    """Refuse, before any work, a DICOM SEG output that cannot be written: the CT must be a DICOM
    series folder (the SEG references its instances), the file must be new (or ``force``) in an
    existing, writable folder."""
    out = Path(out)
    if not io.is_dicom_series(image_path):
        raise RefineError(f"{out}: a DICOM SEG output (.dcm) references its source CT series, so the CT must be a "
                          f"DICOM series (its folder or one of its files), not {image_path}: write a .nii.gz or .nrrd "
                          "mask instead.")
    if out.is_dir():
        raise RefineError(f"Output {out} is a folder: give a file name such as {out / 'refined.dcm'}.")
    if out.exists() and not force:
        raise RefineError(f"{out} already exists: choose another output or pass --force.")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise RefineError(f"Output folder {folder} does not exist or is not writable: choose another output path.")
    return out


def _segment_description(hd: Any, number: int, label: str) -> Any:
    from pydicom.sr.codedict import codes

    from LiverTumorRefineLib import __version__

    liver = label.lower() == "liver"
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.SCT.Organ if liver else codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Liver if liver else codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="LiverTumorRefine", version=__version__, family=codes.DCM.ArtificialIntelligence))


def labels_to_write(labels: Volume, series: DicomSeries, out: str | os.PathLike, force: bool,
                    names: dict[int, str] | None) -> tuple[Path, list[int], dict[int, str]]:
    """What the DICOM writers (SEG, RT structure set) share: ``out`` must be new (or ``force``) and
    ``labels`` on the series' grid. Returns the output path, the label values to write (an empty
    result is still one, empty, tumour segment) and their names (default "Tumor" for a 0/1 mask,
    "Liver" and "Tumor" for a LiTS 0/1/2 map)."""
    out = Path(out)
    if out.exists() and not force:
        raise RefineError(f"{out} already exists: choose another output or pass --force.")
    if labels.array.shape != series.shape or not labels.geometry.same_grid(series.geometry):
        raise RuntimeError(f"labels {labels.array.shape} are not on the series grid {series.shape}")  # a bug
    values = [int(v) for v in np.unique(labels.array) if v != 0]
    if names is None:
        names = {1: "Tumor"} if values in ([1], []) else LITS_SEGMENT_NAMES
    return out, values or [1], names


def write_seg(labels: Volume, series: DicomSeries, out: str | os.PathLike, names: dict[int, str] | None = None,
              force: bool = False) -> Path:
    """Write ``labels`` (on ``series``' grid, as ``read_series`` returns it) as a BINARY DICOM SEG
    referencing the series' instances: one segment per non-zero value, named by ``names``
    (default: "Tumor" for a 0/1 mask, "Liver"/"Tumor" for a LiTS 0/1/2 map). Written atomically
    and read back to check every segment; returns the path."""
    _, hd = _imports()
    out, numbers, names = labels_to_write(labels, series, out, force, names)
    planes = np.stack([labels.array == value for value in numbers], axis=-1).astype(np.uint8)  # frames, rows, cols, segments
    order = frame_slices(series)
    if order is not None:  # a multi-frame source: the SEG's frames follow the source's frames
        planes = planes[order]
    first = series.datasets[0]
    with warnings.catch_warnings():
        # The SEG copies the patient's name from the series as it is; pydicom's advice on how a name
        # should be written (one component, e.g. an anonymised ID) is about the source, not this output.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=series.datasets, pixel_array=planes, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(hd, i + 1, names.get(v, f"Label {v}")) for i, v in enumerate(numbers)],
            series_instance_uid=hd.UID(), series_number=int(first.get("SeriesNumber", 0) or 0) + 9000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="LiverTumorRefine",
            manufacturer_model_name="LiverTumorRefine", software_versions=version(), device_serial_number="0",
            series_description="LiverTumorRefine refined", omit_empty_frames=bool(labels.array.any()))
    with atomic_path(out, SEG_SUFFIX) as tmp:
        seg.save_as(tmp)
        _verify_seg(tmp, labels, numbers, series)
    return out


def version() -> str:
    """This package's version, as DICOM objects written here record it."""
    from LiverTumorRefineLib import __version__

    return str(__version__)


def _verify_seg(path: str, labels: Volume, numbers: Sequence[int], series: DicomSeries) -> None:
    """Read the written SEG back: it references the series and every segment lands on its voxels."""
    seg = _read_seg(path)
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    if series.series_uid not in referenced:
        raise RuntimeError(f"{path}: written SEG does not reference series {series.series_uid}")  # a bug
    for i, value in enumerate(numbers):
        back = read_seg_on(path, labels, i + 1).array
        if not np.array_equal(back.astype(bool), labels.array == value):
            raise RuntimeError(f"{path}: segment {i + 1} does not read back as written")  # a bug
