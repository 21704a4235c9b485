"""The refiner given the reference itself: how far it moves a mask that is already right.

    python bench/refine_truth.py [--phantoms 2] [--first-seed 50000] [--no-real] [--identity] [--downsample]
                                 [--weights brnet.pt] [--runtime torch]

Per lesion of 10 mm or more (``bench/seeded.py``'s lesions): its reference mask, alone on its crop,
refined as a click's lesion is (``clicks.refine_lesion``: two passes, the intensity gate on); printed
are the refined volume over the reference's and the Dice against it, per lesion and per case.
A refiner without bias leaves a right mask nearly as it is. Cases: validation phantoms (seeds
50000+) and the real validation cases (``bench/realct.py``'s cache, LiTS 117).
``--identity`` is the control: a network that returns its own mask channel, so that only the
cutting, resampling and pasting act (a right mask must come back voxel for voxel).
``--downsample`` adds each phantom a second time, 2x mean-downsampled in all three axes as LiTS
117's crop is (``downsampled``), to see whether that blur makes the refiner grow a right mask.
``--weights`` and ``--runtime`` run another network (a candidate has no int8 export: compare it with
the shipped one both in ``--runtime torch``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "LiverTumorRefine")]

from cases import real_cases  # noqa: E402
from seeded import clicks as lesions_over_10mm  # noqa: E402
from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.coarse.clicknet import LesionMask  # noqa: E402
from LiverTumorRefineLib.refine.boxes import lesion_box  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import dice  # noqa: E402
from LiverTumorRefineLib.training.phantom import Case, TUMOUR, make_phantom  # noqa: E402
from LiverTumorRefineLib.volume.geometry import Geometry, Volume  # noqa: E402


class MaskEcho:
    """A stand-in network whose logits are its input's mask channel: only the patch chain acts."""

    name = "echo"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, -1] - 0.5)


def downsampled(case: Case) -> Case:
    """``case`` 2x mean-downsampled in all three axes (odd edges dropped), as LiTS 117's crop is:
    the CT averaged over each 2x2x2 block, a block tumour where at least half of it is."""
    z, y, x = (n - n % 2 for n in case.image.array.shape)

    def blocks(a: np.ndarray) -> np.ndarray:
        return a[:z, :y, :x].astype(np.float32).reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))

    label = np.where(blocks(case.label.array == TUMOUR) >= 0.5, TUMOUR, np.minimum(case.label.array[:z:2, :y:2, :x:2], 1))
    old = case.image.geometry
    geometry = Geometry(tuple(2.0 * s for s in old.spacing), old.origin, old.direction)
    return Case(f"{case.name}_down2", Volume(blocks(case.image.array), geometry),
                Volume(label.astype(np.uint8), geometry))


def refine_truth(case, refiner: Refiner) -> list[tuple[float, float, float]]:
    """(equivalent diameter mm, refined volume / reference volume, Dice) per lesion of ``case``."""
    image, spacing = case.image.array, case.image.spacing_zyx
    labels, _, diameters, ids = lesions_over_10mm(case.label.array == 2, spacing)
    rows = []
    for lab, diameter in zip(ids, diameters):
        truth = labels == lab
        box = lesion_box(truth, [0, 0, 0])
        refined = clickmodel.refine_lesion(refiner, image, spacing, LesionMask(box, truth[box])).paste(truth.shape)
        rows.append((diameter, np.count_nonzero(refined) / np.count_nonzero(truth), dice(refined, truth)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=50000)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--identity", action="store_true", help="the control: a network that echoes its mask channel")
    parser.add_argument("--downsample", action="store_true",
                        help="also each phantom 2x mean-downsampled in all three axes, as LiTS 117's crop is")
    parser.add_argument("--weights", help="refiner weights (default: the shipped ones)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    args = parser.parse_args()
    refiner = Refiner(args.weights, device="cpu", runtime=args.runtime)
    if args.identity:
        refiner.runtime = MaskEcho()
    cases = [lambda s=s: make_phantom(s) for s in range(args.first_seed, args.first_seed + args.phantoms)]
    if args.downsample:
        cases += [lambda s=s: downsampled(make_phantom(s)) for s in range(args.first_seed, args.first_seed + args.phantoms)]
    if not args.no_real:
        cases += [lambda c=c: c for c in real_cases(lits=True)]
    for make in cases:
        case = make()
        rows = refine_truth(case, refiner)
        if not rows:
            continue
        spacing = ", ".join(f"{s:.2f}" for s in case.image.spacing_zyx)
        print(f"{case.name} ({spacing} mm): " + "; ".join(f"{d:.0f} mm x{v:.2f} {dice:.3f}" for d, v, dice in rows))
        v = np.array(rows)
        print(f"{case.name}: {len(rows)} lesions, refined volume / reference {v[:, 1].mean():.3f} (mean), "
              f"Dice {v[:, 2].mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
