"""A click's refinement settings side by side: its first pass in N orientations (``config.SEEDED_FIRST_TTA``),
its second pass in N orientations (``config.SEEDED_LATER_TTA``) and the refiner's intensity gate on or off
(``config.INTENSITY_GATE``).
The hybrid's click 1 and a corrective click on each real 512x512 validation case, models loaded, the
settings alternating round by round (best of each), as a user meets them (click 1 computes afresh,
the correction reuses what click 1 kept).

    python bench/click_passes.py [--first-tta 2] [--later-tta 4 2] [--gate 1] [--rounds 5] [--threads 2]
    python bench/click_passes.py --first-tta 4 2 --later-tta 2   # what a first pass in 2 orientations saves
    python bench/click_passes.py --later-tta 2 --gate 1 0     # what the intensity gate costs a click

The quality of each setting: ``bench/clicks.py --first-tta N --later-tta N --intensity-gate G``.
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
from LiverTumorRefineLib.config import INTENSITY_GATE, SEEDED_REFINEMENT, Passes  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-tta", type=int, nargs="+", default=[SEEDED_REFINEMENT.first_tta])
    parser.add_argument("--later-tta", type=int, nargs="+", default=[4, SEEDED_REFINEMENT.later_tta])
    parser.add_argument("--gate", type=int, nargs="+", choices=(0, 1), default=[int(INTENSITY_GATE)],
                        help="the refiner's intensity gate: 1 on, 0 off; several: each")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ONNX Runtime takes as many)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    refiners = {gate: Refiner(device="cpu", intensity_gate=bool(gate)) for gate in args.gate}
    segmenter = clicknet.ClickSegmenter()
    settings = [(first, later, gate) for first in args.first_tta for later in args.later_tta for gate in args.gate]
    for case, first, second in real_corrections(segmenter, refiners[args.gate[0]]):
        if case.image.array.shape[1:] != (512, 512):
            continue
        image, spacing = case.image.array, case.image.spacing_zyx
        best: dict[tuple[int, int, int, str], float] = {}
        for _ in range(args.rounds):
            for setting in settings:
                refiners[setting[2]].seeded = Passes(SEEDED_REFINEMENT.count, setting[0], setting[1])
                for step, (seconds, _) in user_round(segmenter, refiners[setting[2]], image, spacing, first,
                                                     second).items():
                    best[setting + (step,)] = min(best.get(setting + (step,), np.inf), seconds)
        print(f"{case.name} {image.shape}, {torch.get_num_threads()} threads, best of {args.rounds}: "
              + "; ".join(f"passes in {s[0]} and {s[1]} orientations, gate {'on' if s[2] else 'off'}: click 1 "
                          f"{best[s + ('click 1',)]:.2f} s, correction {best[s + ('correction',)]:.2f} s"
                          for s in settings), flush=True)


if __name__ == "__main__":
    main()
