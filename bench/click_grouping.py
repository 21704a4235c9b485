"""How far clicks lie from the previous result: what the Slicer module's click grouping sees.

    python bench/click_grouping.py [--phantoms 30] [--first-seed 95000] [--real] [--reach 0,2,5,10,15]

The module groups a positive point placed after a result with the lesion whose piece of the
previous coarse result it lies in or within ``--reach`` mm of (``coarse.grouping``); otherwise it
is a new lesion. Two kinds of click meet that rule:

- corrective positive clicks (as ``bench/clicks.py`` places them: the deepest point of the largest
  missed region of the refined result, anywhere on the truth lesion, up to 3 per lesion, hybrid):
  they should join their lesion;
- a new lesion's first click, placed after every other lesion has its result (the worst order):
  it should not join a neighbour.

Per reach: the share of corrective clicks that join their own lesion, and of new lesions that join
another. Lesions of 10 mm or more; default cases are tuning phantoms (seeds 95000+), where the
module's ``GROUP_REACH_MM`` was chosen; --real adds the real validation cases.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.coarse import clicknet  # noqa: E402
from LiverTumorRefineLib.coarse.grouping import Pieces  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402

from clicks import lesion_box, user_click  # noqa: E402  (bench/clicks.py: where the simulated user clicks)
from seeded import clicks as deepest_clicks  # noqa: E402

FAR = 1e9


def distances(case, segmenter, refiner, n_clicks: int) -> tuple[list[tuple[float, bool]], list[float]]:
    """(distance to the nearest previous piece, whether that piece is the lesion's own) per
    corrective positive click, and per lesion the distance of its first click to the other
    lesions' first-click results."""
    image, spacing = case.image.array, case.image.spacing_zyx
    labels, seeds, _, ids = deepest_clicks(case.label.array == 2, spacing)
    lesions = [clickmodel.LesionClicks((tuple(float(v) for v in s),)) for s in seeds]
    first = clickmodel.lesion_labels(segmenter, image, spacing, lesions, method="hybrid")
    new_lesion = []
    for i, seed in enumerate(seeds):
        others = (first > 0) & (first != i + 1)
        new_lesion.append(Pieces(others, spacing).nearest(seed, 50.0)[1] if others.any() else FAR)
    corrections = []
    for i, lab in enumerate(ids):
        truth = labels == lab
        truth_box = lesion_box(truth)
        current = lesions[i]
        others = lesions[:i] + lesions[i + 1:]
        for _ in range(n_clicks - 1):
            coarse, refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, current, others)
            found = user_click(truth, truth_box, refined, spacing)
            if found is None:
                break
            voxel, positive = found
            if positive:
                previous = (first > 0) & (first != i + 1)
                previous[coarse.box] |= coarse.mask
                own = np.zeros_like(previous)
                own[coarse.box] = coarse.mask
                pieces = Pieces(previous, spacing)
                piece, distance = pieces.nearest(voxel, 50.0)
                at = pieces.labels == piece
                box = pieces.box
                corrections.append((distance, bool(piece) and bool((at & own[box]).any())))
            current = current.with_click(voxel, positive)
    return corrections, new_lesion


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=95000)
    parser.add_argument("--real", action="store_true", help="also the real validation cases")
    parser.add_argument("--clicks", type=int, default=4)
    parser.add_argument("--reach", default="0,2,5,10,15", help="grouping reaches to report (mm)")
    args = parser.parse_args(argv)
    segmenter, refiner = clicknet.ClickSegmenter(), Refiner(device="cpu")
    cases = [make_phantom(args.first_seed + i) for i in range(args.phantoms)]
    if args.real:
        from cases import real_cases

        cases += list(real_cases())
    corrections, new_lesion = [], []
    for case in cases:
        c, n = distances(case, segmenter, refiner, args.clicks)
        corrections += c
        new_lesion += n
        print(f"{case.name}: corrective positive clicks (mm, own piece) "
              + " ".join(f"{d:.1f}{'' if own else '*'}" for d, own in c)
              + " | first clicks to other lesions (mm) " + " ".join(f"{d:.1f}" if d < FAR else "-" for d in n),
              flush=True)
    d = np.array([c[0] for c in corrections])
    own = np.array([c[1] for c in corrections], dtype=bool)
    far = np.array(new_lesion)
    for reach in (float(r) for r in args.reach.split(",")):
        joined = ((d <= reach) & own).mean() if len(d) else float("nan")
        wrong = (far <= reach).mean() if len(far) else float("nan")
        print(f"reach {reach:4.1f} mm: corrective clicks joining their lesion {joined:.2f} ({len(d)}); "
              f"new lesions joining another {wrong:.2f} ({len(far)})", flush=True)


if __name__ == "__main__":
    main()
