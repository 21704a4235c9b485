"""The main job on a default case, with no arguments: ``livertumorrefine demo``.

Gets a real CT (LiTS case 117 from the PyPI wheel) or, when that cannot be had, a generated
phantom; simulates a coarse segmentation; refines it with the shipped model; writes CT, truth,
coarse, refined, an overlay PNG and a metrics table, and says where they are.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.atomic import write_text
from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics, format_metrics_table
from LiverTumorRefineLib.evaluate.overlay import render_overlay_panel, write_png
from LiverTumorRefineLib.training.phantom import Case, make_phantom
from LiverTumorRefineLib.progress import Progress
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.volume.geometry import Volume

Log = Callable[[str], None]
COARSE_SEED = 117  # fixed so every run of the demo shows the same coarse mask


def lits117_source() -> tuple[str, bool]:
    """Where ``datasets.load_lits117()`` will take LiTS 117 from, and whether that is a download."""
    from LiverTumorRefineLib.training.datasets import LITS117_PACKAGE, LITS117_REQUIREMENT, LITS117_WHEEL, cache_dir

    if importlib.util.find_spec(LITS117_PACKAGE) is not None:
        return f"the installed package {LITS117_PACKAGE}", False
    wheel = cache_dir() / LITS117_WHEEL
    if wheel.is_file():
        return f"the cached wheel {wheel}", False
    return f"the {LITS117_REQUIREMENT} wheel (4.5 MB) downloaded from PyPI with pip into {cache_dir()}", True


def get_demo_case(log: Log) -> Case:
    """LiTS 117 when the wheel is installed or downloadable, else a phantom; says which, and
    before a download that it is downloading."""
    from LiverTumorRefineLib.training.datasets import load_lits117

    source, download = lits117_source()
    if download:
        log(f"Downloading LiTS case 117: {source} ...")
    try:
        case = load_lits117()
    except RefineError as exc:
        log(f"LiTS case 117 unavailable ({exc}); using generated phantom 20260 instead (livertumorrefine phantom).")
        return make_phantom(20260)
    log(f"Case: LiTS 117 (a public liver CT with reference labels) from {source}.")
    return case


def run_demo(out_dir: str | Path, device: str = "auto", weights: str | None = None, log: Log = print,
             progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Run the demo into ``out_dir``; returns {"coarse": metrics, "refined": metrics}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    case = get_demo_case(log)
    spacing = case.image.spacing_zyx
    truth = case.label.array == 2
    log("Simulating a coarse segmentation (the reference grown, shrunk and distorted) ...")
    coarse = simulate_coarse(truth, spacing, np.random.default_rng(COARSE_SEED), image=case.image.array)
    if not coarse.any():
        raise RefineError("The simulated coarse mask came out empty; rerun the demo.")
    log(f"case {case.name}: {case.image.array.shape[::-1]} voxels (x,y,z), spacing {tuple(round(s, 3) for s in case.image.geometry.spacing)} mm")
    log("Refining the coarse mask's boundary with the shipped model ...")
    result = Refiner(weights, device=device).refine(case.image.array, coarse, spacing, progress)
    rows = {"coarse": compute_metrics(truth, coarse, spacing), "refined": compute_metrics(truth, result.mask, spacing)}
    geometry = case.image.geometry
    files = {"ct.nii.gz": case.image, "truth.nii.gz": case.label,
             "coarse.nii.gz": Volume(coarse.astype(np.uint8), geometry),
             "refined.nii.gz": Volume(result.mask.astype(np.uint8), geometry)}
    for name, volume in files.items():
        io.write_volume(volume, out / name, force=True)
    write_png(render_overlay_panel(case.image.array, spacing, truth=truth, coarse=coarse, refined=result.mask), out / "overlay.png")
    table = format_metrics_table(rows)
    write_text(out / "metrics.txt", table + "\n")
    write_text(out / "metrics.json", json.dumps({k: {m: (v if math.isfinite(v) else None) for m, v in r.items()}
                                                for k, r in rows.items()}, indent=2) + "\n")
    s = result.stats
    log(f"refined {s['patches']} boundary patches in {s['seconds']['total']:.2f} s on {s['device']}, "
        f"{s['voxels_changed']} voxels changed")
    log(table)
    log(f"wrote {', '.join(sorted(files))}, overlay.png, metrics.txt, metrics.json in {out.resolve()}")
    return rows
