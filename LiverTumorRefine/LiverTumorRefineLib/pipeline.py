"""The engine's one entry point: a CT and a coarse source in, the refined mask out.

``RefinePipeline`` is to this engine what nnU-Net's predictor is to nnU-Net: built once (model
loaded, device chosen), then run on volumes (``run``) or files (``run_files``). The CLI, the
Python API (``api``) and the Slicer worker (``worker``) all call it, so orientation, the coarse
sources, the device policy, the GPU out-of-memory fallback and progress live here once.

    from LiverTumorRefineLib.pipeline import RefinePipeline
    pipeline = RefinePipeline(device="auto")
    result = pipeline.run(ct_volume, coarse_volume)                    # arrays with geometry
    result = pipeline.run(ct_volume, source="seeds", seeds=[(-60.5, 20.0, -310.0)])
    stats = pipeline.run_files("ct.nii.gz", "refined.nii.gz", mask_path="coarse.nii.gz")
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from LiverTumorRefineLib.coarse.sources import make_coarse, source_named
from LiverTumorRefineLib.config import MIN_KEPT, TTA
from LiverTumorRefineLib.device import check_device, with_cpu_fallback
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, part, report
from LiverTumorRefineLib.volume import files, io
from LiverTumorRefineLib.volume.geometry import Volume
from LiverTumorRefineLib.volume.labels import merge_label, select_label

# Shares of the progress bar when one callback follows the whole run.
COARSE_END, REFINE_END = 0.3, 0.95
T = TypeVar("T")


@dataclass
class PipelineResult:
    """What one run gives back, on the input CT's grid and orientation.

    ``refined``: the refined mask in the coarse mask's own form (a label map keeps its other
    labels); ``coarse``: the coarse mask used (given or made); ``label``: the tumour label in both
    (None: a 0/1 mask); ``stats``: the Refiner's stats (patches, seconds, lesions, device);
    ``notes``: things the user should know (GPU fallback); ``metrics``: against ``truth``, if given.
    """

    refined: Volume
    coarse: Volume
    label: int | None
    stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] | None = None
    uncertain: np.ndarray | None = None  # bool: where the augmented predictions disagree (RefineResult.uncertain)

    @property
    def refined_mask(self) -> np.ndarray:
        """The refined tumour as a bool array."""
        return tumour_of(self.refined.array, self.label)

    @property
    def coarse_mask(self) -> np.ndarray:
        """The coarse tumour as a bool array."""
        return tumour_of(self.coarse.array, self.label)


class RefinePipeline:
    """Coarse source -> boundary refinement -> (metrics), for volumes and files.

    ``weights``: None (shipped model), a model file or an in-memory BRNet; ``device``: "auto",
    "cpu" or "cuda"; ``seg_weights``: the automatic coarse network's file (None: shipped);
    ``refiner_options``: further ``Refiner`` options (``agreement``, ``removal_agreement``, ``shrink``,
    ``intensity_gate``).
    """

    def __init__(self, weights: Any = None, device: str = "auto", batch_size: int = 128, min_kept: float = MIN_KEPT,
                 tta: int = TTA, seg_weights: str | os.PathLike | None = None, **refiner_options: Any) -> None:
        self.device = check_device(device)
        self.weights, self.seg_weights = weights, seg_weights
        self.options = dict(batch_size=batch_size, min_kept=min_kept, tta=tta, **refiner_options)
        self._refiner: Any = None  # built on first use: output paths are checked before the model is loaded

    @property
    def refiner(self):
        """The ``Refiner`` (built, and its model loaded, on first use)."""
        if self._refiner is None:
            self._refiner = make_refiner(self.weights, self.device, self.options)
        return self._refiner

    def load(self) -> None:
        """Load the model now (it is otherwise loaded on first use)."""
        _ = self.refiner

    def read_while_loading(self, read: Callable[[], T]) -> T:
        """``read()`` on a thread while the model loads on this one; its result. Reading NIfTI, NRRD
        and MHA files happens in SimpleITK, which releases the GIL, so the read hides behind the
        PyTorch import and the model load (about 0.4 s of a 512x512x120 CT). A read error is
        raised before a model error: the input is what the user fixes first."""
        if self._refiner is not None:
            return read()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="LiverTumorRefine-read") as pool:
            reading = pool.submit(read)
            try:
                self.load()
            except BaseException:
                reading.result()
                raise
            return reading.result()

    @classmethod
    def around(cls, refiner: Any, seg_weights: str | os.PathLike | None = None) -> "RefinePipeline":
        """A pipeline reusing a ``Refiner`` already built (its model, device and options)."""
        pipeline = cls.__new__(cls)
        pipeline._refiner, pipeline.device = refiner, refiner.device.type
        pipeline.weights, pipeline.seg_weights = refiner.model, seg_weights
        pipeline.options = dict(batch_size=refiner.batch_size, min_kept=refiner.min_kept, tta=refiner.tta,
                                agreement=refiner.agreement, removal_agreement=refiner.removal_agreement,
                                shrink=refiner.shrink, intensity_gate=refiner.intensity_gate)
        return pipeline

    # ------------------------------------------------------------------ volumes
    def run(self, image: Volume, coarse: Volume | None = None, *, source: str = "mask",
            seeds: Sequence[Sequence[float]] | None = None, negative_seeds: Sequence[Sequence[float]] | None = None,
            seed_method: str = "auto", label: int | None = None, truth: Volume | np.ndarray | None = None, ct_path: str | os.PathLike | None = None,
            progress: Progress | None = None, coarse_progress: Progress | None = None) -> PipelineResult:
        """Refine ``coarse`` (on ``image``'s grid), or the mask ``source`` makes from ``image``.

        ``image`` may have any orientation: the work is done on its axial (LPS) reordering and the
        result comes back on ``image``'s own grid. ``label`` picks the tumour label of a label map
        (see ``select_label``); ``truth`` (a mask on the same grid) adds metrics; ``ct_path`` is
        the CT's file, for a source that reads files (TotalSegmentator). ``progress`` follows the
        whole run, unless ``coarse_progress`` is given for the coarse step."""
        kind = source_named(source).name
        if (coarse is None) == (kind == "mask"):
            raise RefineError("Give either a coarse mask or a coarse source that makes one (seeds, automatic, "
                              "totalsegmentator), not both.")
        code = io.orientation(image.geometry.direction)
        axial = io.reoriented(image, "LPS")  # patches are cut in axial planes
        notes: list[str] = []
        self.load()  # before a slow coarse step, so that bad weights fail first
        made = kind != "mask"
        coarse_share = COARSE_END if made and coarse_progress is None else 0.0
        t0 = time.perf_counter()
        guards: list[Callable[[np.ndarray], np.ndarray]] = []  # what the source asks of the refined mask
        if made:
            coarse_axial = make_coarse(kind, axial, seeds=seeds, negative_seeds=negative_seeds, seed_method=seed_method,
                                       device=self.device, seg_weights=self.seg_weights,
                                       ct_path=ct_path, notes=notes,
                                       progress=coarse_progress or part(progress, 0.0, coarse_share), guards=guards)
        else:
            check_same_grid(image, coarse, "coarse mask")
            coarse_axial = io.reoriented(coarse, "LPS")
        coarse_seconds = time.perf_counter() - t0
        binary, used = select_label(coarse_axial.array, label, copy=False)  # read only: the Refiner never writes it
        end = REFINE_END if truth is not None else 1.0
        # a click-made mask is refined as a click's is (config.SEEDED_REFINEMENT)
        refinement = self.refine_mask(axial, binary, part(progress, coarse_share, end), notes, seeded=kind == "seeds")
        refined_binary, stats = refinement.mask, refinement.stats
        for guard in guards:
            refined_binary = guard(refined_binary)
        if guards:  # the guards changed the refinement: count its changes again
            stats["voxels_changed"] = int(np.count_nonzero(refined_binary != binary))
        del binary  # where select_label made a volume-sized mask: freed before the result's arrays are made (peak memory)
        if made:
            stats["seconds"]["coarse"] = coarse_seconds
            stats["coarse_source"] = kind
        # the result may take the refined mask's memory: nothing below reads refined_binary
        refined = io.reoriented(Volume(merge_label(coarse_axial.array, refined_binary, used, reuse=True), axial.geometry), code)
        result = PipelineResult(refined, io.reoriented(coarse_axial, code), used, stats, notes)
        if refinement.uncertain is not None:  # as is on an axial CT: no copy of a volume-sized map
            result.uncertain = io.reoriented(Volume(refinement.uncertain, axial.geometry), code).array
        if truth is not None:
            report(progress, REFINE_END, "Computing metrics")
            result.metrics = metrics_against(truth, result, image)
        report(progress, 1.0, "Refinement done")
        return result

    def refine_mask(self, image: Volume, mask: np.ndarray, progress: Progress | None,
                    notes: list[str], seeded: bool = False):
        """The Refiner's result (``RefineResult``: mask, stats, uncertain) on an LPS volume, as a
        click-made mask is refined when ``seeded`` (``Refiner.refine_seeded``), falling back to the
        CPU if the GPU runs out of memory."""
        def on(device: str):
            refiner = self.refiner if device == self.device else make_refiner(self.weights, device, self.options)
            refine = refiner.refine_seeded if seeded else refiner.refine
            return refine(image.array, mask, image.spacing_zyx, progress)

        result = with_cpu_fallback(on, self.device, "refinement", notes)
        if str(self.refiner.device).startswith("cuda") and result.stats.get("device") == "cpu" and not notes:
            notes.append("The GPU ran out of memory part-way; the refinement finished on the CPU (slower).")
        return result  # a RefineResult: mask, stats, uncertain

    # ------------------------------------------------------------------ files
    def run_files(self, image_path: str | os.PathLike, out_path: str | os.PathLike,
                  mask_path: str | os.PathLike | None = None, *, source: str = "mask",
                  seeds: Sequence[Sequence[float]] | str | os.PathLike | None = None,
                  negative_seeds: Sequence[Sequence[float]] | str | os.PathLike | None = None, seed_method: str = "auto",
                  label: int | None = None, segment: str | int | None = None, coarse_out: str | os.PathLike | None = None,
                  report_path: str | os.PathLike | None = None, force: bool = False,
                  progress: Progress | None = None, coarse_progress: Progress | None = None,
                  dicom_output: str | None = None) -> dict[str, Any]:
        """Refine a CT file's coarse mask file (``mask_path``), or the mask ``source`` makes, and
        write the result on the CT's own grid (a .dcm ``out_path``: a DICOM SEG referencing the
        series, or an RT structure set with ``dicom_output="rtstruct"``, the default when the mask
        is one); returns the stats. ``coarse_out`` also writes a made coarse mask; ``report_path``
        the lesion-by-lesion review (.csv/.json), whose rows come back under ``stats["review"]``.
        Every output is checked before any work and written atomically."""
        from LiverTumorRefineLib.coarse.points import is_seed_file, parse_seeds, parse_signed_seeds

        kind = source_named(source).name
        if (mask_path is None) == (kind == "mask"):
            raise RefineError("Give either a coarse mask file or a coarse source that makes one, not both.",
                              cli="Give either --mask or one coarse source (--seeds, --auto-coarse, --totalsegmentator).")
        seed_file = seeds if isinstance(seeds, (str, os.PathLike)) and is_seed_file(str(seeds)) else None
        negative_file = (negative_seeds if isinstance(negative_seeds, (str, os.PathLike))
                         and is_seed_file(str(negative_seeds)) else None)
        inputs = [image_path, mask_path, seed_file, negative_file]
        out = files.check_result_output(out_path, image_path, inputs, force)
        extra = files.check_result_output(coarse_out, image_path, inputs, force) if coarse_out is not None else None
        written_as = files.dicom_output_for(out, mask_path, dicom_output)
        if extra is not None and extra.resolve() == out.resolve():
            raise RefineError("coarse_out and out_path are the same file: choose two paths.",
                              cli="--coarse-out and --out are the same file: choose two paths.")
        report_out = check_report_output(report_path, inputs, force)
        negative = list(parse_seeds(str(negative_seeds)) if isinstance(negative_seeds, (str, os.PathLike))
                        else negative_seeds or [])
        if isinstance(seeds, (str, os.PathLike)):  # a seed file may hold negative points too
            seeds, negative_in_file = parse_signed_seeds(str(seeds))
            negative += negative_in_file
        if mask_path is not None:
            image, coarse = self.read_while_loading(lambda: files.load_pair(image_path, mask_path, segment=segment))
        else:
            image, coarse = self.read_while_loading(lambda: files.load_ct(image_path)), None
        result = self.run(image, coarse, source=kind, seeds=seeds, negative_seeds=negative, seed_method=seed_method,
                          label=label, ct_path=image_path,
                          progress=progress, coarse_progress=coarse_progress)
        del coarse  # result.coarse keeps what is still needed
        if report_out is None:
            del image  # only the review reads the CT again: freed before writing (peak memory)
        if extra is not None:
            files.write_result(result.coarse, image_path, extra, force, written_as)
        files.write_result(result.refined, image_path, out, force, written_as)
        if report_out is not None:
            result.stats["review"] = write_review(image, result, report_out, force)
        return result.stats


def check_report_output(report_path: str | os.PathLike | None, inputs: Sequence[str | os.PathLike | None],
                        force: bool) -> Path | None:
    """Refuse, before any work, a lesion report path that is not .csv/.json (so it is never a
    mask output), exists (unless ``force``), is an input or is in a missing folder."""
    from LiverTumorRefineLib.evaluate import review

    if report_path is None:
        return None
    review.report_suffix(report_path)
    return io.check_output(report_path, inputs, force, suffixes=review.REPORT_SUFFIXES)


def write_review(image: Volume, result: PipelineResult, report_path: Path, force: bool) -> list[dict[str, Any]]:
    """Review the refinement lesion by lesion, write the report; returns its rows."""
    from LiverTumorRefineLib.evaluate import review

    rows = review.review_lesions(result.coarse_mask, result.refined_mask, image.spacing_zyx,
                                 refiner_lesions=result.stats.get("lesions"), geometry=image.geometry)
    review.write_report(rows, report_path, force=force)
    return [row.to_dict() for row in rows]


def make_refiner(weights: Any, device: str, options: dict[str, Any]):
    """The engine's Refiner (a RefineError with the install hint when PyTorch is missing)."""
    try:
        from LiverTumorRefineLib.refine.refiner import Refiner
    except ImportError as exc:
        if getattr(exc, "name", "") == "torch" or "torch" in str(exc):
            raise RefineError("PyTorch is not installed: install it (in 3D Slicer with the PyTorch Utils module, "
                              "then restart) and try again.") from None
        raise
    return Refiner(weights, device=device, **options)


def tumour_of(labels: np.ndarray, label: int | None) -> np.ndarray:
    """The tumour of a mask in ``merge_label``'s form: ``label``'s voxels, or any non-zero voxel."""
    return labels == label if label is not None else labels != 0


def check_same_grid(image: Volume, mask: Volume, role: str) -> None:
    """A mask given as a volume must be on the CT's grid (files are resampled by ``load_pair``)."""
    if image.array.shape != mask.array.shape:
        raise RefineError(f"CT {image.array.shape} and {role} {mask.array.shape} grids differ: resample the mask "
                          "onto the CT (the file entry point does that).")


def metrics_against(truth: Volume | np.ndarray, result: PipelineResult, image: Volume) -> dict[str, dict[str, float]]:
    """LiTS metrics of the coarse and the refined tumour against ``truth`` (on ``image``'s grid)."""
    from LiverTumorRefineLib.evaluate.metrics import compute_metrics

    array = truth.array if isinstance(truth, Volume) else np.asarray(truth)
    if array.shape != image.array.shape:
        raise RefineError(f"The reference {array.shape} is not on the CT's grid {image.array.shape}.")
    reference = array.astype(bool, copy=False)  # read only
    return {"coarse": compute_metrics(reference, result.coarse_mask, image.spacing_zyx),
            "refined": compute_metrics(reference, result.refined_mask, image.spacing_zyx)}
