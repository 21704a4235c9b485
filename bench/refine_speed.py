"""Refinement speed: seconds per stage and patches/s on a 512x512x120 CT with several tumours.

    python bench/refine_speed.py [--tumours 5] [--size 512 512 120] [--device cpu] [--repeats 3]

Prints figures; asserts nothing (timings belong in benchmarks, not tests). Uses the shipped
model when present, else an untrained BRNet of the same architecture (same cost).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.config import PatchConfig  # noqa: E402
from LiverTumorRefineLib.network import build_model  # noqa: E402
from LiverTumorRefineLib.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.weights import default_weights_path  # noqa: E402


def synthetic_case(size_xyz: tuple[int, int, int], n_tumours: int, spacing_zyx=(2.5, 0.75, 0.75), seed: int = 0):
    """CT-like noise volume with ``n_tumours`` lobulated lesions of 15-50 mm and a coarse mask
    that is each lesion grown or shrunk by 2 mm."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    image = rng.normal(100, 15, (nz, ny, nx)).astype(np.float32)
    coarse = np.zeros((nz, ny, nx), bool)
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    for _ in range(n_tumours):
        d = rng.uniform(15, 50)
        c = [rng.uniform(d, n * s - d) for n, s in zip((nz, ny, nx), spacing_zyx)]
        r = np.sqrt(((zz * spacing_zyx[0] - c[0]) ** 2) + ((yy * spacing_zyx[1] - c[1]) ** 2) + ((xx * spacing_zyx[2] - c[2]) ** 2))
        inside = r < d / 2
        image[inside] -= 40
        coarse |= r < d / 2 + rng.choice([-2.0, 2.0])
    return image, coarse, spacing_zyx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 120), metavar=("X", "Y", "Z"))
    parser.add_argument("--tumours", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = default_weights_path()
    model = weights if weights.is_file() else build_model(PatchConfig())
    refiner = Refiner(model, device=args.device, batch_size=args.batch_size)
    image, coarse, spacing = synthetic_case(tuple(args.size), args.tumours)
    print(f"case {tuple(args.size)} (x,y,z), {args.tumours} tumours, spacing zyx {spacing}; device {refiner.device}, "
          f"torch threads {torch.get_num_threads()}, model {'shipped' if weights.is_file() else 'untrained (same cost)'}")
    refiner.refine(image, coarse, spacing)  # warm-up
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        stats = refiner.refine(image, coarse, spacing).stats
        stats["wall"] = time.perf_counter() - t
        runs.append(stats)
    best = min(runs, key=lambda s: s["wall"])
    stages = "  ".join(f"{k} {v:.3f}s" for k, v in best["seconds"].items())
    print(f"patches {best['patches']}  crop {best['crop_shape']}")
    print(f"best of {args.repeats}: wall {best['wall']:.3f}s  ({stages})")
    print(f"patches/s {best['patches'] / best['wall']:.0f} overall, {best['patches'] / max(best['seconds']['infer'], 1e-9):.0f} in inference")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
