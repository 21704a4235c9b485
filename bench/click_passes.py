"""A click's second refinement pass in N orientations (``config.SEEDED_LATER_TTA``), side by side:
the hybrid's click 1 and a corrective click on each real 512x512 validation case, models loaded, the
settings alternating round by round (best of each), as a user meets them (click 1 computes afresh,
the correction reuses what click 1 kept).

    python bench/click_passes.py [--later-tta 4 2] [--rounds 5] [--threads 2]

The quality of each setting: ``bench/clicks.py --later-tta N``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "LiverTumorRefine")]

from clicks import real_corrections, user_round  # noqa: E402
from LiverTumorRefineLib.coarse import clicknet  # noqa: E402
from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--later-tta", type=int, nargs="+", default=[4, clickmodel.SEEDED_LATER_TTA])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ONNX Runtime takes as many)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    refiner, segmenter = Refiner(device="cpu"), clicknet.ClickSegmenter()
    for case, first, second in real_corrections(segmenter, refiner):
        if case.image.array.shape[1:] != (512, 512):
            continue
        image, spacing = case.image.array, case.image.spacing_zyx
        best: dict[tuple[int, str], float] = {}
        for _ in range(args.rounds):
            for later in args.later_tta:
                clickmodel.SEEDED_LATER_TTA = later
                for step, (seconds, _) in user_round(segmenter, refiner, image, spacing, first, second).items():
                    best[(later, step)] = min(best.get((later, step), np.inf), seconds)
        print(f"{case.name} {image.shape}, {torch.get_num_threads()} threads, best of {args.rounds}, second pass in "
              + "; ".join(f"{later} orientations: click 1 {best[(later, 'click 1')]:.2f} s, correction "
                          f"{best[(later, 'correction')]:.2f} s" for later in args.later_tta), flush=True)


if __name__ == "__main__":
    main()
