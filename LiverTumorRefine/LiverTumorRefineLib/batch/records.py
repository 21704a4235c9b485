"""Per-case records that let a batch resume, and the settings a finished case was made with.

Resuming: before a case starts, a small record ``.<out name>.done.json`` is written atomically
beside its output (state "started"); once the output is written and verified the record is
replaced by one with state "done" and the output's SHA-256. A later run skips a case whose
record is "done", whose output still has that hash and whose inputs and settings are the same,
and redoes a case that crashed half-way (record "started") or whose output changed. An output
that no record of this batch claims is never overwritten without ``force``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from LiverTumorRefineLib.batch.manifest import BatchCase
from LiverTumorRefineLib.batch.summary import CaseResult
from LiverTumorRefineLib.config import INTENSITY_GATE, MIN_KEPT, TTA
from LiverTumorRefineLib.volume import atomic
from LiverTumorRefineLib.volume.atomic import sha256_of

RECORD_VERSION = 1


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


def write_record(case: BatchCase, settings: BatchSettings, state: str, **extra: Any) -> None:
    """Write the case's record (state "started" or "done", with ``extra``) atomically beside its output."""
    record = {"version": RECORD_VERSION, "state": state, "name": case.name, "out": str(case.out),
              "identity": _identity(case, settings), **extra}
    atomic.write_text(record_path(case.out), json.dumps(record, indent=1) + "\n")


def finished_result(case: BatchCase) -> CaseResult:
    """The summary row of a case finished by an earlier run, from its record."""
    record = read_record(case) or {}
    return CaseResult(case.name, "skipped", str(case.out), **record.get("result", {}))
