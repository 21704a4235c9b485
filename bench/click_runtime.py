"""The click model run as the previous release ran it (the bare PyTorch module, "plain"), by the
PyTorch runtime (channels_last, chunks sized to the cache, "torch") and by ONNX Runtime (its shipped
fp32 export, "onnx"), side by side in one process.

    python bench/click_runtime.py [--threads 2]

On the real validation cases (``bench/realct.py``): the hybrid's click 1 and a corrective click
(``clicks.corrective_click``) on each case's first lesion, models loaded, each round as a user
meets it (click 1 computes afresh, the correction reuses what click 1 kept), interleaved, best of
3; then the click model's own share (one crop of the first click, "model") and how far the lesion
probabilities and refined lesions of ONNX Runtime and the previous release differ.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "LiverTumorRefine")]

from clicks import real_corrections, speed_threads, user_round  # noqa: E402
from LiverTumorRefineLib.coarse import clicknet  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import dice  # noqa: E402

ROUNDS = 3


def main() -> None:
    speed_threads(__doc__, 2, "torch threads (ONNX Runtime takes as many)")
    refiner = Refiner(device="cpu")
    segmenters = {name: clicknet.ClickSegmenter(runtime=runtime)
                  for name, runtime in (("plain", "torch"), ("torch", "torch"), ("onnx", "onnx"))}
    segmenters["plain"].runtime = clicknet.load_click_model().eval()  # the previous release: the bare module
    for case, first, second in real_corrections(segmenters["plain"], refiner):
        image, spacing = case.image.array, case.image.spacing_zyx
        best: dict[tuple[str, str], float] = {}
        masks: dict[tuple[str, str], np.ndarray] = {}
        for _ in range(ROUNDS):
            for name, segmenter in segmenters.items():
                for step, (seconds, result) in user_round(segmenter, refiner, image, spacing, first, second).items():
                    best[(name, step)] = min(best.get((name, step), np.inf), seconds)
                    masks[(name, step)] = result.paste(image.shape)
                segmenter.seen.clear()
                t = time.perf_counter()
                _, prob = segmenter.probabilities(image, spacing, first.positive)
                best[(name, "model")] = min(best.get((name, "model"), np.inf), time.perf_counter() - t)
                masks[(name, "prob")] = prob.numpy()
        gap = float(np.abs(masks[("plain", "prob")] - masks[("onnx", "prob")]).max())
        print(f"{case.name} {image.shape}, {torch.get_num_threads()} threads, best of {ROUNDS}: "
              + ", ".join(f"{name} {step} {seconds:.2f} s" for (name, step), seconds in best.items())
              + f"; probability at most {gap:.1e} apart; refined lesion Dice onnx vs plain: "
              + ", ".join(f"{step} {dice(masks[('plain', step)], masks[('onnx', step)]):.4f}"
                          for step in ("click 1", "correction")), flush=True)


if __name__ == "__main__":
    main()
