"""Automatic coarse segmentation (the shipped 2.5D network), then refinement, on held-out cases.

    python bench/autocoarse.py [--phantoms 20] [--lits117 | --real] [--no-refine] [--model segnet.pt]

Phantoms with seeds 90000+ (the coarse network trains on 1000+, validates on 50000+) and LiTS
case 117, or with ``--real`` every real validation case (the two rebuilt by ``bench/realct.py``,
then LiTS 117). Per case: liver Dice (liver + tumour as the organ), tumour Dice, lesion detection
(a truth lesion is found when a predicted tumour piece overlaps it with IoU > 0.5; a predicted
piece that matches no truth lesion that way is a false positive), and the tumour Dice after
refinement of the automatic coarse mask. Prints means and timings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.coarse.autoseg import Segmenter  # noqa: E402
from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.training.segtrain import evaluate_segmentation  # noqa: E402
from LiverTumorRefineLib.training.trainset import EVALUATION_PHANTOM_SEED  # noqa: E402


def detection(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(truth lesions, found at IoU > 0.5, false-positive predicted pieces)."""
    t_labels, p_labels = component_labels(truth), component_labels(pred)
    n_t, n_p = int(t_labels.max()), int(p_labels.max())
    matched_pred = set()
    found = 0
    for i in range(1, n_t + 1):
        lesion = t_labels == i
        candidates = np.unique(p_labels[lesion])
        best, best_j = 0.0, None
        for j in candidates[candidates > 0]:
            piece = p_labels == j
            iou = (lesion & piece).sum() / (lesion | piece).sum()
            if iou > best:
                best, best_j = iou, int(j)
        if best > 0.5:
            found += 1
            matched_pred.add(best_j)
    return n_t, found, n_p - len(matched_pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=20)
    parser.add_argument("--lits117", action="store_true", help="add LiTS 117")
    parser.add_argument("--real", action="store_true", help="add every real validation case (implies LiTS 117)")
    parser.add_argument("--model", help="a coarse network other than the shipped one (segnet.pt of a run)")
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device=args.device)
    refiner = None if args.no_refine else Refiner(device=args.device)
    cases = [lambda i=i: make_phantom(EVALUATION_PHANTOM_SEED + i) for i in range(args.phantoms)]
    if args.real:
        from cases import real_cases

        cases.extend(lambda case=case: case for case in real_cases())
    elif args.lits117:
        from LiverTumorRefineLib.training.datasets import load_lits117

        cases.append(load_lits117)
    rows = {"phantom": [], "real": []}
    for make in cases:
        case = make()
        kind = "phantom" if case.name.startswith("phantom") else "real"
        spacing = case.image.spacing_zyx
        t = time.perf_counter()
        labels = segmenter.segment(case.image.array, spacing)
        seconds = time.perf_counter() - t
        scores = evaluate_segmentation(labels, case.label.array, spacing)
        truth = case.label.array == 2
        n_t, found, fp = detection(truth, labels == 2)
        refined_dice = float("nan")
        if refiner is not None and (labels == 2).any():
            refined = refiner.refine(case.image.array, labels == 2, spacing).mask
            refined_dice = evaluate_segmentation(np.where(refined, 2, labels > 0).astype(np.uint8), case.label.array,
                                                 spacing)["tumour_dice"]
        rows[kind].append((scores["liver_dice"], scores["tumour_dice"], refined_dice, n_t, found, fp, seconds))
        print(f"{case.name:>14}: liver Dice {scores['liver_dice']:.3f}, tumour Dice {scores['tumour_dice']:.3f} -> "
              f"refined {refined_dice:.3f}; lesions found {found}/{n_t}, false positives {fp}; "
              f"{seconds:.1f} s, shape {case.image.array.shape}", flush=True)
    for kind, values in rows.items():
        if values:
            v = np.array(values, dtype=float)
            print(f"{kind} ({len(v)} cases): liver Dice {np.nanmean(v[:, 0]):.3f} (min {np.nanmin(v[:, 0]):.3f}), "
                  f"tumour Dice {np.nanmean(v[:, 1]):.3f} -> refined {np.nanmean(v[:, 2]):.3f}, lesion recall "
                  f"{v[:, 4].sum():.0f}/{v[:, 3].sum():.0f} = {v[:, 4].sum() / max(v[:, 3].sum(), 1):.2f}, "
                  f"false positives per case {v[:, 5].mean():.2f}, {v[:, 6].mean():.1f} s per case")


if __name__ == "__main__":
    main()
