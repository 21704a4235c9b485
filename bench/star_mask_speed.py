"""The ray grower's star mask as it was (every voxel's nearest rays) and as it is (only the voxels
between the smallest and largest ray radius), side by side in one process.

    python bench/star_mask_speed.py [--threads 1]

On the real validation cases (``bench/realct.py``): the hybrid's click 1 and a corrective click
(``clicks.corrective_click``) on each case's first lesion, models loaded, interleaved, best of 3,
and whether both give the same refined lesion.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "LiverTumorRefine"), str(ROOT / "Testing")]

from clicks import real_corrections, speed_threads  # noqa: E402
from test_seeded import _star_mask_everywhere  # noqa: E402 - the previous implementation, the test's reference
from LiverTumorRefineLib.coarse import clicknet, seeded  # noqa: E402
from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402

ROUNDS = 3


def main() -> None:
    speed_threads(__doc__, 1)
    ways = {"every voxel": _star_mask_everywhere, "shell": seeded.star_mask}
    segmenter, refiner = clicknet.ClickSegmenter(), Refiner(device="cpu")
    for case, first, second in real_corrections(segmenter, refiner):
        image, spacing = case.image.array, case.image.spacing_zyx
        best: dict[tuple[str, str], float] = {}
        masks: dict[tuple[str, str], np.ndarray] = {}
        try:
            for _ in range(ROUNDS):
                for name, star_mask in ways.items():
                    seeded.star_mask = star_mask
                    clickmodel.GROWN.clear()  # else click 1 takes its lesion from the last way's run
                    segmenter.seen.clear()
                    for step, lesion in (("click 1", first), ("correction", second)):
                        t = time.perf_counter()
                        _, result = clickmodel.click_lesion(segmenter, refiner, image, spacing, lesion)
                        best[(name, step)] = min(best.get((name, step), np.inf), time.perf_counter() - t)
                        masks[(name, step)] = result.mask
        finally:
            seeded.star_mask = ways["shell"]
        same = all(np.array_equal(masks[("every voxel", s)], masks[("shell", s)]) for s in ("click 1", "correction"))
        print(f"{case.name} {image.shape}, {torch.get_num_threads()} threads, best of {ROUNDS}: "
              + ", ".join(f"{name} {step} {seconds:.2f} s" for (name, step), seconds in best.items())
              + f"; identical: {same}", flush=True)


if __name__ == "__main__":
    main()
