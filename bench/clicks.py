"""Click-to-lesion: the learned click model against the ray grower, one click per lesion and up to
three corrective clicks.

    python bench/clicks.py [--phantoms 6] [--first-seed 90000] [--no-real] [--no-lits] [--clicks 4]
                           [--weights clicknet.pt]

Per lesion of 10 mm or more (equivalent sphere): click 1 at its deepest point (farthest from its
surface); each further click at the deepest point of the largest error region of the refined
result the user sees (positive on a missed part, negative on a leak), within the lesion's crop.
The model and the shipped refiner re-run on that lesion's crop only. Lesion Dice is against
that lesion alone (a neighbour it takes counts against it). The ray grower (``seeded``) gets
click 1 only. Cases: held-out phantoms (seeds 90000+) and the real validation cases
(``realct_1720``, ``realct_mip10`` from bench/realct.py's cache, LiTS 117). Timing: click 1 on
a 512x512 CT with the models loaded, and the first click including both models' loading.
Merges: a lesion's result covering more than 10% of another lesion; leaks: result voxels outside
every lesion outnumbering the lesion's own voxels.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.coarse.seeded import nearest_seed_labels, seed_labels  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402

from seeded import clicks as deepest_clicks  # noqa: E402

MERGE_SHARE = 0.10


def lesion_dice(truth: np.ndarray, result: clickmodel.LesionMask) -> float:
    """Dice of a lesion result (on its box) against the whole-volume truth lesion."""
    inside = truth[result.box]
    total = float(truth.sum() + result.mask.sum())
    return 2.0 * float((inside & result.mask).sum()) / total if total else 1.0


def problems(labels: np.ndarray, own: int, result: clickmodel.LesionMask) -> tuple[bool, bool]:
    """(merged, leaked): the result covers > 10% of another lesion; more voxels outside every
    lesion than the lesion has."""
    local = labels[result.box]
    merged = False
    for other in np.unique(local[result.mask]):
        if other not in (0, own):
            merged |= float((result.mask & (local == other)).sum()) > MERGE_SHARE * float((labels == other).sum())
    leak = float((result.mask & (local == 0)).sum())
    return merged, leak > float((labels == own).sum())


def run_case(case, segmenter: clickmodel.ClickSegmenter, refiner: Refiner, n_clicks: int, out: dict) -> None:
    image, spacing = case.image.array, case.image.spacing_zyx
    truth_all = case.label.array == 2
    labels, seeds, diameters, ids = deepest_clicks(truth_all, spacing)
    if not seeds:
        print(f"{case.name}: no lesion of 10 mm or more", flush=True)
        return
    kind = "phantom" if case.name.startswith("phantom") else "real"
    lesions = [clickmodel.LesionClicks((tuple(float(v) for v in s),)) for s in seeds]
    grown = seed_labels(image, seeds, spacing)
    grown_refined = refiner.refine(image, grown > 0, spacing).mask
    cells = nearest_seed_labels(truth_all.shape, seeds, spacing)
    case_rows = []
    for i, (lab, diameter) in enumerate(zip(ids, diameters)):
        truth = labels == lab
        ray = 2.0 * float((truth & (grown == i + 1)).sum()) / float(truth.sum() + (grown == i + 1).sum())
        ray_ref_mask = grown_refined & (cells == i + 1)
        ray_ref = 2.0 * float((truth & ray_ref_mask).sum()) / float(truth.sum() + ray_ref_mask.sum())
        current, others = lesions[i], lesions[:i] + lesions[i + 1:]
        coarse_d, refined_d, flags = [], [], []
        for k in range(n_clicks):
            coarse, refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, current, others)
            coarse_d.append(lesion_dice(truth, coarse))
            refined_d.append(lesion_dice(truth, refined))
            flags.append(problems(labels, int(lab), refined))
            found = clickmodel.corrective_click(truth[refined.box], refined.mask, spacing)
            if found is None:  # nothing left to correct in the crop: later clicks change nothing
                coarse_d += [coarse_d[-1]] * (n_clicks - k - 1)
                refined_d += [refined_d[-1]] * (n_clicks - k - 1)
                flags += [flags[-1]] * (n_clicks - k - 1)
                break
            voxel = tuple(v + b.start for v, b in zip(found[0], refined.box))
            current = current.with_click(voxel, found[1])
        merged = any(f[0] for f in flags)
        leaked = any(f[1] for f in flags)
        print(f"{case.name:>14} lesion {lab:2d} {diameter:5.1f} mm | ray {ray:.3f} -> {ray_ref:.3f} | model coarse "
              + " ".join(f"{d:.3f}" for d in coarse_d) + " | refined " + " ".join(f"{d:.3f}" for d in refined_d)
              + (" MERGED" if merged else "") + (" LEAK" if leaked else ""), flush=True)
        row = (ray, ray_ref, *coarse_d, *refined_d, merged, leaked)
        case_rows.append(row)
        out[kind].append(row)
    v = np.array(case_rows, dtype=float)
    n = n_clicks
    print(f"{case.name:>14} mean of {len(v)}: ray {v[:, 0].mean():.3f} -> {v[:, 1].mean():.3f} | model coarse "
          + " ".join(f"{d:.3f}" for d in v[:, 2:2 + n].mean(0)) + " | refined "
          + " ".join(f"{d:.3f}" for d in v[:, 2 + n:2 + 2 * n].mean(0)), flush=True)


def timing(case, weights: str | None) -> None:
    """Seconds of click 1 (model and refiner on the lesion's crop), loaded and from cold."""
    image, spacing = case.image.array, case.image.spacing_zyx
    _, seeds, _, _ = deepest_clicks(case.label.array == 2, spacing)
    lesion = clickmodel.LesionClicks((tuple(float(v) for v in seeds[0]),))
    t = time.perf_counter()
    segmenter, refiner = clickmodel.ClickSegmenter(weights), Refiner(device="cpu")
    coarse, _ = clickmodel.click_lesion(segmenter, refiner, image, spacing, lesion)
    cold = time.perf_counter() - t
    model_s, total_s = [], []
    for _ in range(3):
        t = time.perf_counter()
        coarse = clickmodel.segment_lesion(segmenter, image, spacing, lesion)
        model_s.append(time.perf_counter() - t)
        clickmodel.refine_lesion(refiner, image, spacing, coarse)
        total_s.append(time.perf_counter() - t)
    print(f"timing on {case.name} {image.shape}: first click with model loading {cold:.2f} s; one click with models "
          f"loaded: click model {min(model_s):.2f} s, with refinement {min(total_s):.2f} s (best of 3, "
          f"{torch.get_num_threads()} threads)", flush=True)


def summary(out: dict, n_clicks: int) -> None:
    for kind, rows in out.items():
        if not rows:
            continue
        v = np.array(rows, dtype=float)
        n = n_clicks
        print(f"{kind}: {len(v)} lesions | ray grower click 1: coarse {v[:, 0].mean():.3f} refined {v[:, 1].mean():.3f} | "
              f"model coarse after clicks 1..{n}: " + " ".join(f"{d:.3f}" for d in v[:, 2:2 + n].mean(0))
              + f" | refined: " + " ".join(f"{d:.3f}" for d in v[:, 2 + n:2 + 2 * n].mean(0))
              + f" | merges {int(v[:, -2].sum())}, leaks {int(v[:, -1].sum())}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=90000)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-lits", action="store_true")
    parser.add_argument("--clicks", type=int, default=4)
    parser.add_argument("--weights", help="click model (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    segmenter = clickmodel.ClickSegmenter(args.weights)
    refiner = Refiner(device="cpu")
    out: dict = {"phantom": [], "real": []}
    for i in range(args.phantoms):
        run_case(make_phantom(args.first_seed + i), segmenter, refiner, args.clicks, out)
    real = []
    if not args.no_real:
        from cases import real_cases

        try:
            real = list(real_cases(lits=not args.no_lits))
        except Exception as exc:  # the real cases' cache is not built, or LiTS 117 is not available
            print(f"real cases unavailable: {exc}", flush=True)
        for case in real:
            run_case(case, segmenter, refiner, args.clicks, out)
    summary(out, args.clicks)
    big = [c for c in real if c.image.array.shape[1:] == (512, 512)]
    if big:
        timing(big[0], args.weights)


if __name__ == "__main__":
    main()
