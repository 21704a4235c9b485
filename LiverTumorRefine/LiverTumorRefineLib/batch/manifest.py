"""The cases of a batch: read from a CSV manifest or a folder, checked, and cut into shards.

The cases come from a CSV manifest (columns ``image`` and ``mask``, optional ``out``, ``truth``
and ``name``) or from a folder whose files are matched by name as ``qa --batch`` matches them
(``[NAME_]ct``, ``[NAME_]coarse`` or ``mask``, optional ``[NAME_]truth``; volume files, Slicer
``.seg.nrrd`` or DICOM ``.dcm``), where a case's CT may also be a DICOM series in its sub-folder
``ct/`` (or ``image/``, ``volume/``).

``--shard i/N`` takes every N-th case of the list in its given order (manifest order, or
folders by name), starting at the i-th, so N machines of a job array split a dataset without
talking to each other.
"""
from __future__ import annotations

import csv
import io as text_io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.qa import files_by_role
from LiverTumorRefineLib.volume import io

# Manifest columns and the other names they may go by (first: the name used in messages).
COLUMNS = {"image": ("image", "ct"), "mask": ("mask", "coarse"), "truth": ("truth", "label", "gt"),
           "out": ("out",), "name": ("name",)}
REQUIRED = ("image", "mask")
# File-name roles of a case in a folder (``qa.files_by_role``).
ROLES = {"image": ("ct", "image", "volume"), "mask": ("coarse", "mask"), "truth": ("truth", "label", "gt")}
OUTPUT_SUFFIX = "_refined.nii.gz"
SHOWN_PROBLEMS = 5  # a manifest with many bad rows lists the first few and counts the rest


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: its inputs, its output and where it came from (for messages)."""

    name: str
    image: Path
    mask: Path
    out: Path
    truth: Optional[Path] = None
    origin: str = ""


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
        for prefix, roles in sorted(files_by_role(sub, ROLES, ct_role="image").items()):
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
    (``case7_ct.nii.gz`` -> ``case7``), else the folder's name (``case7/ct.nii.gz``, a DICOM folder,
    or ``case7/IM0001``, one file standing for its DICOM series)."""
    if image.is_dir():
        return image.name
    if io.is_dicom_file(image):
        return image.parent.name
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
