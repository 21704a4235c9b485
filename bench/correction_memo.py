"""A corrective click with and without what click 1 left kept, side by side in one process.

    python bench/correction_memo.py [--threads 1]

A correction grows the lesion's first click again and asks the click model for that click's view
again; both are kept from click 1 (``clicks.GROWN``, ``ClickSegmenter.seen``). On the real
validation cases (``bench/realct.py``), each round runs click 1 and then the correction
(``clicks.corrective_click``) on the case's first lesion, once with the kept results forgotten
before the correction (as before they were kept) and once as shipped; interleaved, best of 3, and
whether both give the same refined lesion.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "LiverTumorRefine")]

from clicks import real_corrections, speed_threads  # noqa: E402
from LiverTumorRefineLib.coarse import clicknet  # noqa: E402
from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402

ROUNDS = 3


def main() -> None:
    speed_threads(__doc__, 1)
    segmenter, refiner = clicknet.ClickSegmenter(), Refiner(device="cpu")
    for case, first, second in real_corrections(segmenter, refiner):
        image, spacing = case.image.array, case.image.spacing_zyx
        best = {"forgotten": np.inf, "kept": np.inf}
        masks: dict[str, np.ndarray] = {}
        for _ in range(ROUNDS):
            for mode in best:
                clickmodel.click_lesion(segmenter, refiner, image, spacing, first)  # click 1, as the user made it
                if mode == "forgotten":
                    clickmodel.GROWN.clear()
                    segmenter.seen.clear()
                t = time.perf_counter()
                _, result = clickmodel.click_lesion(segmenter, refiner, image, spacing, second)
                best[mode] = min(best[mode], time.perf_counter() - t)
                masks[mode] = result.mask
        print(f"{case.name} {image.shape}, {torch.get_num_threads()} threads, the correction after click 1, best of "
              f"{ROUNDS}: forgotten {best['forgotten']:.2f} s, kept {best['kept']:.2f} s; identical: "
              f"{np.array_equal(masks['forgotten'], masks['kept'])}", flush=True)


if __name__ == "__main__":
    main()
