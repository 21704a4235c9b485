"""Seeded coarse segmentation, then refinement: one click per lesion over 10 mm.

    python bench/seeded.py [--phantoms 10] [--first-seed 90000] [--lits117] [--no-refine] [--passes 2] [--rim-min-hu 16]
                           [--method rays|auto] [--first-tta 4 [2 ...]] [--later-tta 4 [2 ...]]

The click is each truth lesion's deepest point (farthest from its surface). Per lesion: Dice of
the seed's own region (everything it claimed, leaks included) against that lesion, for the
coarse mask grown from the seeds and after refinement (the refined mask within the seed's cell:
the voxels nearer to it than to any other seed). Prints means, leaks and timings. ``--first-tta`` and
``--later-tta`` with several values refine the same coarse mask once per pair (the orientations of the
first pass and of the passes after it), side by side, and print each. ``--method``:
the ray grower alone (``rays``, the default here), or what ``refine --seeds`` does by default
(``auto``: the hybrid's lesions, the whole coarse mask refined, then each lesion's refined outline
guarded as a click's is).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.evaluate.metrics import overlap_metrics  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.coarse import seeded  # noqa: E402
from LiverTumorRefineLib.coarse.seeded import nearest_seed_labels, seed_labels  # noqa: E402
from LiverTumorRefineLib.config import SEEDED_REFINEMENT, Passes  # noqa: E402

MIN_DIAMETER_MM = 10.0


def clicks(truth: np.ndarray, spacing_zyx) -> tuple[np.ndarray, list[tuple[int, int, int]], list[float], list[int]]:
    """Truth lesion labels, and the deepest point, equivalent diameter and label of each lesion over 10 mm."""
    image = sitk.GetImageFromArray(truth.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False,
                                                                useImageSpacing=True))
    seeds, diameters, lesion_ids = [], [], []
    voxel = float(np.prod(spacing_zyx))
    for lab in range(1, int(labels.max()) + 1):
        lesion = labels == lab
        diameter = 2 * (lesion.sum() * voxel * 3 / (4 * np.pi)) ** (1 / 3)
        if diameter < MIN_DIAMETER_MM:
            continue
        flat = np.argmax(np.where(lesion, depth, -np.inf))
        seeds.append(tuple(int(v) for v in np.unravel_index(flat, truth.shape)))
        diameters.append(float(diameter))
        lesion_ids.append(lab)
    return labels, seeds, diameters, lesion_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=90000)
    parser.add_argument("--lits117", action="store_true")
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--passes", type=int, default=SEEDED_REFINEMENT.count,
                        help=f"refinement passes (default {SEEDED_REFINEMENT.count}, as refine --seeds does)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", choices=("rays", "auto"), default="rays",
                        help="rays: the ray grower alone; auto: refine --seeds' default (the hybrid, guarded)")
    parser.add_argument("--first-tta", type=int, nargs="+", default=[SEEDED_REFINEMENT.first_tta],
                        help=f"orientations of the first pass (default {SEEDED_REFINEMENT.first_tta}, as refine --seeds "
                             "does); "
                             "several values: each, side by side with every --later-tta")
    parser.add_argument("--later-tta", type=int, nargs="+", default=[SEEDED_REFINEMENT.later_tta],
                        help=f"orientations of the passes after the first (default {SEEDED_REFINEMENT.later_tta}, as "
                             "refine --seeds "
                             "does); several values: each, side by side")
    parser.add_argument("--rim-min-hu", type=float, default=seeded.DEFAULT.rim_min_hu,
                        help="smallest rim overshoot (HU) that moves a lesion's edge out to its rim; 0: never")
    args = parser.parse_args()
    seeded.DEFAULT = dataclasses.replace(seeded.DEFAULT, rim_min_hu=args.rim_min_hu)
    refiner = None if args.no_refine else Refiner(device=args.device)
    cases = [lambda i=i: make_phantom(args.first_seed + i) for i in range(args.phantoms)]
    if args.lits117:
        from LiverTumorRefineLib.training.datasets import load_lits117

        cases.append(load_lits117)
    rows = {"phantom": [], "real": []}
    seconds: dict[tuple[int, int], float] = {}
    settings = [(first, later) for first in args.first_tta for later in args.later_tta]
    for n, make in enumerate(cases):
        case = make()
        spacing = case.image.spacing_zyx
        truth = case.label.array == 2
        labels, seeds, diameters, ids = clicks(truth, spacing)
        if not seeds:
            continue
        t = time.perf_counter()
        if args.method == "rays":
            grown, made = seed_labels(case.image.array, seeds, spacing), None
        else:  # as sources.from_seeds: one lesion per seed, by the hybrid
            made = clickmodel.lesions_from_clicks(case.image.array, spacing, [[s] for s in seeds], method="hybrid")
            grown = made.labels(truth.shape)
        t_grow = time.perf_counter() - t
        refined: dict[tuple[int, int], np.ndarray] = {}
        t_refine: dict[tuple[int, int], float] = {}
        if refiner is not None:
            order = settings if n % 2 == 0 else settings[::-1]  # alternate who goes first
            for first, later in order:
                t = time.perf_counter()
                refiner.seeded = Passes(args.passes, first, later)  # this side's setting, as refine --seeds runs one
                mask = refiner.refine_seeded(case.image.array, grown > 0, spacing).mask
                if made is not None:
                    mask = made.guard(mask, spacing)  # as the pipeline does after a seeded job's refinement
                t_refine[(first, later)] = time.perf_counter() - t
                refined[(first, later)] = mask
            cells = nearest_seed_labels(truth.shape, seeds, spacing)
        kind = "real" if case.name.startswith("lits") or "117" in case.name else "phantom"
        for i, (lab, diameter) in enumerate(zip(ids, diameters)):
            lesion = labels == lab
            before = overlap_metrics(lesion, grown == i + 1)["dice"]
            after = [overlap_metrics(lesion, refined[setting] & (cells == i + 1))["dice"] if refined else float("nan")
                     for setting in settings]
            outside = float(((grown == i + 1) & ~truth).sum()) / max(float(lesion.sum()), 1.0)
            rows[kind].append((before, outside, diameter, *after))
            print(f"{case.name:>14} lesion {lab:2d} {diameter:5.1f} mm: coarse {before:.3f} refined "
                  + " / ".join(f"{a:.3f}" for a in after) + f" outside {outside:5.2f}", flush=True)
        print(f"{case.name:>14}: grow {t_grow:.2f} s, refine " + " / ".join(f"{t_refine.get(setting, 0.0):.2f}"
                                                                         for setting in settings)
              + f" s, {len(seeds)} seeds", flush=True)
        for setting in t_refine:
            seconds[setting] = seconds.get(setting, 0.0) + t_refine[setting]
    for kind, values in rows.items():
        if not values:
            continue
        v = np.array(values)
        coarse = v[:, 0]
        for j, (first, later) in enumerate(settings):
            after = v[:, 3 + j]
            print(f"{kind}, passes in {first} and {later} orientations: {len(v)} lesions, mean lesion Dice coarse "
                  f"{coarse.mean():.3f} refined {np.nanmean(after):.4f} ({np.nanmean(after - coarse):+.3f}); median coarse "
                  f"{np.median(coarse):.3f}; refined below coarse by > 0.05: {int((after < coarse - 0.05).sum())}; "
                  f"leaks (outside > lesion size) {int((v[:, 1] > 1).sum())}")
    if seconds:
        print("refine seconds, all cases: " + "; ".join(f"{first} and {later} orientations {s:.1f} s"
                                                         for (first, later), s in seconds.items()))


if __name__ == "__main__":
    main()
