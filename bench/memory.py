"""Peak memory and time of refining a huge CT on the CPU.

    python bench/memory.py [--size 1024 1024 1000] [--lesions 2] [--spread far|near] [--batch-size 128]

Builds an int16 CT in memory (no file: reading and writing are not measured) with small
spherical lesions and a coarse mask that is each lesion grown by 2 mm, then refines it with the
engine's Refiner on the CPU using an untrained BRNet (PatchConfig(), base_channels=4: the same
data flow as the real model, cheaper convolutions). Prints the resident memory before refining,
the peak (VmHWM), wall seconds and CPU seconds (the latter is what to compare when other
work shares the machine). Asserts nothing.

``--spread far`` spreads the lesions along the volume's diagonal (one bounding box around them all
would span most of the volume; the Refiner crops one box per lesion cluster instead); ``near``
keeps them 60 mm apart.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.config import NetConfig, PatchConfig  # noqa: E402
from LiverTumorRefineLib.refine.network import build_model  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from rss import peak_rss_mb, rss_mb  # noqa: E402  (bench/rss.py)

SPACING_ZYX = (1.0, 0.7, 0.7)


def lesion_centres(shape_zyx: tuple[int, int, int], n: int, spread: str) -> list[np.ndarray]:
    extent = np.array(shape_zyx) * np.array(SPACING_ZYX)
    if spread == "far":
        fractions = np.linspace(0.2, 0.8, n) if n > 1 else np.array([0.5])
        return [extent * f for f in fractions]
    centre = extent / 2
    return [centre + np.array([0.0, 0.0, 60.0 * (i - (n - 1) / 2)]) for i in range(n)]


def build_case(size_xyz: tuple[int, int, int], n_lesions: int, spread: str, radius_mm: float = 10.0, seed: int = 0):
    """int16 CT (liver-like 60 HU, lesions 20 HU with noise) and a bool coarse mask, drawn box by
    box so that no full-volume temporary is made."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    image = np.full((nz, ny, nx), 60, np.int16)
    coarse = np.zeros((nz, ny, nx), bool)
    reach = radius_mm + 6.0
    for c in lesion_centres((nz, ny, nx), n_lesions, spread):
        lo = [max(int((c[a] - reach) / SPACING_ZYX[a]), 0) for a in range(3)]
        hi = [min(int((c[a] + reach) / SPACING_ZYX[a]) + 1, (nz, ny, nx)[a]) for a in range(3)]
        box = tuple(slice(lo[a], hi[a]) for a in range(3))
        zz, yy, xx = np.ogrid[box]
        r = np.sqrt((zz * SPACING_ZYX[0] - c[0]) ** 2 + (yy * SPACING_ZYX[1] - c[1]) ** 2 + (xx * SPACING_ZYX[2] - c[2]) ** 2)
        noise = rng.normal(0, 12, r.shape).astype(np.float32)
        image[box] = np.where(r < radius_mm, 20, 60) + noise
        coarse[box] |= r < radius_mm + 2.0
    return image, coarse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(1024, 1024, 1000), metavar=("X", "Y", "Z"))
    parser.add_argument("--lesions", type=int, default=2)
    parser.add_argument("--spread", choices=["far", "near"], default="far")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    refiner = Refiner(build_model(PatchConfig(), NetConfig(base_channels=4)), device="cpu", batch_size=args.batch_size)
    t = time.perf_counter()
    image, coarse = build_case(tuple(args.size), args.lesions, args.spread)
    build_s = time.perf_counter() - t
    inputs_mb = (image.nbytes + coarse.nbytes) / 2**20
    before, peak_before = rss_mb(), peak_rss_mb()
    print(f"CT {tuple(args.size)} (x,y,z) int16 + bool mask = {inputs_mb:.0f} MB, built in {build_s:.1f} s; "
          f"{args.lesions} lesions ({args.spread}), spacing zyx {SPACING_ZYX}; torch threads {torch.get_num_threads()}")
    print(f"RSS before refine {before:.0f} MB (peak so far {peak_before:.0f} MB)")
    t, cpu = time.perf_counter(), time.process_time()
    result = refiner.refine(image, coarse, SPACING_ZYX)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = peak_rss_mb()
    s = result.stats
    print(f"refine {seconds:.1f} s wall, {cpu:.1f} s CPU (all threads): {s['patches']} patches, crops {s['crop_shapes']} (z,y,x), "
          f"{s['voxels_changed']} voxels changed")
    print(f"peak RSS {peak:.0f} MB = RSS before + {peak - before:.0f} MB "
          f"({(peak - before) / inputs_mb:.2f} x the inputs)")


if __name__ == "__main__":
    main()
