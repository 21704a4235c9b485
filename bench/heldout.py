"""Held-out evaluation of refinement models: coarse vs refined per case and per lesion.

    python bench/heldout.py --model mask=LiverTumorRefine/Resources/Models/brnet_default.pt \
        --model nomask=LiverTumorRefine/Resources/Models/brnet_nomask.pt [--phantoms 20] [--lits117] [--csv OUT] \
        [--gate-ablation]

Cases: phantoms with seeds 90000+ (training uses 1000+, validation 50000+) and LiTS case 117,
each with a simulated coarse mask from a fixed seed. Nothing here feeds training or model
selection. Prints per-case Dice, VOE, ASSD, MSSD (coarse -> refined), means, the share of cases
improved, and the worst per-lesion Dice change.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.evaluate.metrics import compute_metrics, dice  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import simulated_cases  # noqa: E402  (bench/cases.py: the held-out cases and their coarse masks)

KEYS = ("dice", "voe", "assd", "mssd")


def lesion_dice(truth: np.ndarray, pred: np.ndarray, spacing_zyx, reach_mm: float = 10.0) -> list[float]:
    """Dice of each truth lesion (connected component) within ``reach_mm`` of it."""
    image = sitk.GetImageFromArray(truth.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                                   useImageSpacing=True))
    scores = []
    for lab in range(1, int(labels.max()) + 1):
        lesion = labels == lab
        idx = np.argwhere(lesion)
        pad = [int(np.ceil(reach_mm / s)) for s in spacing_zyx]
        box = tuple(slice(max(lo - p, 0), hi + p + 1) for lo, hi, p in zip(idx.min(0), idx.max(0), pad))
        region = (distance[box] < reach_mm) & ((labels[box] == 0) | lesion[box])
        t, p = lesion[box] & region, pred[box] & region
        scores.append(dice(t, p))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH (repeatable)")
    parser.add_argument("--phantoms", type=int, default=20)
    parser.add_argument("--lits117", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--csv", help="write per-case rows here")
    parser.add_argument("--gate-ablation", action="store_true",
                        help="also run each model without the intensity gate (NAME/no-gate), side by side")
    args = parser.parse_args()
    models = {}
    for name, path in (m.split("=", 1) for m in args.model):
        models[name] = Refiner(path, device=args.device)
        if args.gate_ablation:
            models[f"{name}/no-gate"] = Refiner(path, device=args.device, intensity_gate=False)
    rows = []
    for case, seed, truth, coarse in simulated_cases(args.phantoms, args.lits117):
        spacing = case.image.spacing_zyx
        base = compute_metrics(truth, coarse, spacing)
        base_lesions = lesion_dice(truth, coarse, spacing)
        for name, refiner in models.items():
            t = time.perf_counter()
            refined = refiner.refine(case.image.array, coarse, spacing).mask
            seconds = time.perf_counter() - t
            after = compute_metrics(truth, refined, spacing)
            deltas = np.array(lesion_dice(truth, refined, spacing)) - np.array(base_lesions)
            row = {"case": case.name, "model": name, "real": seed == 117, "lesions": len(deltas), "seconds": seconds,
                   "worst_lesion_delta": float(deltas.min()) if len(deltas) else 0.0,
                   "lesions_worse": int((deltas < -0.05).sum()), "lesions_better": int((deltas > 0.05).sum())}
            row.update({f"coarse_{k}": base[k] for k in KEYS})
            row.update({f"refined_{k}": after[k] for k in KEYS})
            rows.append(row)
            print(f"{case.name:>14} {name:>8}: Dice {base['dice']:.3f} -> {after['dice']:.3f}  VOE {base['voe']:.3f} -> "
                  f"{after['voe']:.3f}  ASSD {base['assd']:.2f} -> {after['assd']:.2f}  MSSD {base['mssd']:.1f} -> "
                  f"{after['mssd']:.1f}  worst lesion {row['worst_lesion_delta']:+.3f}  {seconds:.1f}s", flush=True)
    print()
    for name in models:
        for real in (False, True):
            sel = [r for r in rows if r["model"] == name and r["real"] == real]
            if not sel:
                continue
            mean = {k: (np.mean([r[f"coarse_{k}"] for r in sel]), np.mean([r[f"refined_{k}"] for r in sel])) for k in KEYS}
            better = np.mean([r["refined_dice"] > r["coarse_dice"] for r in sel])
            worst = min(r["worst_lesion_delta"] for r in sel)
            lesions = sum(r["lesions"] for r in sel)
            worse, improved = sum(r["lesions_worse"] for r in sel), sum(r["lesions_better"] for r in sel)
            label = "LiTS 117" if real else f"{len(sel)} phantoms"
            print(f"{name:>8} on {label}: " + "  ".join(f"{k} {a:.3f}->{b:.3f}" for k, (a, b) in mean.items())
                  + f"  gain {mean['dice'][1] - mean['dice'][0]:+.3f}  improved {better:.0%}  worst lesion {worst:+.3f}"
                  f"  lesions better/worse by >0.05: {improved}/{worse} of {lesions}")
    if args.csv:
        tmp = Path(args.csv).with_name(Path(args.csv).name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(args.csv)


if __name__ == "__main__":
    main()
