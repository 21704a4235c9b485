"""Corrective clicks in the Slicer module's path: a worker process per job against the kept worker.

    .venv/bin/python bench/click_updates.py [--seed 90000] [--size 512] [--slices N] [--rounds 2] [--other-lesions]

A phantom CT (``make_phantom(seed, size_xy=size, n_slices=slices)``) in a headless scene (slicer-core), one seed
point at its largest lesion's deepest voxel. Each round runs the sequence a user clicks through with
"Update on each click": Apply from the seed, a positive click (a second point in the lesion), a
negative click (a point just outside the lesion) and its undo (the negative point deleted), each
timed from the job's start to its segments in the scene, as the module's timer polls (100 ms).
With ``--other-lesions`` every other lesion of 10 mm or more also gets a seed point at Apply (its
deepest voxel), so each update re-runs all of them, as the module does.
Rounds alternate between ``new``, where the worker is stopped before every job (what each update
cost before the worker was kept), and ``kept``, the module's behaviour, so both see the same
machine load. A kept round starts from a new worker warmed on a point outside the lesion, so its lesion
cache (``coarse.lesion_cache``) holds nothing of the round's lesions: each step reuses only what the
round's own earlier steps computed, as a user's clicks would. The shipped models, on the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine" / "Testing" / "Python"))

import slicer_testing as st  # noqa: E402
from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.training.case import RefineCase  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402


def click_voxels(truth: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The largest lesion's deepest voxel, a second voxel inside it (half-way to its rim) and one
    just outside it (2 voxels beyond the rim, on the same line)."""
    labels = component_labels(truth)
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    depth = ndimage.distance_transform_edt(largest)
    deepest = np.array(np.unravel_index(np.argmax(depth), truth.shape))
    rim = np.argwhere(largest & (depth == 1))
    edge = rim[np.argmin(np.abs(rim[:, 0] - deepest[0]) * 100 + ((rim - deepest) ** 2).sum(1))]
    step = (edge - deepest) / max(np.abs(edge - deepest).max(), 1)
    inside = np.round(deepest + 0.5 * (edge - deepest)).astype(int)
    outside = np.clip(np.round(edge + 2 * step).astype(int), 0, np.array(truth.shape) - 1)
    return tuple(deepest), tuple(inside), tuple(outside)


PARTS: list[dict[str, float]] = []  # per job: where the time went


def ras(sc, kji) -> list[float]:
    """The RAS position (mm) of voxel ``kji`` (z, y, x) of the scene case's CT."""
    return [float(v) for v in (sc.matrix @ [kji[2], kji[1], kji[0], 1.0])[:3]]


def run_job(logic, sc, positive, negative, replace: str | None) -> tuple[float, object]:
    t0 = time.perf_counter()
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds",
                            seedsNode=positive, negativeSeedsNode=negative, replaceCoarseSegmentId=replace)
    prepared = time.perf_counter()
    while not job.done:
        time.sleep(0.1)  # the module's timer
        job.state()
    ended = time.perf_counter()
    result = job.finish()
    seconds = result.stats.get("seconds", {})
    PARTS.append({"prepare": prepared - t0, "worker": ended - prepared, "apply": time.perf_counter() - ended,
                  "coarse": seconds.get("coarse", float("nan")), "refine": seconds.get("total", float("nan")),
                  "boxes reused": result.stats.get("boxes_reused", 0),  # of the boxes the refiner's passes ran
                  "boxes": len(result.stats.get("crop_shapes", [])) * result.stats.get("passes", 1),
                  # of the patches in the boxes refined again, those whose prediction was kept (int8 export)
                  "patches reused": result.stats.get("patches_reused", 0), "patches": result.stats.get("patches", 0)})
    return time.perf_counter() - t0, result


def one_round(logic, sc, clicks, kept: bool, others: list = ()) -> list[float]:
    if kept:  # a warm worker that has seen none of this round's lesions (its lesion cache starts empty)
        logic.stopWorker()
        run_job(logic, sc, *_warm_points(sc, clicks), None)
        PARTS.pop()
    scene = sc.volumeNode.GetScene()
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative clicks")
    deepest, inside, outside = (ras(sc, k) for k in clicks)
    positive.AddControlPoint(deepest)
    for other in others:
        positive.AddControlPoint(ras(sc, other))
    times = []
    replace = None
    for step in ("apply", "positive", "negative", "undo"):
        if step == "positive":
            positive.AddControlPoint(inside)
        elif step == "negative":
            negative.AddControlPoint(outside)
        elif step == "undo":
            negative.RemoveNthControlPoint(0)
        if not kept:
            logic.stopWorker()
        seconds, result = run_job(logic, sc, positive, negative, replace)
        replace = result.coarseSegmentId
        times.append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=90000)
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels of the phantom")
    parser.add_argument("--slices", type=int, default=None,
                        help="slices of the phantom (default: the phantom's own stack over the liver)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode, alternating")
    parser.add_argument("--other-lesions", action="store_true",
                        help="also a seed in every other lesion of 10 mm or more (updates re-run them all)")
    args = parser.parse_args()
    phantom = make_phantom(args.seed, size_xy=args.size, n_slices=args.slices)
    truth = phantom.label.array == 2
    case = RefineCase(f"phantom{args.seed}", phantom.image.array, truth, truth, phantom.image.spacing_zyx,
                      liver=phantom.label.array > 0)
    app = st.make_app()
    sc = st.build_scene_case(app.scene, case)
    clicks = click_voxels(truth)
    others = []
    if args.other_lesions:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from seeded import clicks as deepest_points  # bench/seeded.py

        labels, seeds, _, _ = deepest_points(truth, phantom.image.spacing_zyx)  # its labels: component_labels' own
        others = [s for s in seeds if labels[s] != labels[clicks[0]]]
    print(f"phantom {args.seed}: {truth.shape} voxels, clicks at {clicks} (deepest, inside, outside), "
          f"{len(others)} other lesion seeds")
    logic = ltr.LiverTumorRefineLogic()
    rows: dict[str, list[list[float]]] = {"new": [], "kept": []}
    run_job(logic, sc, *_warm_points(sc, clicks), None)  # file caches and the first worker, not counted
    for _ in range(args.rounds):
        for mode in ("new", "kept"):
            rows[mode].append(one_round(logic, sc, clicks, kept=mode == "kept", others=others))
            print(f"{mode:>5}: " + ", ".join(f"{name} {s:.2f} s" for name, s in
                                              zip(("apply", "positive", "negative", "undo"), rows[mode][-1])), flush=True)
            for name, part in zip(("apply", "positive", "negative", "undo"), PARTS[-4:]):
                print(f"       {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in part.items()))
    logic.stopWorker()
    best = {mode: np.min(np.array(values), axis=0) for mode, values in rows.items()}
    print("best of each step: " + "; ".join(f"{name} {best['new'][i]:.2f} s -> {best['kept'][i]:.2f} s "
                                              f"({best['new'][i] / best['kept'][i]:.1f}x)"
                                              for i, name in enumerate(("apply", "positive", "negative", "undo"))))


def _warm_points(sc, clicks):
    """A seed just outside the lesion: it warms the worker without giving it any of the rounds'
    lesions (a seed at the deepest voxel would be the Apply step's own lesion, then kept)."""
    scene = sc.volumeNode.GetScene()
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "warm-up")
    positive.AddControlPoint(ras(sc, clicks[2]))
    return positive, None


if __name__ == "__main__":
    main()
