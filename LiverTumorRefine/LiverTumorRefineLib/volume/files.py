"""The engine's files: a CT (file or DICOM series) and its mask read onto one axial grid, results
written back on the CT's own grid (a volume file, a DICOM SEG or an RT structure set), outputs
checked first."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume import checks, dicom, io, rtstruct, segments
from LiverTumorRefineLib.volume.geometry import Volume


def load_ct(image_path: str | os.PathLike) -> Volume:
    """The CT reoriented to LPS (see ``load_pair``), with a warning when it does not look like HU."""
    image = io.from_sitk(io.to_lps(io.read_image(image_path)))
    warn_if_not_hu(image, image_path)
    return image


def warn_if_not_hu(image: Volume, image_path: str | os.PathLike) -> None:
    problem = checks.hu_plausibility(image.array)
    if problem:
        warnings.warn(f"{image_path}: {problem}", UserWarning, stacklevel=3)


def load_pair(image_path: str | os.PathLike, mask_path: str | os.PathLike, *,
              image_is_ct: bool = True, segment: str | int | None = None,
              image_segment: str | int | None = None) -> tuple[Volume, Volume]:
    """CT and mask as volumes on the CT's grid, the mask resampled when its grid differs.

    Both are reoriented (axes permuted and flipped, never resampled) to the closest LPS order, so
    that patches are cut in axial planes whatever the file's orientation: put results back on the
    CT file's own grid with ``io.back_on_grid(volume, image_path)`` before writing them. With
    ``image_is_ct`` (refinement; False for truth/prediction pairs) a CT that does not look like
    HU is warned about and a mask covering the whole CT is refused. The CT may be a DICOM series
    folder; ``segment`` picks the mask's segment (name or number) in a DICOM SEG, .seg.nrrd or RT
    structure set, ``image_segment`` the truth's when ``image_is_ct`` is False (see
    ``segments.read_mask``). An RT structure set is filled on the other file's grid.
    """
    if not image_is_ct and rtstruct.is_rtstruct(image_path):  # a reference drawn as contours: filled on the other
        mask = segments.read_mask(mask_path, segment)
        ct = segments.read_mask(image_path, image_segment, grid=rtstruct.grid_covering(image_path, mask))
    else:
        if image_is_ct:
            ct, frame = read_ct(image_path, with_frame=rtstruct.is_rtstruct(mask_path))
        else:
            ct, frame = segments.read_mask(image_path, image_segment), None
        mask = segments.read_mask(mask_path, segment, grid=ct, frame_of_reference=frame)
    if ct.GetDimension() != mask.GetDimension():
        raise RefineError(f"CT is {ct.GetDimension()}D but the mask is {mask.GetDimension()}D: give matching volumes.")
    ct, mask = io.to_lps(ct), io.to_lps(mask)
    if not image_is_ct and (segments.has_segments(image_path) or segments.has_segments(mask_path)):
        ct = segments.padded_to_cover(ct, mask)  # a SEG truth is cropped to its frames: keep all predicted voxels
    image = io.from_sitk(ct)
    mask_volume = io.from_sitk(io.resample_mask_to(mask, ct))
    if image_is_ct:
        warn_if_not_hu(image, image_path)
        checks.check_not_whole_volume(mask_volume.array)
    return image, mask_volume


def masks_on_ct(image_path: str | os.PathLike, *masks: tuple[str | os.PathLike, str | int | None]) -> list[Volume]:
    """Mask files (path, segment) read onto the CT at ``image_path`` (a volume file or DICOM
    series), reoriented to LPS like ``load_pair``: volume files resampled, segments picked, RT
    structure sets filled on its slices (checked against a DICOM CT's frame of reference)."""
    ct, frame = read_ct(image_path, with_frame=any(rtstruct.is_rtstruct(path) for path, _ in masks))
    ct = io.to_lps(ct)
    return [mask_on(ct, path, segment, frame) for path, segment in masks]


def read_ct(image_path: str | os.PathLike, with_frame: bool) -> tuple[sitk.Image, str | None]:
    """The CT at ``image_path`` (``io.read_image``) and, ``with_frame``, a DICOM series' frame of
    reference UID from the same read (None for a volume file or a series without one)."""
    if with_frame and io.is_dicom_series(image_path):
        series = dicom.read_series(image_path)
        return io.to_sitk(series.volume), dicom.frame_of_reference(series)
    return io.read_image(image_path), None


def mask_on(ct: sitk.Image, path: str | os.PathLike, segment: str | int | None = None,
            frame_of_reference: str | None = None) -> Volume:
    """The mask file ``path`` on the LPS image ``ct``'s grid (nearest neighbour; an RT structure
    set filled on its slices), ``segment`` picked as ``segments.read_mask`` picks it."""
    mask = segments.read_mask(path, segment, grid=ct, frame_of_reference=frame_of_reference)
    return io.from_sitk(io.resample_mask_to(io.to_lps(mask), ct))


def mask_for_display(path: str | os.PathLike, ct: sitk.Image, segment: str | int | None = None) -> Volume:
    """A mask file for display on ``ct`` (as ``load_ct`` reads it, before ``from_sitk``), resampled
    onto its grid (nearest neighbour): a volume file, or a DICOM SEG, .seg.nrrd or RT structure set
    (filled on ``ct``'s slices) segment: the file's only segment, else ``segment``, else its one
    segment named as a tumour (``dicom.choose_segment``)."""
    if not segments.has_segments(path) or len(segments.segment_names(path)) == 1:
        segment = None  # a --segment meant for another picture's file with several
    return mask_on(ct, path, segment)


def check_result_output(out_path: str | os.PathLike, image_path: str | os.PathLike,
                        inputs: Sequence[str | os.PathLike | None], force: bool) -> Path:
    """``io.check_output`` for a volume file; for a DICOM SEG (.dcm) the CT must be a DICOM series."""
    if dicom.is_dicom_seg_path(out_path):
        return dicom.check_seg_output(out_path, image_path, force)
    return io.check_output(out_path, inputs, force)


DICOM_OUTPUTS = ("seg", "rtstruct")


def dicom_output_for(out: str | os.PathLike, mask_path: str | os.PathLike | None, chosen: str | None) -> str:
    """What a .dcm ``out`` is written as: ``chosen`` ("seg" or "rtstruct"), else what the mask was
    (an RT structure set gives one back), else a DICOM SEG. Refused for a volume-file ``out``."""
    if chosen is not None and chosen not in DICOM_OUTPUTS:
        raise RefineError(f"Unknown DICOM output {chosen!r}: choose 'seg' (DICOM SEG) or 'rtstruct' (RT structure set).")
    if chosen is not None and not dicom.is_dicom_seg_path(out):
        raise RefineError(f"A DICOM output kind ({chosen}) applies to a .dcm output, not {out}.",
                          cli=f"--dicom-output applies to a .dcm --out, not {out}.")
    if chosen is not None:
        return chosen
    return "rtstruct" if mask_path is not None and rtstruct.is_rtstruct(mask_path) else "seg"


def write_result(volume: Volume, image_path: str | os.PathLike, out: str | os.PathLike, force: bool,
                 dicom_output: str = "seg") -> None:
    """Write ``volume``, computed on the LPS grid ``load_ct``/``load_pair`` give, back on the CT's
    own grid: for a .dcm ``out`` a DICOM SEG (or, ``dicom_output="rtstruct"``, an RT structure set)
    referencing the CT series, else a volume file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped DICOM slices were reported when the CT was read
        on_grid = io.back_on_grid(volume, image_path)
        series = dicom.read_series(image_path, pixels=False) if dicom.is_dicom_seg_path(out) else None
    if series is not None and dicom_output == "rtstruct":
        rtstruct.write_rtstruct(on_grid, series, out, force=force)
    elif series is not None:
        dicom.write_seg(on_grid, series, out, force=force)
    else:
        io.write_volume(on_grid, out, force=force)
