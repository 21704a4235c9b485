"""Python API on volumes and files: label selection, grid alignment, coarse masks, refinement,
evaluation.

    from LiverTumorRefineLib import api
    stats = api.refine_files("ct.nii.gz", "coarse.nii.gz", "refined.nii.gz")
    stats = api.refine_without_mask("ct.nii.gz", "refined.nii.gz", seeds=[(-60.5, 20.0, -310.0)])
    stats = api.refine_without_mask("ct.nii.gz", "refined.nii.gz", source="auto")
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from LiverTumorRefineLib.volume import checks

from LiverTumorRefineLib.volume import dicom

from LiverTumorRefineLib.volume import io

from LiverTumorRefineLib.evaluate import review

from LiverTumorRefineLib.volume import segments

from LiverTumorRefineLib.coarse import totalseg
from LiverTumorRefineLib.coarse.autoseg import Segmenter
from LiverTumorRefineLib.refine.boxes import component_labels
from LiverTumorRefineLib.config import MIN_KEPT, TTA
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics
from LiverTumorRefineLib.coarse.points import Point, check_points, is_seed_file, parse_seeds, ras_to_voxels
from LiverTumorRefineLib.refine.refiner import Progress, Refiner
from LiverTumorRefineLib.coarse.seeded import grow_from_seeds
from LiverTumorRefineLib.volume.geometry import Volume

LITS_TUMOUR = 2
LITS_LIVER = 1
# A mask with more distinct values than this is an image (a CT has thousands), not a label map.
MAX_LABELS = 256


def select_label(labels: np.ndarray, label: int | None = None) -> tuple[np.ndarray, int | None]:
    """Binary tumour mask from a mask or label map, and the label used (None = a bool mask).

    Default: label 2 in a LiTS-style 0/1/2 map, the one non-zero value of a binary mask (0/1,
    0/255, ...); a map with several labels and no LiTS tumour label is refused rather than
    guessed, because flattening it would lose the other labels.
    """
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise RefineError("The mask has non-integer values: give a binary mask or a label map "
                              "(threshold probability maps first).")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label <= 0):
        raise RefineError(f"Tumour label {label!r} is not valid: label 0 is the background, so the tumour label is a "
                          "positive whole number (2 in a LiTS map, 1 in a binary mask).")
    values = set(np.unique(labels).tolist())
    if len(values) > MAX_LABELS:
        raise RefineError(f"The mask has {len(values)} different values: this looks like an image (a CT?), not a "
                          "label map. Give the coarse tumour mask or label map instead.")
    present = ", ".join(str(int(v)) for v in sorted(values))
    if label is not None:
        if label not in values:
            raise RefineError(f"Label {label} is not in the mask (labels present: {present}): choose one with --label.")
        return labels == label, label
    if labels.dtype == bool:
        return labels.copy(), None
    if LITS_TUMOUR in values and values <= {0, 1, 2}:
        return labels == LITS_TUMOUR, LITS_TUMOUR
    foreground = values - {0}
    if len(foreground) > 1:
        raise RefineError(f"The mask holds several labels ({present}) and none is the LiTS tumour label 2: "
                          "choose the tumour label with --label.")
    if not foreground:
        return np.zeros(labels.shape, dtype=bool), None
    value = int(next(iter(foreground)))
    return labels == value, value


def merge_label(labels: np.ndarray, refined: np.ndarray, label: int | None) -> np.ndarray:
    """Put ``refined`` back into the original mask's form: a binary mask keeps its foreground
    value; in a label map only the chosen label changes (voxels leaving a LiTS tumour become
    liver, others 0). ``label`` None: a bool mask, returned as uint8 0/1."""
    if label is None:
        return refined.astype(np.uint8)
    out = labels.copy()
    was = labels == label
    out[was & ~refined] = LITS_LIVER if label == LITS_TUMOUR and set(np.unique(labels).tolist()) <= {0, 1, 2} else 0
    out[refined] = label
    return out


def refine_volume(image: Volume, mask: Volume, label: int | None = None, refiner: Refiner | None = None,
                  progress: Progress | None = None) -> tuple[Volume, dict[str, Any]]:
    """Refine ``mask`` (already on ``image``'s grid) and return it in the same form, with stats."""
    if image.array.shape != mask.array.shape:
        raise RefineError(f"CT {image.array.shape} and mask {mask.array.shape} grids differ: use refine_files, "
                          "which resamples the mask onto the CT.")
    binary, used = select_label(mask.array, label)
    refiner = refiner or Refiner()
    result = refiner.refine(image.array, binary, image.spacing_zyx, progress)
    return Volume(merge_label(mask.array, result.mask, used), image.geometry), result.stats


def load_ct(image_path: str | os.PathLike) -> Volume:
    """The CT reoriented to LPS (see ``load_pair``), with a warning when it does not look like HU."""
    image = io.from_sitk(io.to_lps(io.read_image(image_path)))
    _warn_if_not_hu(image, image_path)
    return image


def _warn_if_not_hu(image: Volume, image_path: str | os.PathLike) -> None:
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
    folder; ``segment`` picks the mask's segment (name or number) in a DICOM SEG or .seg.nrrd,
    ``image_segment`` the truth's when ``image_is_ct`` is False (see ``segments.read_mask``).
    """
    ct = io.read_image(image_path) if image_is_ct else segments.read_mask(image_path, image_segment)
    mask = segments.read_mask(mask_path, segment)
    if ct.GetDimension() != mask.GetDimension():
        raise RefineError(f"CT is {ct.GetDimension()}D but the mask is {mask.GetDimension()}D: give matching volumes.")
    ct, mask = io.to_lps(ct), io.to_lps(mask)
    if not image_is_ct and (segments.has_segments(image_path) or segments.has_segments(mask_path)):
        ct = segments.padded_to_cover(ct, mask)  # a SEG truth is cropped to its frames: keep all predicted voxels
    image = io.from_sitk(ct)
    mask_volume = io.from_sitk(io.resample_mask_to(mask, ct))
    if image_is_ct:
        _warn_if_not_hu(image, image_path)
        checks.check_not_whole_volume(mask_volume.array)
    return image, mask_volume


def refine_files(image_path: str | os.PathLike, mask_path: str | os.PathLike, out_path: str | os.PathLike,
                 label: int | None = None, device: str = "auto", weights: str | None = None, batch_size: int = 128,
                 min_kept: float = MIN_KEPT,
                 force: bool = False, progress: Progress | None = None,
                 segment: str | int | None = None, tta: int = TTA,
                 report: str | os.PathLike | None = None) -> dict[str, Any]:
    """Refine the coarse mask file and write the result on the CT's grid; returns stats.
    ``image_path`` may be a DICOM series folder and ``mask_path`` a DICOM SEG or .seg.nrrd
    (``segment`` picks the segment); an ``out_path`` ending in .dcm writes a DICOM SEG that
    references the series. ``report``: also write the lesion-by-lesion review (``review``) as
    .csv or .json there; its rows are returned under ``stats["review"]``."""
    out = check_result_output(out_path, image_path, [image_path, mask_path], force)
    report_out = check_report_output(report, [image_path, mask_path], force)
    image, mask = load_pair(image_path, mask_path, segment=segment)
    refiner = Refiner(weights, device=device, batch_size=batch_size, min_kept=min_kept, tta=tta)
    refined, stats = refine_volume(image, mask, label, refiner, progress)
    write_result(refined, image_path, out, force)
    if report_out is not None:
        _write_review(image, mask, refined, label, stats, report_out, force)
    return stats


def check_report_output(report: str | os.PathLike | None, inputs: Sequence[str | os.PathLike | None],
                        force: bool) -> Path | None:
    """Refuse, before any work, a lesion report path that is not .csv/.json (so it is never a
    mask output), exists (unless ``force``), is an input or is in a missing folder."""
    if report is None:
        return None
    review.report_suffix(report)
    return io.check_output(report, inputs, force, suffixes=review.REPORT_SUFFIXES)


def _write_review(image: Volume, coarse: Volume, refined: Volume, label: int | None, stats: dict[str, Any],
                  report: Path, force: bool) -> None:
    """Review the refinement lesion by lesion, write the report and put its rows in ``stats``."""
    coarse_mask, used = select_label(coarse.array, label)
    refined_mask = refined.array == used if used is not None else refined.array != 0
    rows = review.review_lesions(coarse_mask, refined_mask, image.spacing_zyx, refiner_lesions=stats.get("lesions"),
                                 geometry=image.geometry)
    review.write_report(rows, report, force=force)
    stats["review"] = [row.to_dict() for row in rows]


def check_result_output(out_path: str | os.PathLike, image_path: str | os.PathLike,
                        inputs: Sequence[str | os.PathLike | None], force: bool) -> Path:
    """``io.check_output`` for a volume file; for a DICOM SEG (.dcm) the CT must be a DICOM series."""
    if dicom.is_dicom_seg_path(out_path):
        return dicom.check_seg_output(out_path, image_path, force)
    return io.check_output(out_path, inputs, force)


def write_result(volume: Volume, image_path: str | os.PathLike, out: str | os.PathLike, force: bool) -> None:
    """Write ``volume``, computed on the LPS grid ``load_ct``/``load_pair`` give, back on the CT's
    own grid: a DICOM SEG referencing the CT series for a .dcm ``out``, else a volume file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped DICOM slices were reported when the CT was read
        on_grid = io.back_on_grid(volume, image_path)
        series = dicom.read_series(image_path, pixels=False) if dicom.is_dicom_seg_path(out) else None
    if series is not None:
        dicom.write_seg(on_grid, series, out, force=force)
    else:
        io.write_volume(on_grid, out, force=force)


COARSE_SOURCES = ("seeds", "auto", "totalsegmentator")


def coarse_from_seeds(image: Volume, seeds_ras: Sequence[Point]) -> Volume:
    """A 0/1 coarse tumour mask grown from one RAS point (mm) per lesion (see ``seeded``)."""
    voxels = ras_to_voxels(seeds_ras, image)
    return image.with_array(grow_from_seeds(image.array, voxels, image.spacing_zyx).astype(np.uint8))


def segment_volume(image: Volume, weights: str | os.PathLike | None = None, device: str = "auto",
                   progress: Progress | None = None) -> Volume:
    """Automatic coarse 0/1/2 (background, liver, tumour) labels of an LPS-oriented CT volume."""
    return image.with_array(Segmenter(weights, device=device).segment(image.array, image.spacing_zyx, progress))


def coarse_for(image_path: str | os.PathLike, image: Volume, source: str, seeds: Sequence[Point] | None = None,
               device: str = "auto", seg_weights: str | os.PathLike | None = None,
               progress: Progress | None = None) -> Volume:
    """The coarse mask of ``image`` (read from ``image_path``) from ``source``: "seeds" (0/1),
    "auto" (0/1/2 from the shipped coarse network) or "totalsegmentator" (0/1)."""
    if source == "seeds":
        if isinstance(seeds, str):
            seeds = parse_seeds(seeds)
        if seeds is None or len(seeds) == 0:
            raise RefineError("The seeded coarse source needs at least one seed inside a lesion.",
                              cli="The seeded coarse source needs at least one seed inside a lesion (--seeds).")
        coarse = coarse_from_seeds(image, check_points(seeds))
    elif source == "auto":
        coarse = segment_volume(image, seg_weights, device, progress)
        if not (coarse.array == LITS_TUMOUR).any():
            found = "a liver but no tumour" if (coarse.array == LITS_LIVER).any() else "neither liver nor tumour"
            raise RefineError(f"The automatic coarse segmentation found {found} in {image_path}: place one seed per "
                              "lesion (--seeds) or give a coarse mask (--mask).")
    elif source == "totalsegmentator":
        coarse = image.with_array(totalseg.tumour_mask(image_path, image, device).astype(np.uint8))
        if not coarse.array.any():
            raise RefineError(f"TotalSegmentator found no liver tumour in {image_path}: place one seed per lesion "
                              "(--seeds) or give a coarse mask (--mask).")
    else:
        raise RefineError(f"Unknown coarse source {source!r}: choose one of {', '.join(COARSE_SOURCES)}.")
    return coarse


def refine_without_mask(image_path: str | os.PathLike, out_path: str | os.PathLike, source: str = "seeds",
                        seeds: Sequence[Point] | None = None, coarse_out: str | os.PathLike | None = None,
                        device: str = "auto", weights: str | None = None, seg_weights: str | None = None,
                        batch_size: int = 128, min_kept: float = MIN_KEPT, force: bool = False,
                        progress: Progress | None = None, coarse_progress: Progress | None = None,
                        tta: int = TTA, report: str | os.PathLike | None = None) -> dict[str, Any]:
    """Make a coarse mask from ``source`` (see ``coarse_for``), refine it and write the result
    (and, with ``coarse_out``, the coarse mask) on the CT's grid; returns stats with the coarse
    step's seconds under ``seconds["coarse"]``. ``seeds``: RAS points in mm, or the same as a
    string ``"R,A,S;R,A,S"``. ``coarse_progress`` reports the coarse network's progress.
    ``report``: as in ``refine_files``."""
    out = check_result_output(out_path, image_path, [image_path], force)
    extra = check_result_output(coarse_out, image_path, [image_path], force) if coarse_out is not None else None
    if extra is not None and extra.resolve() == out.resolve():
        raise RefineError("coarse_out and out_path are the same file: choose two paths.",
                          cli="--coarse-out and --out are the same file: choose two paths.")
    seed_file = seeds if isinstance(seeds, (str, os.PathLike)) and is_seed_file(str(seeds)) else None
    report_out = check_report_output(report, [image_path, seed_file], force)
    refiner = Refiner(weights, device=device, batch_size=batch_size, min_kept=min_kept, tta=tta)  # fail early on bad weights
    image = load_ct(image_path)
    t0 = time.perf_counter()
    coarse = coarse_for(image_path, image, source, seeds, device, seg_weights, coarse_progress)
    seconds = time.perf_counter() - t0
    refined, stats = refine_volume(image, coarse, None, refiner, progress)
    if extra is not None:
        write_result(coarse, image_path, extra, force)
    write_result(refined, image_path, out, force)
    if report_out is not None:
        _write_review(image, coarse, refined, None, stats, report_out, force)
    stats["seconds"]["coarse"] = seconds
    stats["coarse_source"] = source
    return stats


def segment_file(image_path: str | os.PathLike, out_path: str | os.PathLike, weights: str | None = None,
                 device: str = "auto", force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Write the automatic coarse 0/1/2 label map of a CT file on its grid; returns volumes and timing."""
    out = check_result_output(out_path, image_path, [image_path], force)
    image = load_ct(image_path)
    t0 = time.perf_counter()
    segmenter = Segmenter(weights, device=device)
    labels = image.with_array(segmenter.segment(image.array, image.spacing_zyx, progress))
    seconds = time.perf_counter() - t0
    write_result(labels, image_path, out, force)
    ml = float(np.prod(image.spacing_zyx)) / 1000.0
    return {"liver_ml": float((labels.array > 0).sum()) * ml, "tumour_ml": float((labels.array == 2).sum()) * ml,
            "tumours": int(component_labels(labels.array == 2).max()), "seconds": seconds,
            "device": str(segmenter.device)}


def evaluate_files(truth_path: str | os.PathLike, pred_path: str | os.PathLike, label: int | None = None,
                   segment: str | int | None = None, pred_segment: str | int | None = None) -> dict[str, float]:
    """Metrics of a predicted mask file against a truth file (pred resampled onto truth's grid).
    ``segment`` picks the segment (name or number) of whichever file is a DICOM SEG or
    .seg.nrrd; ``pred_segment`` overrides it for the prediction."""
    truth_has, pred_has = segments.has_segments(truth_path), segments.has_segments(pred_path)
    if segment is not None and not (truth_has or pred_has):
        raise RefineError(f"A segment ({segment}) was given but neither {truth_path} nor {pred_path} is a DICOM SEG "
                          "or .seg.nrrd: choose the tumour value with the label instead.")
    pred_choice = pred_segment if pred_segment is not None else segment if pred_has else None
    truth, pred = load_pair(truth_path, pred_path, image_is_ct=False, segment=pred_choice,
                            image_segment=segment if truth_has else None)
    truth_mask, used = select_label(truth.array, label)
    if not truth_mask.any():
        raise RefineError(f"The reference {truth_path} has no tumour voxels: Dice and surface distances are undefined "
                          "against an empty reference (there is no tumour in the reference). Evaluate cases whose "
                          "reference has a tumour, or check the file and the tumour label.")
    if label is None and used == LITS_LIVER and set(np.unique(truth.array).tolist()) <= {0, LITS_LIVER}:
        pred_values = set(np.unique(pred.array).tolist())
        if LITS_TUMOUR in pred_values and pred_values <= {0, LITS_LIVER, LITS_TUMOUR}:
            message = (f"The reference {truth_path} holds label 1 only while {pred_path} is a LiTS liver (1) and "
                       "tumour (2) map: the reference looks like a liver with no tumour, and scoring it would score "
                       "the liver. If label 1 really is the tumour, select it explicitly")
            raise RefineError(message + " (label=1).", cli=message + " (--label 1).")
    return compute_metrics(truth_mask, prediction_mask(pred.array, used), truth.spacing_zyx)


def prediction_mask(labels: np.ndarray, label: int | None) -> np.ndarray:
    """The predicted tumour for evaluation: the truth's label when present, else the foreground
    of a binary mask (one non-zero value: a 0/1 prediction counts as tumour, even against a
    LiTS truth), else empty (a label map without tumour is a valid, if poor, answer)."""
    values = set(np.unique(labels).tolist())
    if label is not None and label in values:
        return labels == label
    if len(values - {0}) == 1:
        return labels != 0
    return np.zeros(labels.shape, dtype=bool)
