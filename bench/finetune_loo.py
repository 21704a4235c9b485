"""Fine-tuning for a site with its own data, measured leave-one-case-out on the real validation cases.

    python bench/finetune_loo.py --model LiverTumorRefine/Resources/Models/brnet_default.pt \
        [--steps 300] [--lr 5e-4] [--variants 3] [--out runs/finetune_loo]

For each real case (``realct_1720``, ``realct_mip10``, LiTS 117): fine-tune ``--model`` on the
other two (``train --init`` with simulated coarse masks, as a site would on its own labelled
scans), then refine the held-out case with the base and the fine-tuned model, each on the same
``--variants`` independent coarse masks as ``bench/realval.py``. Prints the Dice gain of both.
This is an experiment to report, never a way to make shipped weights: those see no real CT.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.evaluate.metrics import overlap_metrics  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.training.train import TrainConfig, train  # noqa: E402
from LiverTumorRefineLib.training.trainset import with_coarse  # noqa: E402
from LiverTumorRefineLib.refine.weights import load_model  # noqa: E402

from realval import independent_coarse, real_cases  # noqa: E402


def gain(refiner: Refiner, case, variants: int) -> float:
    """Mean Dice gain over the independent coarse variants of ``case``."""
    truth = case.label.array == 2
    gains = []
    for v in range(variants):
        coarse = independent_coarse(truth, case.image.spacing_zyx, v)
        refined = refiner.refine(case.image.array, coarse, case.image.spacing_zyx).mask
        gains.append(overlap_metrics(truth, refined)["dice"] - overlap_metrics(truth, coarse)["dice"])
    return float(np.mean(gains))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--train-variants", type=int, default=4, help="simulated coarse masks per training case")
    parser.add_argument("--out", default="runs/finetune_loo")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    base = load_model(args.model)
    cases = list(real_cases())
    rows = []
    for held in cases:
        others = [c for c in cases if c.name != held.name]
        cfg = replace(TrainConfig(), steps=args.steps, lr=args.lr, warmup_steps=min(50, args.steps // 5),
                      epoch_steps=args.steps, patch=base.patch_config, net=base.net_config)
        out = Path(args.out) / held.name
        path = train(cfg, with_coarse(iter(others), args.train_variants, 0), [], out, device=args.device,
                     init=load_model(args.model), log=lambda m: print(f"  [{held.name}] {m}", flush=True))
        before = gain(Refiner(args.model, device=args.device), held, args.variants)
        after = gain(Refiner(path, device=args.device), held, args.variants)
        rows.append((held.name, before, after))
        print(f"{held.name}: Dice gain base {before:+.4f}, fine-tuned on the other two {after:+.4f}", flush=True)
    print(f"\nmean gain: base {np.mean([r[1] for r in rows]):+.4f}, fine-tuned {np.mean([r[2] for r in rows]):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
