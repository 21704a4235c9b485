"""Batch refinement of a dataset: ``livertumorrefine refine --batch <manifest.csv | folder> --out-dir DIR``.

The cases come from a CSV manifest (columns ``image`` and ``mask``, optional ``out``, ``truth``
and ``name``) or from a folder whose files are matched by name as ``qa --batch`` matches them
(``[NAME_]ct``, ``[NAME_]coarse`` or ``mask``, optional ``[NAME_]truth``). Each case goes
through ``api.refine_files``, the engine's single entry point for files.

Resuming: before a case starts, a small record ``.<out name>.done.json`` is written atomically
beside its output (state "started"); once the output is written and verified the record is
replaced by one with state "done" and the output's SHA-256. A later run skips a case whose
record is "done", whose output still has that hash and whose inputs and settings are the same,
and redoes a case that crashed half-way (record "started") or whose output changed. An output
that no record of this batch claims is never overwritten without ``force``.

``--shard i/N`` takes every N-th case of the list in its given order (manifest order, or
folders by name), starting at the i-th, so N machines of a job array split a dataset without
talking to each other; ``--workers K`` runs K cases at once in K processes, each with
1/K of the cores as torch threads. One case's failure is recorded in the summary
(``batch_summary.csv`` and ``.json`` in the output folder, rewritten atomically after every
case) and the others go on.
"""
from __future__ import annotations

import csv
import io as text_io
import json
import os
import re
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from LiverTumorRefineLib.config import INTENSITY_GATE, MIN_KEPT, TTA
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.qa import files_by_role
from LiverTumorRefineLib.volume import atomic, io
from LiverTumorRefineLib.volume.atomic import sha256_of

# Manifest columns and the other names they may go by (first: the name used in messages).
COLUMNS = {"image": ("image", "ct"), "mask": ("mask", "coarse"), "truth": ("truth", "label", "gt"),
           "out": ("out",), "name": ("name",)}
REQUIRED = ("image", "mask")
# File-name roles of a case in a folder (``qa.files_by_role``).
ROLES = {"image": ("ct", "image", "volume"), "mask": ("coarse", "mask"), "truth": ("truth", "label", "gt")}
OUTPUT_SUFFIX = "_refined.nii.gz"
RECORD_VERSION = 1
WORKER_DIED = ("a worker process died while this case was running (out of memory, or killed): rerun the batch to "
               "retry it, with fewer --workers if memory is short")
SHOWN_PROBLEMS = 5  # a manifest with many bad rows lists the first few and counts the rest

Log = Callable[[str], None]


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: its inputs, its output and where it came from (for messages)."""

    name: str
    image: Path
    mask: Path
    out: Path
    truth: Optional[Path] = None
    origin: str = ""


@dataclass(frozen=True)
class BatchSettings:
    """The ``refine_files`` options every case of a batch shares."""

    weights: Optional[str] = None
    device: str = "auto"
    batch_size: int = 128
    min_kept: float = MIN_KEPT
    tta: int = TTA
    label: Optional[int] = None
    segment: Optional[str] = None
    runtime: str = "auto"
    intensity_gate: bool = INTENSITY_GATE

    def identity(self) -> dict[str, Any]:
        """What the output depends on (not device, batch size or runtime, which change the speed,
        not what the output is): a finished case made with other values is not the output this run
        would make."""
        weights = str(Path(self.weights).resolve()) if self.weights else None
        # the gate only when off: a record written before the option existed still matches a default
        # run, as it does after any change of the code
        gate = {} if self.intensity_gate else {"intensity_gate": False}
        return {"weights": weights, "min_kept": self.min_kept, "tta": self.tta, "label": self.label,
                "segment": self.segment, **gate}


@dataclass
class CaseResult:
    """One row of the batch summary."""

    name: str
    status: str  # "refined", "skipped" (finished earlier), "failed" or "pending"
    out: str
    seconds: Optional[float] = None
    patches: Optional[int] = None
    voxels_changed: Optional[int] = None
    dice_coarse: Optional[float] = None
    dice_refined: Optional[float] = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Finding the cases


def load_cases(source: str | os.PathLike, out_dir: str | os.PathLike) -> list[BatchCase]:
    """The cases of a manifest (a ``.csv`` file) or of a folder, checked (see ``check_cases``)."""
    path = Path(source)
    if path.is_dir():
        cases = find_cases(path, out_dir)
    elif path.is_file():
        if path.suffix.lower() != ".csv":
            raise RefineError(f"--batch {path}: give a manifest .csv file or a folder of cases.",
                              cli=f"--batch {path}: give a manifest .csv file or a folder of cases.")
        cases = read_manifest(path, out_dir)
    else:
        raise RefineError(f"Batch source {path} not found: give a manifest .csv file or a folder of cases.")
    check_cases(cases)
    return cases


def read_manifest(path: str | os.PathLike, out_dir: str | os.PathLike) -> list[BatchCase]:
    """Cases from a CSV manifest. ``image``, ``mask`` and ``truth`` paths are relative to the
    manifest's folder, ``out`` relative to ``out_dir`` (default ``out_dir/NAME_refined.nii.gz``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet programs is not part of a name
    except (OSError, UnicodeDecodeError) as exc:
        raise RefineError(f"Manifest {path} cannot be read ({exc}): give a UTF-8 CSV file.") from None
    reader = csv.DictReader(text_io.StringIO(text))
    columns = _manifest_columns(path, reader.fieldnames or [])
    base, problems, cases = path.resolve().parent, [], []
    for row in reader:
        where = f"line {reader.line_num}"
        cells = {key: (row.get(header) or "").strip() for key, header in columns.items()}
        if not any(cells.values()):
            continue  # a blank line
        empty = [key for key in REQUIRED if not cells[key]]
        if empty:
            problems.append(f"{where}: no {' and no '.join(empty)} (every row needs image and mask)")
            continue
        inputs = {key: base / cells[key] for key in ("image", "mask", "truth") if cells.get(key)}
        missing = [f"{key} {cells[key]}" for key, p in inputs.items() if not p.exists()]
        if missing:
            problems.append(f"{where}: {', '.join(missing)} not found")
            continue
        try:
            name = cells.get("name") or (_volume_stem(Path(cells["out"])) if cells.get("out")
                                         else case_name(inputs["image"]))
            out = Path(out_dir) / (cells["out"] if cells.get("out") else name + OUTPUT_SUFFIX)
            _check_name(name)
        except RefineError as exc:
            problems.append(f"{where}: {exc}")
            continue
        cases.append(BatchCase(name, inputs["image"], inputs["mask"], out, inputs.get("truth"), where))
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (f"; and {len(problems) - SHOWN_PROBLEMS} more"
                                                        if len(problems) > SHOWN_PROBLEMS else "")
        raise RefineError(f"Manifest {path} has {len(problems)} bad row(s): {shown}. Relative paths are read from "
                          f"the manifest's folder {base}: fix the paths or remove the rows.")
    if not cases:
        raise RefineError(f"Manifest {path} lists no cases: add one row per case under the header line "
                          "(image,mask[,out][,truth]).")
    return cases


def _manifest_columns(path: Path, headers: Sequence[str]) -> dict[str, str]:
    """{column: header as written} for the known columns; refuses a missing or doubled one."""
    found: dict[str, str] = {}
    for header in headers:
        key = next((k for k, names in COLUMNS.items() if (header or "").strip().lower() in names), None)
        if key is None:
            continue  # other columns (patient data, notes) are the user's own
        if key in found:
            raise RefineError(f"Manifest {path} has both '{found[key]}' and '{header}' columns for the {key}: "
                              "keep one.")
        found[key] = header
    missing = [key for key in REQUIRED if key not in found]
    if missing:
        listed = ", ".join(h for h in headers if h) or "none"
        raise RefineError(f"Manifest {path} has no {' and no '.join(missing)} column (its columns: {listed}): the "
                          "first line must name the columns, at least image and mask, e.g. image,mask,out,truth.")
    return found


def find_cases(folder: str | os.PathLike, out_dir: str | os.PathLike) -> list[BatchCase]:
    """Cases of a folder and its direct sub-folders, by file-name role (``ROLES``); a case is
    named by its file prefix, else by its folder, and written to ``out_dir/NAME_refined.nii.gz``."""
    root = Path(folder)
    cases, incomplete = [], []
    for sub in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        for prefix, roles in sorted(files_by_role(sub, ROLES).items()):
            name = prefix or sub.name
            if {"image", "mask"} <= set(roles):
                cases.append(BatchCase(name, roles["image"], roles["mask"], Path(out_dir) / (name + OUTPUT_SUFFIX),
                                       roles.get("truth"), str(sub)))
            else:
                incomplete.append(f"{name} ({sub})")
    if not cases:
        raise RefineError(f"No cases found in {folder}: a case is a CT and a coarse mask named ct.nii.gz and "
                          "coarse.nii.gz (in one sub-folder per case) or NAME_ct.nii.gz and NAME_coarse.nii.gz "
                          "(mask or NAME_mask also name the coarse mask; truth is optional); or list the cases in a "
                          "manifest .csv with image and mask columns.")
    if incomplete:
        warnings.warn(f"{len(incomplete)} file group(s) in {folder} have no CT or no coarse mask and are left out: "
                      f"{', '.join(incomplete[:SHOWN_PROBLEMS])}", UserWarning, stacklevel=2)
    return cases


def case_name(image: Path) -> str:
    """A case's name from its CT: the file name without its type and a trailing role word
    (``case7_ct.nii.gz`` -> ``case7``), else the folder's name (``case7/ct.nii.gz``, a DICOM folder)."""
    if image.is_dir():
        return image.name
    stem = re.sub(r"(?:^|[_-])(?:ct|image|volume)$", "", _volume_stem(image), flags=re.IGNORECASE)
    return stem or image.parent.name


def _volume_stem(path: Path) -> str:
    name = path.name
    for suffix in io.SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name:
        raise RefineError(f"case name {name!r} is not a file name: use the out column for paths")


def check_cases(cases: Sequence[BatchCase]) -> None:
    """Refuse, before any work, outputs of an unsupported type, two cases writing one file, or an
    output that is another case's input."""
    problems, writers = [], {}
    inputs = {_key(p): c for c in cases for p in (c.image, c.mask, c.truth) if p is not None}
    for case in cases:
        try:
            if not str(case.out).lower().endswith(".dcm"):
                io.volume_suffix(case.out)
        except RefineError as exc:
            problems.append(f"{case.name} ({case.origin}): {exc}")
        key = _key(case.out)
        if key in writers:
            first = writers[key]
            problems.append(f"{first.name} ({first.origin}) and {case.name} ({case.origin}) both write {case.out}: "
                            "give each case its own out (or name) in the manifest")
        writers.setdefault(key, case)
        if key in inputs:
            problems.append(f"{case.name} ({case.origin}) would write its output over {case.out}, an input of "
                            f"{inputs[key].name}: choose another out")
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (f"; and {len(problems) - SHOWN_PROBLEMS} more"
                                                        if len(problems) > SHOWN_PROBLEMS else "")
        raise RefineError(f"The batch's outputs clash: {shown}.")


def _key(path: Path) -> str:
    return os.path.normcase(str(path.resolve()))


# ---------------------------------------------------------------------------------------------
# Shards


def parse_shard(text: str) -> tuple[int, int]:
    """(i, N) from ``"i/N"`` with 0 <= i < N (a SLURM array task id and the array's size)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if match is None or not int(match[2]) >= 1 or not int(match[1]) < int(match[2]):
        raise RefineError(f"--shard {text!r} is not valid: give I/N with 0 <= I < N, for example "
                          "--shard $SLURM_ARRAY_TASK_ID/10 in a job array of 10 tasks (--array=0-9).")
    return int(match[1]), int(match[2])


def shard_cases(cases: Sequence[BatchCase], index: int, count: int) -> list[BatchCase]:
    """The cases of shard ``index`` of ``count``: every ``count``-th case from the ``index``-th,
    in list order, so the shards partition the list and a row appended later moves no other case."""
    if not 0 <= index < count:
        raise RefineError(f"Shard {index}/{count} is not valid: the shard number runs from 0 to {count - 1}.")
    return list(cases[index::count])


# ---------------------------------------------------------------------------------------------
# Records of finished cases


def record_path(out: Path) -> Path:
    """The case's record, hidden beside its output (so two cases never share one)."""
    return out.parent / f".{out.name}.done.json"


def _identity(case: BatchCase, settings: BatchSettings) -> dict[str, Any]:
    return {"image": str(case.image.resolve()), "mask": str(case.mask.resolve()), **settings.identity()}


def read_record(case: BatchCase) -> Optional[dict[str, Any]]:
    """The case's record, or None when there is none (an unreadable record counts as none of ours)."""
    path = record_path(case.out)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None


def case_state(case: BatchCase, settings: BatchSettings, force: bool) -> tuple[str, str]:
    """("done" | "redo" | "new" | "conflict", why): what a run does with ``case``.

    "done": finished with these inputs and settings, output unchanged since. "redo": this batch
    owns the output but it is not finished (a crash half-way) or it changed. "conflict": an output
    this batch did not write, or one made from other inputs or settings (only ``force`` redoes it).
    """
    record = read_record(case)
    exists = case.out.exists()
    if record is None:
        if exists and not force:
            return "conflict", (f"{case.out} exists and no record of a batch run claims it: move it away, choose "
                                "another --out-dir, or pass --force to overwrite it")
        return ("redo" if exists else "new"), ""
    if record.get("state") == "done" and not force:
        differ = [f"{k} {record['identity'].get(k)!r} -> {v!r}" for k, v in _identity(case, settings).items()
                  if record.get("identity", {}).get(k) != v]
        if differ:
            return "conflict", (f"{case.out} was refined with other inputs or settings ({'; '.join(differ)}): "
                                "choose another --out-dir, or pass --force to redo it")
        if exists and record.get("sha256") == sha256_of(case.out):
            return "done", ""
    return ("redo" if exists else "new"), ""


def _write_record(case: BatchCase, settings: BatchSettings, state: str, **extra: Any) -> None:
    record = {"version": RECORD_VERSION, "state": state, "name": case.name, "out": str(case.out),
              "identity": _identity(case, settings), **extra}
    atomic.write_text(record_path(case.out), json.dumps(record, indent=1) + "\n")


def finished_result(case: BatchCase) -> CaseResult:
    """The summary row of a case finished by an earlier run, from its record."""
    record = read_record(case) or {}
    return CaseResult(case.name, "skipped", str(case.out), **record.get("result", {}))


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
            _write_record(case, settings, "started")
            stats = api.refine_files(case.image, case.mask, case.out, label=settings.label, device=settings.device,
                                     weights=settings.weights, batch_size=settings.batch_size,
                                     min_kept=settings.min_kept, tta=settings.tta, segment=settings.segment,
                                     runtime=settings.runtime, intensity_gate=settings.intensity_gate,
                                     force=overwrite)
            result.patches, result.voxels_changed = int(stats["patches"]), int(stats["voxels_changed"])
            if case.truth is not None:
                _score(case, settings, result)
            result.status, result.seconds = "refined", round(time.perf_counter() - t0, 3)
            kept = {k: getattr(result, k) for k in ("seconds", "patches", "voxels_changed", "dice_coarse",
                                                    "dice_refined", "error")}
            _write_record(case, settings, "done", sha256=sha256_of(case.out), result=kept,
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


def _score(case: BatchCase, settings: BatchSettings, result: CaseResult) -> None:
    """Dice of the coarse and refined masks against the case's truth; a truth that cannot be
    scored (no tumour in it) is noted in ``error`` but does not fail the case."""
    from LiverTumorRefineLib import api

    try:
        coarse = api.evaluate_files(case.truth, case.mask, settings.label, segment=settings.segment)["dice"]
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


def summary_paths(out_dir: Path, shard: tuple[int, int]) -> tuple[Path, Path]:
    """The summary's CSV and JSON files; one pair per shard, so shards sharing a folder never clash."""
    stem = "batch_summary" if shard[1] == 1 else f"batch_summary.shard-{shard[0]}-of-{shard[1]}"
    return out_dir / f"{stem}.csv", out_dir / f"{stem}.json"


def write_summary(rows: Sequence[CaseResult], out_dir: Path, shard: tuple[int, int]) -> Path:
    """Write the summary CSV and JSON atomically; returns the CSV's path."""
    csv_path, json_path = summary_paths(out_dir, shard)
    names = [f for f in CaseResult.__dataclass_fields__]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = asdict(row)
        values["error"] = values["error"].splitlines()[0] if values["error"] else ""  # the traceback is in the JSON
        values["warnings"] = " | ".join(values["warnings"])
        writer.writerow(values)
    atomic.write_text(csv_path, buffer.getvalue())
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("refined", "skipped", "failed", "pending")}
    atomic.write_text(json_path, json.dumps({"shard": f"{shard[0]}/{shard[1]}", **counts,
                                             "cases": [asdict(r) for r in rows]}, indent=1) + "\n")
    return csv_path


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
