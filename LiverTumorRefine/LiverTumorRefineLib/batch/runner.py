"""Running a batch: every case of a shard through ``api.refine_files``, in this process or in worker processes.

Each case goes through ``api.refine_files``, the engine's single entry point for files; a case
finished by an earlier run is skipped (see ``records``). ``--workers K`` runs K cases at once in
K processes, each with 1/K of the cores as torch threads. One case's failure is recorded in the
summary (``batch_summary.csv`` and ``.json`` in the output folder, rewritten atomically after
every case) and the others go on.
"""
from __future__ import annotations

import os
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Sequence

from LiverTumorRefineLib.batch.manifest import SHOWN_PROBLEMS, BatchCase, load_cases, shard_cases
from LiverTumorRefineLib.batch.records import BatchSettings, case_state, finished_result, record_path, write_record
from LiverTumorRefineLib.batch.summary import CaseResult, write_summary
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.atomic import sha256_of

WORKER_DIED = ("a worker process died while this case was running (out of memory, or killed): rerun the batch to "
               "retry it, with fewer --workers if memory is short")

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# One case (runs in a worker process when --workers > 1)


def refine_case(case: BatchCase, settings: BatchSettings, overwrite: bool) -> CaseResult:
    """Refine one case through ``api.refine_files`` and record it; never raises for a case's own
    failure (RefineError or a bug), which is returned in the result instead."""
    from LiverTumorRefineLib import api

    t0 = time.perf_counter()
    result = CaseResult(case.name, "failed", str(case.out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            write_record(case, settings, "started")
            stats = api.refine_files(case.image, case.mask, case.out, label=settings.label, device=settings.device,
                                     weights=settings.weights, batch_size=settings.batch_size,
                                     min_kept=settings.min_kept, tta=settings.tta,
                                     segment=segment_for(settings, case.mask),
                                     runtime=settings.runtime, intensity_gate=settings.intensity_gate,
                                     force=overwrite)
            result.patches, result.voxels_changed = int(stats["patches"]), int(stats["voxels_changed"])
            if case.truth is not None:
                _score(case, settings, result)
            result.status, result.seconds = "refined", round(time.perf_counter() - t0, 3)
            kept = {k: getattr(result, k) for k in ("seconds", "patches", "voxels_changed", "dice_coarse",
                                                    "dice_refined", "error")}
            write_record(case, settings, "done", sha256=sha256_of(case.out), result=kept,
                         finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        except RefineError as exc:
            result.status, result.error = "failed", exc.for_cli()
        except Exception as exc:  # noqa: BLE001 - a bug in one case must not stop the batch; its traceback is kept
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    if result.status == "failed" and not case.out.exists():
        record_path(case.out).unlink(missing_ok=True)  # nothing of this case to claim; the next run retries it anyway
    result.warnings = [str(w.message) for w in caught]
    if result.seconds is None:
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


def segment_for(settings: BatchSettings, *paths: Path) -> str | None:
    """The batch's ``--segment`` for a case whose files include a segmentation file (DICOM SEG,
    .seg.nrrd, RT structure set); None for plain mask files, so that one setting serves a batch
    that mixes both."""
    from LiverTumorRefineLib.volume import segments

    return settings.segment if any(segments.has_segments(path) for path in paths) else None


def _score(case: BatchCase, settings: BatchSettings, result: CaseResult) -> None:
    """Dice of the coarse and refined masks against the case's truth; a truth that cannot be
    scored (no tumour in it) is noted in ``error`` but does not fail the case."""
    from LiverTumorRefineLib import api

    try:
        coarse = api.evaluate_files(case.truth, case.mask, settings.label,
                                    segment=segment_for(settings, case.truth, case.mask))["dice"]
        refined = api.evaluate_files(case.truth, case.out, settings.label)["dice"]
        result.dice_coarse, result.dice_refined = round(float(coarse), 4), round(float(refined), 4)
    except RefineError as exc:
        result.error = f"not scored: {exc.for_cli()}"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The batch


def available_cores() -> int:
    """Cores this process may use (a SLURM allocation or taskset limits them, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class BatchReport:
    """What ``run_batch`` did: one row per case of the shard, in list order, and the summary file."""

    rows: list[CaseResult]
    summary: Path

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.rows if r.status == "failed"]


def run_batch(source: str | os.PathLike, out_dir: str | os.PathLike, settings: BatchSettings = BatchSettings(),
              shard: tuple[int, int] = (0, 1), workers: int = 1, force: bool = False, log: Log = print) -> BatchReport:
    """Refine every case of ``source`` (manifest .csv or folder) in shard ``shard`` = (i, N),
    skipping finished ones, with ``workers`` processes; write the summary; never stops at a
    failed case (see ``BatchReport.failed``). Problems with the list itself are a RefineError
    before any work."""
    if workers < 1:
        raise RefineError(f"--workers must be at least 1 (got {workers}).")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RefineError(f"--out-dir {out} is a file: give a folder for the outputs.")
    cases = shard_cases(load_cases(source, out), *shard)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(cases, settings, force)
    _make_output_folders(cases, out)
    rows = {str(c.out): finished_result(c) if state == "done" else CaseResult(c.name, "pending", str(c.out))
            for c, (state, _) in zip(cases, plan)}  # by output: unique (check_cases)
    todo = [(c, state == "redo" or force) for c, (state, _) in zip(cases, plan) if state != "done"]
    threads = max(1, available_cores() // workers)
    where = f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
    log(f"Batch: {len(cases)} case(s){where}, {len(cases) - len(todo)} already finished, {len(todo)} to refine "
        f"with {workers} worker(s)" + (f" x {threads} torch thread(s)" if workers > 1 else ""))
    summary = write_summary(list(rows.values()), out, shard)
    for done, result in enumerate(_results(todo, settings, workers, threads), start=1):
        rows[result.out] = result
        summary = write_summary(list(rows.values()), out, shard)
        log(_progress_line(done, len(todo), result))
    report = BatchReport(list(rows.values()), summary)
    counts = {s: sum(1 for r in report.rows if r.status == s) for s in ("refined", "skipped", "failed")}
    log(f"Done: {counts['refined']} refined, {counts['skipped']} skipped (finished earlier), {counts['failed']} "
        f"failed; summary {summary}")
    return report


def _plan(cases: Sequence[BatchCase], settings: BatchSettings, force: bool) -> list[tuple[str, str]]:
    plan = [case_state(c, settings, force) for c in cases]
    conflicts = [f"{c.name}: {why}" for c, (state, why) in zip(cases, plan) if state == "conflict"]
    if conflicts:
        shown = "; ".join(conflicts[:SHOWN_PROBLEMS]) + (f"; and {len(conflicts) - SHOWN_PROBLEMS} more"
                                                         if len(conflicts) > SHOWN_PROBLEMS else "")
        raise RefineError(f"{len(conflicts)} case(s) would overwrite outputs this batch does not own: {shown}.")
    return plan


def _make_output_folders(cases: Sequence[BatchCase], out_dir: Path) -> None:
    """Create the folders of outputs inside ``out_dir``; outputs elsewhere need an existing folder."""
    root, missing = out_dir.resolve(), []
    for case in cases:
        folder = case.out.parent.resolve()
        if folder.is_dir():
            continue
        if folder.is_relative_to(root):
            folder.mkdir(parents=True, exist_ok=True)
        else:
            missing.append(f"{case.name}: {folder}")
    if missing:
        raise RefineError(f"Output folder(s) do not exist: {'; '.join(missing[:SHOWN_PROBLEMS])}: create them first "
                          "or give out paths relative to --out-dir.")


def _progress_line(done: int, total: int, result: CaseResult) -> str:
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {result.name}"
    if result.status == "failed":
        line = f"{head}: FAILED after {result.seconds:.1f} s: {result.error.splitlines()[0]}"
    else:
        dice = (f", Dice {result.dice_coarse:.3f} -> {result.dice_refined:.3f}"
                if result.dice_refined is not None and result.dice_coarse is not None else "")
        line = (f"{head}: {result.seconds:.1f} s, {result.patches} patches, {result.voxels_changed} voxels "
                f"changed{dice}")
    return "\n".join([line] + [f"  warning: {w}" for w in result.warnings])


def _results(todo: Sequence[tuple[BatchCase, bool]], settings: BatchSettings, workers: int,
             threads: int) -> Iterable[CaseResult]:
    """Each case's result as it finishes: in this process with one worker, else from a pool."""
    if workers == 1:
        for case, overwrite in todo:
            yield refine_case(case, settings, overwrite)
        return
    yield from _pooled(list(todo), settings, workers, threads)


def _pooled(todo: list[tuple[BatchCase, bool]], settings: BatchSettings, workers: int,
            threads: int) -> Iterable[CaseResult]:
    """Run the cases in ``workers`` spawned processes (fork would copy torch's thread pools). A
    worker killed mid-case (out of memory, a signal) fails the cases it was running, and a fresh
    pool goes on with the rest."""
    pending = list(reversed(todo))
    while pending:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(threads,))
        running: dict[Future, BatchCase] = {}
        broken = False
        try:
            while (pending or running) and not broken:
                while pending and len(running) < workers:
                    case, overwrite = pending.pop()
                    running[pool.submit(refine_case, case, settings, overwrite)] = case
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    case = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken = True
                        yield CaseResult(case.name, "failed", str(case.out), error=WORKER_DIED)
            for case in running.values():  # stopped along with the broken pool
                yield CaseResult(case.name, "failed", str(case.out), error=WORKER_DIED)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
