"""The engine's worker: one job folder in, a coarse (optional) and a refined mask out.

    python -m LiverTumorRefineLib.worker --job /tmp/xyz/job.json

The Slicer module starts it with Slicer's own Python (``PythonSlicer``) so that the slow work runs
in its own process: Slicer's main thread holds the GIL while it idles, so a worker *thread* would
advance only while the GUI runs Python. The job folder holds the CT and masks as ``.npy`` arrays
on the CT's voxel grid (array order k, j, i) and ``job.json`` with their geometry (SimpleITK
conventions: LPS, spacing/origin in x, y, z, direction row-major) and the options:

    {"ct": "ct.npy", "geometry": {"spacing": [...], "origin": [...], "direction": [...]},
     "coarse": {"source": "mask", "mask": "coarse.npy"}      # or "seeds" (+ "seeds_ras"),
                                                            # "automatic", "totalsegmentator"
     "truth": "truth.npy" or null, "device": "auto", "weights": null, "seg_weights": null,
     "batch_size": 128, "refiner": {"tta": 8, "agreement": 0.5, "min_kept": 0.3}}

It writes ``refined.npy`` (uint8 0/1), ``coarse_out.npy`` for a coarse mask it made, and last
``result.json`` (stats, metrics, notes, seconds), each atomically. On stdout it prints one JSON
object per line: ``{"progress": f, "message": m}``, then ``{"done": "result.json"}`` or
``{"error": m, "kind": k}``. Exit status: 0 done, 2 a user error (``RefineError``), 3 out of
memory, 1 a bug (traceback on stderr). ``run_job`` is the same work in-process.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

import numpy as np

from LiverTumorRefineLib.volume.atomic import atomic_path, write_text
from LiverTumorRefineLib.errors import RefineCancelled, RefineError

Progress = Callable[[float, str], Optional[bool]]

JOB_VERSION = 1
RESULT_FILE = "result.json"
REFINED_FILE = "refined.npy"
COARSE_OUT_FILE = "coarse_out.npy"
SOURCES = ("mask", "seeds", "automatic", "totalsegmentator")
EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_MEMORY = 0, 1, 2, 3
# Share of the worker's progress the coarse step takes when the worker makes the coarse mask.
_COARSE_END, _REFINE_END, _METRICS_END = 0.3, 0.92, 0.97
GPU_OOM_NOTE = ("The GPU ran out of memory; the {step} ran on the CPU instead (slower). Close other GPU programs or "
                "choose CPU to skip the GPU attempt.")


def write_job(folder: str | Path, ct: np.ndarray, geometry: dict[str, Any], coarse: dict[str, Any],
              coarse_mask: np.ndarray | None = None, truth: np.ndarray | None = None, **options: Any) -> Path:
    """Write a job folder (arrays as .npy, options as job.json); returns the job.json path."""
    folder = Path(folder)
    np.save(folder / "ct.npy", np.ascontiguousarray(ct, dtype=np.float32))
    coarse = dict(coarse)
    if coarse_mask is not None:
        np.save(folder / "coarse.npy", np.ascontiguousarray(coarse_mask, dtype=np.uint8))
        coarse["mask"] = "coarse.npy"
    if truth is not None:
        np.save(folder / "truth.npy", np.ascontiguousarray(truth, dtype=np.uint8))
    job = {"version": JOB_VERSION, "ct": "ct.npy", "geometry": geometry, "coarse": coarse,
           "truth": "truth.npy" if truth is not None else None, **options}
    path = folder / "job.json"
    write_text(path, json.dumps(jsonable(job)))
    return path


def read_result(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """``result.json``, the refined mask and the coarse mask the worker made (or None) of a done job."""
    folder = Path(folder)
    result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    coarse = folder / COARSE_OUT_FILE
    return (result, np.load(folder / REFINED_FILE).astype(bool),
            np.load(coarse).astype(bool) if result.get("coarse_made") else None)


def run_job(job_path: str | Path, progress: Progress | None = None, weights: Any = None) -> dict[str, Any]:
    """Do the job described by ``job_path`` and write its results beside it; returns result.json's
    content. ``weights`` (a BRNet) overrides the job's model file for in-process runs."""
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.volume import io
    from LiverTumorRefineLib.volume.checks import hu_plausibility
    from LiverTumorRefineLib.evaluate.metrics import compute_metrics
    from LiverTumorRefineLib.volume.geometry import Geometry, Volume

    t0 = time.perf_counter()
    job_path = Path(job_path)
    folder = job_path.parent
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if job.get("version") != JOB_VERSION:
        raise RefineError(f"The job file {job_path} has version {job.get('version')}, this worker reads version "
                          f"{JOB_VERSION}: restart 3D Slicer after updating the extension.")
    source = job["coarse"]["source"]
    if source not in SOURCES:
        raise RefineError(f"Unknown coarse source {source!r}: choose one of {', '.join(SOURCES)}.")
    g = job["geometry"]
    geometry = Geometry(tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    ct = Volume(np.load(folder / job["ct"]), geometry)
    code = io.orientation(geometry.direction)
    image = io.reoriented(ct, "LPS")  # axial patches need axis 0 inferior-superior
    notes: list[str] = []
    warning = hu_plausibility(ct.array)
    if warning:
        notes.append(warning)
    device = job.get("device", "auto")
    made = source != "mask"
    coarse_end = _COARSE_END if made else 0.02
    _report(progress, 0.0, "Starting")

    if source == "mask":
        coarse = io.reoriented(ct.with_array(np.load(folder / job["coarse"]["mask"])), "LPS")
    else:
        coarse = _make_coarse(api, io, job, source, ct, image, device, _part(progress, 0.0, coarse_end), notes, folder)

    refiner_options = dict(job.get("refiner") or {})
    model = weights if weights is not None else job.get("weights")
    _report(progress, coarse_end, "Loading the refinement model")
    refine_progress = _part(progress, coarse_end, _REFINE_END)
    refiner = make_refiner(model, device, job.get("batch_size", 128), refiner_options)
    try:
        refined, stats = api.refine_volume(image, coarse, None, refiner, refine_progress)
    except RefineError:
        raise
    except Exception as exc:  # noqa: BLE001 - only CUDA out-of-memory is handled, the rest is re-raised
        if not is_cuda_oom(exc) or str(refiner.device) == "cpu":
            raise
        logging.warning("LiverTumorRefine: CUDA out of memory (%s); retrying on the CPU", exc)
        notes.append(GPU_OOM_NOTE.format(step="refinement"))
        refiner = make_refiner(model, "cpu", job.get("batch_size", 128), refiner_options)
        refined, stats = api.refine_volume(image, coarse, None, refiner, refine_progress)
    if str(refiner.device).startswith("cuda") and stats.get("device") == "cpu":
        notes.append("The GPU ran out of memory part-way; the refinement finished on the CPU (slower).")
    mask = io.reoriented(refined, code).array.astype(bool)
    coarse_mask = io.reoriented(coarse, code).array.astype(bool)
    if mask.shape != ct.array.shape:
        raise RuntimeError(f"the refined mask {mask.shape} does not match the CT {ct.array.shape}")  # a bug
    metrics = None
    if job.get("truth"):
        _report(progress, _REFINE_END, "Computing metrics")
        truth = np.load(folder / job["truth"]).astype(bool)
        metrics = {"coarse": compute_metrics(truth, coarse_mask, ct.spacing_zyx),
                   "refined": compute_metrics(truth, mask, ct.spacing_zyx)}
    _report(progress, _METRICS_END, "Writing the result")
    _save(folder / REFINED_FILE, mask.astype(np.uint8))
    if made:
        _save(folder / COARSE_OUT_FILE, coarse_mask.astype(np.uint8))
    result = {"stats": stats, "metrics": metrics, "notes": notes, "coarse_made": made, "coarse_source": source,
              "seconds": time.perf_counter() - t0, "device": str(stats.get("device", refiner.device))}
    write_text(folder / RESULT_FILE, json.dumps(jsonable(result)))  # last: its presence means success
    _report(progress, 1.0, "Refinement computed")
    return json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))


def _make_coarse(api, io, job: dict[str, Any], source: str, ct, image, device: str, progress: Progress | None,
                 notes: list[str], folder: Path):
    """The coarse tumour mask (LPS volume, 0/1) from seeds, the coarse network or TotalSegmentator."""
    from LiverTumorRefineLib.coarse import totalseg

    _report(progress, 0.0, "Making the coarse segment")
    if source == "seeds":
        seeds = job["coarse"].get("seeds_ras") or []
        if not seeds:
            raise RefineError("No seed points: place one point inside each lesion (Markups point list), then try again.")
        return api.coarse_from_seeds(image, [tuple(map(float, p)) for p in seeds])
    if source == "automatic":
        seg_weights = job.get("seg_weights")
        try:
            labels = api.segment_volume(image, seg_weights, device, progress)
        except Exception as exc:  # noqa: BLE001 - only CUDA out-of-memory is handled
            if not is_cuda_oom(exc) or device == "cpu":
                raise
            notes.append(GPU_OOM_NOTE.format(step="automatic coarse segmentation"))
            labels = api.segment_volume(image, seg_weights, "cpu", progress)
        if not (labels.array == api.LITS_TUMOUR).any():
            raise RefineError("The automatic coarse segmentation found no tumour in this CT: place one point inside "
                              "each lesion and use the seed points instead.")
        return labels.with_array((labels.array == api.LITS_TUMOUR).astype(np.uint8))
    path = folder / "ct.nii.gz"  # TotalSegmentator reads a file
    io.write_volume(ct, path, force=True)
    mask = totalseg.tumour_mask(path, image, device)
    if not mask.any():
        raise RefineError("TotalSegmentator found no liver tumour in this CT: place one point inside each lesion and "
                          "use the seed points instead.")
    return image.with_array(mask.astype(np.uint8))


def make_refiner(model: Any, device: str, batch_size: int, options: dict[str, Any]):
    """The engine's Refiner (a RefineError with the install hint when PyTorch is missing)."""
    try:
        from LiverTumorRefineLib.refine.refiner import Refiner
    except ImportError as exc:
        if getattr(exc, "name", "") == "torch" or "torch" in str(exc):
            raise RefineError("PyTorch is not installed: install it with the PyTorch Utils module (PyTorch "
                              "extension), restart 3D Slicer and try again.") from None
        raise
    return Refiner(model, device=device, batch_size=batch_size, **options)


def is_cuda_oom(exc: BaseException) -> bool:
    """True for PyTorch's CUDA out-of-memory error (its class or its message)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower()


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None and progress(fraction, message) is False:
        raise RefineCancelled()


def _part(progress: Progress | None, start: float, end: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * float(fraction), message)


class LineProgress:
    """Progress as JSON lines on ``stream``, at most one per percent unless the message changes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self._last = stream, (-1.0, "")

    def __call__(self, fraction: float, message: str) -> bool:
        if fraction - self._last[0] >= 0.01 or message != self._last[1] or fraction >= 1.0:
            self._last = (fraction, message)
            self.send({"progress": round(float(fraction), 4), "message": message})
        return True

    def send(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    """The process entry point; see the module docstring for the protocol."""
    parser = argparse.ArgumentParser(prog="python -m LiverTumorRefineLib.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="the job.json a LiverTumorRefine Logic wrote")
    args = parser.parse_args(argv)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # libraries that print must not break the protocol
    lines = LineProgress(protocol)

    def terminate(signum, frame):  # Cancel: unwind so temporary folders (TotalSegmentator's) are removed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        run_job(args.job, lines)
    except RefineError as exc:
        lines.send({"error": str(exc), "kind": type(exc).__name__})
        return EXIT_USER
    except MemoryError:
        lines.send({"error": "The computer ran out of memory while refining: close other programs, or crop the CT "
                             "to the liver, and try again.", "kind": "MemoryError"})
        return EXIT_MEMORY
    except Exception as exc:  # noqa: BLE001 - a bug: the traceback goes to stderr (the log)
        logging.exception("LiverTumorRefine worker failed")
        lines.send({"error": f"{type(exc).__name__}: {exc}", "kind": "bug"})
        return EXIT_BUG
    finally:
        sys.stdout = protocol
    lines.send({"done": RESULT_FILE})
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
