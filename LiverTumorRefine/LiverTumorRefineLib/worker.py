"""The engine's worker: one job folder in, a coarse (optional) and a refined mask out.

    python -m LiverTumorRefineLib.worker --serve               # the Slicer module's long-lived worker
    python -m LiverTumorRefineLib.worker --job /tmp/xyz/job.json   # one job (by hand, for debugging)

The Slicer module starts it with Slicer's own Python (``PythonSlicer``) so that the slow work runs
in its own process: Slicer's main thread holds the GIL while it idles, so a worker *thread* would
advance only while the GUI runs Python. The job folder holds the CT as a ``.npy`` array and the
masks as ``save_mask`` crops, on the CT's voxel grid (array order k, j, i), and ``job.json`` with
their geometry (SimpleITK conventions: LPS, spacing/origin in x, y, z, direction row-major) and
the options:

    {"ct": "ct.npy" (or an absolute path), "geometry": {"spacing": [...], "origin": [...], "direction": [...]},
     "coarse": {"source": "mask", "mask": "coarse.npz"}      # or "seeds" (+ "seeds_ras",
                                                            # optional "negative_seeds_ras",
                                                            # "seed_lesions", "previous",
                                                            # "ct_identity"),
                                                            # "automatic", "totalsegmentator"
     "truth": "truth.npz" or null, "device": "auto", "weights": null, "seg_weights": null,
     "batch_size": 128, "refiner": {"tta": 8, "agreement": 0.5, "min_kept": 0.3}}

It writes ``refined.npz``, ``coarse_out.npz`` for a coarse mask it made, ``uncertain.npz``
(where the augmented predictions disagree), each the mask's bounding-box crop and where it lies
(``save_mask``, ``load_mask``: lesions fill a small part of a CT, and writing and reading whole
CT-sized masks cost a click more than its refinement on a long CT), and last
``result.json`` (stats, metrics, notes, seconds), each atomically. With ``seed_lesions`` (each
seed's lesion number, or null) the seeds are grouped into lesions, null ones by the piece of the
``previous`` result (a mask file) they touch (``coarse.grouping``), and ``result.json`` gives every
seed's number. With ``ct_identity`` (a name that changes whenever the CT does) a lesion whose
clicks are those of an earlier job on that CT reuses its coarse result (``coarse.lesion_cache``). On stdout it prints one JSON
object per line: ``{"progress": f, "message": m}``, then ``{"done": "result.json"}`` or
``{"error": m, "kind": k}``. Exit status: 0 done, 2 a user error (``RefineError``), 3 out of
memory, 1 a bug (traceback on stderr). ``run_job`` is the same work in-process.

``--serve`` keeps the process, its imports and its loaded models between jobs, so that a
corrective click costs the work, not a new Python with torch and three models; its Refiner also
keeps each refined box, so a job refines again only the lesions whose crop or mask changed
(``refine.result_cache``; the results are identical). It reads one
``{"job": "/path/job.json"}`` line per job on stdin and answers as above, each record with that
``"job"`` added (first ``{"job": ..., "started": true}``). It ends at the end of stdin, after
``--idle-exit`` seconds without a job (first printing ``{"exit": "idle"}``; a job already on its
way then gets no ``started``, so the caller sends it again to a new worker), or after running out
of memory. A user error or a bug ends only that job.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import numpy as np

from LiverTumorRefineLib.volume.atomic import atomic_path, write_text
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, part, report


JOB_VERSION = 2  # 2: masks out as bounding-box crops (save_mask)
RESULT_FILE = "result.json"
REFINED_FILE = "refined.npz"
COARSE_OUT_FILE = "coarse_out.npz"
UNCERTAIN_FILE = "uncertain.npz"  # where the augmented predictions disagree (the module's "unsure" overlay)
EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_MEMORY = 0, 1, 2, 3
CT_DTYPES = tuple(np.dtype(t) for t in ("int16", "uint16", "int32", "float32"))  # a job's CT keeps these types
IDLE_EXIT_S = 600.0  # a served worker gives its memory back after 10 minutes without a job
RELEASE_AFTER_S = 3.0  # ... and a finished job's freed heap after this long without the next one
_RUN_END = 0.97  # the rest of the progress bar is writing the result


def write_job(folder: str | Path, ct: np.ndarray | Path, geometry: dict[str, Any], coarse: dict[str, Any],
              coarse_mask: np.ndarray | None = None, truth: np.ndarray | None = None,
              previous: np.ndarray | None = None, **options: Any) -> Path:
    """Write a job folder (the CT as .npy, masks as ``save_mask`` crops, options as job.json);
    returns the job.json path.
    ``ct``: the CT, or the path of a CT file already written for several jobs (``np.save`` of a
    ``job_ct_dtype`` array; the Slicer module's ``scene.ctfiles``). ``previous``: the seeded result a
    click update replaces (groups its new points)."""
    folder = Path(folder)
    if isinstance(ct, np.ndarray):
        np.save(folder / "ct.npy", np.ascontiguousarray(ct, dtype=job_ct_dtype(ct.dtype)))
        ct = Path("ct.npy")
    coarse = dict(coarse)
    if previous is not None:
        save_mask(folder / "previous.npz", previous)
        coarse["previous"] = "previous.npz"
    if coarse_mask is not None:
        save_mask(folder / "coarse.npz", coarse_mask)
        coarse["mask"] = "coarse.npz"
    if truth is not None:
        save_mask(folder / "truth.npz", truth)
    job = {"version": JOB_VERSION, "ct": str(ct), "geometry": geometry, "coarse": coarse,
           "truth": "truth.npz" if truth is not None else None, **options}
    path = folder / "job.json"
    write_text(path, json.dumps(jsonable(job)))
    return path


def job_ct_dtype(dtype: np.dtype) -> np.dtype:
    """The type a job's CT is stored in: its own when that is a CT's (``CT_DTYPES``), else float32."""
    return np.dtype(dtype) if np.dtype(dtype) in CT_DTYPES else np.dtype(np.float32)


def read_result(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """``result.json``, the refined mask and the coarse mask the worker made (or None) of a done job."""
    folder = Path(folder)
    result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    return (result, load_mask(folder / REFINED_FILE),
            load_mask(folder / COARSE_OUT_FILE) if result.get("coarse_made") else None)


def mask_crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A (z, y, x) mask's bounding-box crop (bool; a view of ``mask`` when that is bool) and the
    crop's first voxel; an empty crop at the origin for an empty mask."""
    from LiverTumorRefineLib.refine.boxes import lesion_box

    mask = np.asarray(mask, dtype=bool)
    box = lesion_box(mask, (0, 0, 0)) if mask.any() else (slice(0, 0),) * mask.ndim
    return mask[box], tuple(b.start for b in box)


def mask_from_crop(crop: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The bool mask on a grid of ``shape`` that ``mask_crop`` gave ``crop`` and ``start`` for."""
    out = np.zeros(tuple(int(n) for n in shape), dtype=bool)
    out[tuple(slice(int(a), int(a) + n) for a, n in zip(start, crop.shape))] = crop
    return out


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Write a (z, y, x) mask atomically as its bounding-box crop (``crop``, uint8 0/1), the crop's
    first voxel (``start``) and the whole grid's ``shape``."""
    crop, start = mask_crop(mask)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, crop=crop.astype(np.uint8), start=np.array(start), shape=np.array(np.shape(mask)))


def load_mask(path: Path) -> np.ndarray:
    """The bool mask ``save_mask`` wrote, on its whole grid."""
    with np.load(path) as data:
        return mask_from_crop(data["crop"].astype(bool), data["start"], data["shape"])


def group_seeds(ct: Any, seeds: list[Any], coarse: dict[str, Any], folder: Path) -> tuple[list[Any], list[int]]:
    """The job's positive seeds grouped into lesions, and each seed's lesion number: the numbers the
    job gives (``seed_lesions``, null for a point without one) and, for the others, the lesion of
    the piece of the previous result (``previous``, a mask file) they lie in or next to
    (``coarse.grouping``)."""
    from LiverTumorRefineLib.coarse import grouping
    from LiverTumorRefineLib.coarse.points import check_points, ras_to_voxels

    given = list(coarse["seed_lesions"])
    if len(given) != len(seeds) or any(n is not None and (not isinstance(n, int) or n < 1) for n in given):
        raise RefineError("The job's seed lesion numbers do not match its seeds: restart 3D Slicer and try again.")
    previous = load_mask(folder / coarse["previous"]) if coarse.get("previous") else None
    if previous is not None and previous.shape != ct.array.shape:
        previous = None  # a result on another grid says nothing about these points
    voxels = ras_to_voxels(check_points(seeds), ct)
    numbers = grouping.assign_lesions(voxels, given, previous, ct.spacing_zyx)
    return grouping.grouped(seeds, numbers), numbers


def run_job(job_path: str | Path, progress: Progress | None = None, weights: Any = None,
            pipelines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Do the job described by ``job_path`` and write its results beside it; returns result.json's
    content. ``weights`` (a BRNet) overrides the job's model file for in-process runs;
    ``pipelines`` keeps the pipelines (loaded models) of earlier jobs for reuse, by their options."""
    from LiverTumorRefineLib.coarse.lesion_cache import LESIONS
    from LiverTumorRefineLib.coarse.sources import source_named
    from LiverTumorRefineLib.volume.checks import hu_plausibility
    from LiverTumorRefineLib.volume.geometry import Geometry, Volume

    t0 = time.perf_counter()
    job_path = Path(job_path)
    folder = job_path.parent
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if job.get("version") != JOB_VERSION:
        raise RefineError(f"The job file {job_path} has version {job.get('version')}, this worker reads version "
                          f"{JOB_VERSION}: restart 3D Slicer after updating the extension.")
    source = source_named(job["coarse"]["source"]).name
    g = job["geometry"]
    ct = Volume(np.load(folder / job["ct"]), Geometry(tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"])))
    report(progress, 0.0, "Loading the refinement model")
    pipeline = job_pipeline(job, weights, pipelines if pipelines is not None else {})
    if pipelines is not None:  # a kept worker: a click's job refines only the boxes it changed (refine.result_cache)
        pipeline.refiner.keep_boxes()
    made = source != "mask"
    coarse = None if made else ct.with_array(load_mask(folder / job["coarse"]["mask"]).view(np.uint8))  # 0/1 labels
    truth = load_mask(folder / job["truth"]) if job.get("truth") else None
    seeds = job["coarse"].get("seeds_ras") if source == "seeds" else None
    negative = job["coarse"].get("negative_seeds_ras") if source == "seeds" else None
    lesions = None
    if seeds is not None and "seed_lesions" in job["coarse"]:
        seeds, lesions = group_seeds(ct, seeds, job["coarse"], folder)
    with LESIONS.for_ct(job["coarse"].get("ct_identity") if seeds is not None else None):
        result = pipeline.run(ct, coarse, source=source, seeds=seeds, negative_seeds=negative, truth=truth,
                              progress=part(progress, 0.0, _RUN_END))
    warning = hu_plausibility(ct.array)
    notes = ([warning] if warning else []) + result.notes
    report(progress, _RUN_END, "Writing the result")
    save_mask(folder / REFINED_FILE, result.refined_mask)
    if made:
        save_mask(folder / COARSE_OUT_FILE, result.coarse_mask)
    if result.uncertain is not None:
        save_mask(folder / UNCERTAIN_FILE, result.uncertain)
    stats = result.stats
    summary = {"stats": stats, "metrics": result.metrics, "notes": notes, "coarse_made": made, "coarse_source": source,
               "seconds": time.perf_counter() - t0, "device": str(stats.get("device", pipeline.device))}
    if lesions is not None:
        summary["seed_lesions"] = lesions
    write_text(folder / RESULT_FILE, json.dumps(jsonable(summary)))  # last: its presence means success
    report(progress, 1.0, "Refinement computed")
    return json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))


def job_pipeline(job: dict[str, Any], weights: Any, pipelines: dict[str, Any]):
    """The ``RefinePipeline`` for ``job``'s model and options: one from ``pipelines`` built with the
    same ones (a file changed since is loaded again, its hash checked), else a new one kept there."""
    from LiverTumorRefineLib.pipeline import RefinePipeline

    options = {"weights": job.get("weights"), "device": job.get("device", "auto"),
               "batch_size": job.get("batch_size", 128), "seg_weights": job.get("seg_weights"),
               "refiner": dict(job.get("refiner") or {})}
    def build(model: Any) -> RefinePipeline:
        return RefinePipeline(model, device=options["device"], batch_size=options["batch_size"],
                              seg_weights=options["seg_weights"], **options["refiner"])

    if weights is not None:
        return build(weights)  # an in-memory model: nothing to reuse it by
    stamps = [_file_stamp(options["weights"]), _file_stamp(options["seg_weights"])]
    key = json.dumps(jsonable({**options, "stamps": stamps}), sort_keys=True)
    if key not in pipelines:
        pipelines.clear()  # one model set at a time: a served worker keeps its memory bounded
        pipelines[key] = build(options["weights"])
    return pipelines[key]


def _file_stamp(path: str | None) -> list[Any] | None:
    if path is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None  # loading it says what is wrong
    return [stat.st_mtime_ns, stat.st_size]


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


class LineProgress:
    """Progress as JSON lines on ``stream``, at most one per percent unless the message changes;
    ``tag`` is added to every record (a served worker's job)."""

    def __init__(self, stream: TextIO, tag: dict[str, Any] | None = None) -> None:
        self.stream, self.tag, self._last = stream, dict(tag or {}), (-1.0, "")

    def __call__(self, fraction: float, message: str) -> bool:
        if fraction - self._last[0] >= 0.01 or message != self._last[1] or fraction >= 1.0:
            self._last = (fraction, message)
            self.send({"progress": round(float(fraction), 4), "message": message})
        return True

    def send(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps({**record, **self.tag}) + "\n")
        self.stream.flush()


def run_one(job_path: str, lines: LineProgress, pipelines: dict[str, Any] | None = None) -> int:
    """Run one job, reporting on ``lines`` its progress and then its end (done, or the error); the
    exit status it stands for."""
    try:
        run_job(job_path, lines, pipelines=pipelines)
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
    lines.send({"done": RESULT_FILE})
    return EXIT_OK


def serve(requests: Iterable[str], stream: TextIO, idle_exit_s: float = IDLE_EXIT_S) -> int:
    """Run the jobs named on ``requests`` (``{"job": path}`` lines) one after another with the
    models kept loaded; see the module docstring. Returns the exit status."""
    waiting: queue.Queue[str | None] = queue.Queue()

    def read() -> None:  # a thread, so that waiting for the next job can time out
        for line in requests:
            waiting.put(line)
        waiting.put(None)

    threading.Thread(target=read, name="LiverTumorRefine-requests", daemon=True).start()
    pipelines: dict[str, Any] = {}
    held = False  # a finished job's freed memory not yet given back
    while True:
        try:
            line = next_request(waiting, idle_exit_s, held)
        except queue.Empty:
            LineProgress(stream).send({"exit": "idle"})
            return EXIT_OK
        held = False
        if line is None:
            return EXIT_OK
        if not line.strip():
            continue
        try:
            job_path = str(json.loads(line)["job"])
        except (ValueError, KeyError, TypeError):
            logging.error("LiverTumorRefine worker: not a job request: %r", line)
            continue
        lines = LineProgress(stream, {"job": job_path})
        lines.send({"started": True})
        if run_one(job_path, lines, pipelines) == EXIT_MEMORY:
            return EXIT_MEMORY  # the heap may be in pieces: a new worker starts clean
        held = True


def next_request(waiting: "queue.Queue[str | None]", idle_exit_s: float, held: bool) -> str | None:
    """The next request line (None at the end of the requests); ``queue.Empty`` after
    ``idle_exit_s`` without one. With memory ``held`` from a job, it is given back once the worker
    has waited ``RELEASE_AFTER_S`` in vain: not at once, where it would compete for the CPU with
    the main process preparing the next click (a corrective click follows its result within a
    second or two)."""
    if held:
        try:
            return waiting.get(timeout=min(RELEASE_AFTER_S, idle_exit_s))
        except queue.Empty:
            release_memory()
        idle_exit_s = max(idle_exit_s - RELEASE_AFTER_S, 0.0)
    return waiting.get(timeout=idle_exit_s)


def release_memory() -> None:
    """Give a finished job's freed memory back to the system, so that an idle worker holds its
    models, not the peak of its last CT (glibc keeps freed heap otherwise; elsewhere a no-op)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The process entry point; see the module docstring for the protocol."""
    parser = argparse.ArgumentParser(prog="python -m LiverTumorRefineLib.worker", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--job", help="run this job.json (a LiverTumorRefine Logic wrote it) and end")
    mode.add_argument("--serve", action="store_true", help="run the jobs named on stdin, one JSON line each")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S, help="--serve: seconds without a job "
                        "before the worker ends")
    args = parser.parse_args(argv)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # libraries that print must not break the protocol

    def terminate(signum, frame):  # Cancel: unwind so temporary folders (TotalSegmentator's) are removed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.serve:
            return serve(sys.stdin, protocol, args.idle_exit)
        return run_one(args.job, LineProgress(protocol))
    finally:
        sys.stdout = protocol


if __name__ == "__main__":
    sys.exit(main())
