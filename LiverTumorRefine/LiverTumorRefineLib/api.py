"""Python API on volumes and files: refinement from a coarse mask or a coarse source, the
automatic coarse labels, evaluation. Every refinement goes through the one entry point,
``pipeline.RefinePipeline``; these functions are its short forms.

    from LiverTumorRefineLib import api
    stats = api.refine_files("ct.nii.gz", "coarse.nii.gz", "refined.nii.gz")
    stats = api.refine_without_mask("ct.nii.gz", "refined.nii.gz", seeds=[(-60.5, 20.0, -310.0)])
    stats = api.refine_without_mask("ct.nii.gz", "refined.nii.gz", source="automatic")
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from LiverTumorRefineLib.coarse.points import Point
from LiverTumorRefineLib.coarse.sources import SOURCES, automatic_labels, from_seeds, make_coarse
from LiverTumorRefineLib.config import INTENSITY_GATE, MIN_KEPT, TTA
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics
from LiverTumorRefineLib.pipeline import RefinePipeline, check_report_output
from LiverTumorRefineLib.progress import Progress
from LiverTumorRefineLib.refine.boxes import component_labels
from LiverTumorRefineLib.volume import rtstruct, segments
from LiverTumorRefineLib.volume.files import check_result_output, load_ct, load_pair, masks_on_ct, write_result
from LiverTumorRefineLib.volume.geometry import Volume
from LiverTumorRefineLib.volume.labels import LITS_LIVER, LITS_TUMOUR, merge_label, prediction_mask, select_label

__all__ = ["COARSE_SOURCES", "LITS_LIVER", "LITS_TUMOUR", "RefinePipeline", "check_report_output",
           "check_result_output", "click_lesion", "coarse_for", "coarse_from_seeds", "evaluate_files", "load_ct", "load_pair",
           "merge_label", "prediction_mask", "refine_files", "refine_volume", "refine_without_mask", "segment_file",
           "segment_volume", "select_label", "write_result"]

# The coarse sources that make a mask (the "mask" source is a mask the user gives).
COARSE_SOURCES = tuple(source.name for source in SOURCES if source.name != "mask")


def refine_volume(image: Volume, mask: Volume, label: int | None = None, refiner: Any = None,
                  progress: Progress | None = None) -> tuple[Volume, dict[str, Any]]:
    """Refine ``mask`` (on ``image``'s grid) and return it in the same form, with stats.
    ``refiner``: a ``Refiner`` to reuse (None: the shipped model on the best device)."""
    pipeline = RefinePipeline.around(refiner) if refiner is not None else RefinePipeline()
    result = pipeline.run(image, mask, label=label, progress=progress)
    return result.refined, result.stats


def refine_files(image_path: str | os.PathLike, mask_path: str | os.PathLike, out_path: str | os.PathLike,
                 label: int | None = None, device: str = "auto", weights: str | None = None, batch_size: int = 128,
                 min_kept: float = MIN_KEPT, force: bool = False, progress: Progress | None = None,
                 segment: str | int | None = None, tta: int = TTA,
                 report: str | os.PathLike | None = None, runtime: str = "auto",
                 intensity_gate: bool = INTENSITY_GATE, dicom_output: str | None = None) -> dict[str, Any]:
    """Refine the coarse mask file and write the result on the CT's grid; returns stats.
    ``image_path`` may be a DICOM series (its folder, or one of its files) and ``mask_path`` a
    DICOM SEG, .seg.nrrd or RT structure set (``segment`` picks the segment or structure); an
    ``out_path`` ending in .dcm writes a DICOM SEG that references the series, or an RT structure
    set (``dicom_output="rtstruct"``; the default when ``mask_path`` is one). ``report``: also
    write the lesion-by-lesion review (``review``) as .csv or .json there; its rows are returned
    under ``stats["review"]``. ``runtime`` and ``intensity_gate``: see ``Refiner``."""
    pipeline = RefinePipeline(weights, device=device, batch_size=batch_size, min_kept=min_kept, tta=tta, runtime=runtime,
                              intensity_gate=intensity_gate)
    return pipeline.run_files(image_path, out_path, mask_path, label=label, segment=segment, report_path=report,
                              force=force, progress=progress, dicom_output=dicom_output)


def refine_without_mask(image_path: str | os.PathLike, out_path: str | os.PathLike, source: str = "seeds",
                        seeds: Sequence[Point] | str | None = None, coarse_out: str | os.PathLike | None = None,
                        device: str = "auto", weights: str | None = None, seg_weights: str | None = None,
                        batch_size: int = 128, min_kept: float = MIN_KEPT, force: bool = False,
                        progress: Progress | None = None, coarse_progress: Progress | None = None,
                        tta: int = TTA, report: str | os.PathLike | None = None, runtime: str = "auto",
                        negative_seeds: Sequence[Point] | str | None = None, seed_method: str = "auto",
                        intensity_gate: bool = INTENSITY_GATE, dicom_output: str | None = None) -> dict[str, Any]:
    """Make a coarse mask from ``source`` ("seeds", "automatic" (or "auto"), "totalsegmentator"),
    refine it and write the result (and, with ``coarse_out``, the coarse mask) on the CT's grid;
    returns stats with the coarse step's seconds under ``seconds["coarse"]``. ``seeds``: RAS
    points in mm, one per lesion, or a list of a lesion's points in place of its point (the first
    inside it, the others corrective clicks); or a string ``"R,A,S;R,A,S"``, or a .mrk.json file
    (points described "lesion N" grouped).
    ``coarse_progress`` reports the coarse step's progress. ``report``: as in ``refine_files``.
    ``negative_seeds``: RAS points (or a string or file like ``seeds``) of leaks to keep out;
    ``seed_method``: "auto", "hybrid", "rays" or "model" (see ``coarse.clicks.SEED_METHODS``);
    ``intensity_gate``: see ``Refiner``; ``dicom_output``: as in ``refine_files`` (default a DICOM SEG)."""
    pipeline = RefinePipeline(weights, device=device, batch_size=batch_size, min_kept=min_kept, tta=tta,
                              seg_weights=seg_weights, runtime=runtime, intensity_gate=intensity_gate)
    return pipeline.run_files(image_path, out_path, source=source, seeds=seeds, negative_seeds=negative_seeds,
                              seed_method=seed_method, coarse_out=coarse_out,
                              report_path=report, force=force, progress=progress, coarse_progress=coarse_progress,
                              dicom_output=dicom_output)


def click_lesion(image: Volume, positive: Sequence[Point], negative: Sequence[Point] = (), *,
                 other_lesions: Sequence[Point] = (), refiner: Any = None, segmenter: Any = None) -> dict[str, Any]:
    """One lesion from its clicks (RAS mm; the first positive click places its crop, and a positive
    click beyond it adds a crop around itself), by the hybrid
    (the ray grower's lesion with the click model's near the first click, corrected near each
    further click with the click model; see
    ``coarse.clicks.hybrid_lesion``) and then the refiner, on that lesion's crop only. A correction is the same call with
    the previous clicks and one more (positive: add a missed part; negative: remove a leak);
    undo is the call without the last click. ``image``: an LPS-oriented CT (``load_ct``);
    ``other_lesions``: the first clicks of the other lesions, whose voxels this one never takes.
    ``refiner``/``segmenter``: a loaded ``Refiner`` and ``clicknet.ClickSegmenter`` to use
    (default: the shipped models, loaded once per process, the refiner keeping its refined boxes:
    ``clicks.shipped_refiner``). Returns {"box": the CT voxels (z, y, x slices), "coarse" and
    "refined": bool arrays on that box, "seconds"}."""
    from LiverTumorRefineLib.coarse import clicks
    from LiverTumorRefineLib.coarse.points import check_points, ras_to_voxels

    if len(positive) == 0:
        raise RefineError("A lesion needs at least one positive click inside it.")
    t0 = time.perf_counter()
    voxels = [ras_to_voxels(check_points(points), image) if len(points) else []
              for points in (positive, negative, other_lesions)]
    lesion = clicks.LesionClicks(tuple(voxels[0]), tuple(voxels[1]))
    others = [clicks.LesionClicks((v,)) for v in voxels[2]]
    coarse, refined = clicks.click_lesion(segmenter or clicks.shipped_segmenter(), refiner or clicks.shipped_refiner(),
                                          image.array, image.spacing_zyx, lesion, others)
    on_refined = np.zeros(tuple(b.stop - b.start for b in refined.box), dtype=bool)
    on_refined[tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(coarse.box, refined.box))] = coarse.mask
    return {"box": refined.box, "coarse": on_refined, "refined": refined.mask, "seconds": time.perf_counter() - t0}


def coarse_from_seeds(image: Volume, seeds_ras: Sequence[Point]) -> Volume:
    """A 0/1 coarse tumour mask grown from one RAS point (mm) per lesion (see ``seeded``)."""
    return from_seeds(image, seeds_ras)


def segment_volume(image: Volume, weights: str | os.PathLike | None = None, device: str = "auto",
                   progress: Progress | None = None) -> Volume:
    """Automatic coarse 0/1/2 (background, liver, tumour) labels of an LPS-oriented CT volume."""
    return automatic_labels(image, weights, device, progress)


def coarse_for(image_path: str | os.PathLike, image: Volume, source: str, seeds: Sequence[Point] | None = None,
               device: str = "auto", seg_weights: str | os.PathLike | None = None,
               progress: Progress | None = None) -> Volume:
    """The coarse mask ``source`` makes for ``image`` (read from ``image_path``): see
    ``coarse.sources.make_coarse``."""
    return make_coarse(source, image, seeds=seeds, device=device, seg_weights=seg_weights, ct_path=image_path,
                       progress=progress)


def segment_file(image_path: str | os.PathLike, out_path: str | os.PathLike, weights: str | None = None,
                 device: str = "auto", force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Write the automatic coarse 0/1/2 label map of a CT file on its grid; returns volumes and timing."""
    out = check_result_output(out_path, image_path, [image_path], force)
    image = load_ct(image_path)
    from LiverTumorRefineLib.coarse.autoseg import Segmenter

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
                   segment: str | int | None = None, pred_segment: str | int | None = None,
                   image_path: str | os.PathLike | None = None) -> dict[str, float]:
    """Metrics of a predicted mask file against a truth file (pred resampled onto truth's grid,
    or, with ``image_path``, both onto that CT's grid). ``segment`` picks the segment (name or
    number) of whichever file is a DICOM SEG, .seg.nrrd or RT structure set (filled on the other
    file's grid, or the CT's); ``pred_segment`` overrides it for the prediction. Two RT structure
    sets need ``image_path``: contours have no grid of their own."""
    truth_has, pred_has = segments.has_segments(truth_path), segments.has_segments(pred_path)
    if segment is not None and not (truth_has or pred_has):
        raise RefineError(f"A segment ({segment}) was given but neither {truth_path} nor {pred_path} is a DICOM SEG "
                          "or .seg.nrrd: choose the tumour value with the label instead.")
    pred_choice = pred_segment if pred_segment is not None else segment if pred_has else None
    if image_path is not None:
        truth, pred = masks_on_ct(image_path, (truth_path, segment if truth_has else None), (pred_path, pred_choice))
    elif rtstruct.is_rtstruct(truth_path) and rtstruct.is_rtstruct(pred_path):
        raise RefineError(f"{truth_path} and {pred_path} are both RT structure sets: contours have no voxel grid of "
                          "their own, so give the CT they were drawn on (image_path) to fill both on.",
                          cli=f"{truth_path} and {pred_path} are both RT structure sets: contours have no voxel grid "
                              "of their own, so give the CT they were drawn on with --image.")
    else:
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
