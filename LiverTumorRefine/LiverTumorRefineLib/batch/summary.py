"""The batch summary: one row per case (``CaseResult``), written as ``batch_summary.csv`` and
``.json`` in the output folder (one pair per shard), atomically, after every case."""
from __future__ import annotations

import csv
import io as text_io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from LiverTumorRefineLib.volume import atomic


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
