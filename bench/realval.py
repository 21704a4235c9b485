"""Real-CT validation: the refiner against the coarse mask and Slicer's fixed smoothings, per case
and per lesion, on the real validation cases.

    python bench/realval.py --model new=runs/x/model.pt [--model old=...] \
        [--setting plain:tta=1,agreement=0,min_kept=0 --setting gated:tta=4,agreement=0.75,min_kept=0.5] \
        [--variants 3] [--phantoms 6 --phantom-seed 50000] [--no-real] [--csv OUT]

Cases: ``realct_1720`` and ``realct_mip10`` (rebuilt by ``bench/realct.py`` into its cache) and
LiTS 117; optionally phantoms (validation seeds 50000+ for choices, held-out 90000+ for reporting).
Their coarse masks come from ``cases.independent_coarse``, **not** from the training simulator
(``coarse.simulate_coarse``), so the network is not judged on the errors it was trained on:
per lesion a boundary bias of -2.5..+2.5 mm (as often over- as under-segmented), a smooth wander
of 0.5-2 mm, and on slices of 2.5 mm or more an independent per-slice offset. ``--variants``
coarse masks per case (seeds 0..V-1), reported as their mean.

Lesions are truth components; "large" ones (longest axial extent >= 10 mm) are the ones the
issue's do-no-harm target counts. Lesion Dice is measured within 10 mm of each lesion.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import compute_metrics  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402

from cases import independent_coarse, real_cases  # noqa: E402
from compare import closing_2mm, median_3mm, opening_2mm  # noqa: E402
from heldout import lesion_dice  # noqa: E402

SMOOTHINGS = {"median-3mm": median_3mm, "opening-2mm": opening_2mm, "closing-2mm": closing_2mm}
LARGE_MM = 10.0


def large_lesions(truth: np.ndarray, spacing_zyx: Sequence[float]) -> list[bool]:
    """Per truth component (the order of ``lesion_dice``): longest axial extent >= 10 mm."""
    labels = component_labels(truth)
    flags = []
    for k in range(1, int(labels.max()) + 1):
        idx = np.argwhere(labels == k)
        extent = (idx[:, 1:].max(0) - idx[:, 1:].min(0) + 1) * np.asarray(spacing_zyx[1:])
        flags.append(float(extent.max()) >= LARGE_MM)
    return flags


def parse_setting(spec: str) -> tuple[str, dict]:
    """NAME:key=value,... -> (NAME, Refiner options); ``normalise=none`` (an ablation) turns the
    model's parenchyma normalisation off at inference, ``passes=2`` refines the refined mask again, and
    ``intensity_gate=1`` turns the intensity gate on."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        if key in ("tta", "passes"):
            options[key] = int(value)
        elif key == "intensity_gate":
            options[key] = bool(int(value))
        else:
            options[key] = value if key in ("shrink", "normalise", "runtime") else float(value)
    return name, options


def make_refiner(path: str, device: str, options: dict) -> tuple[Refiner, int]:
    """A Refiner with ``options`` and how many passes it makes; ``normalise`` replaces the model's
    own setting."""
    options = dict(options)
    normalise = options.pop("normalise", None)
    passes = options.pop("passes", 1)
    refiner = Refiner(path, device=device, **options)
    if normalise is not None:
        refiner.cfg = replace(refiner.cfg, normalise=normalise)
    return refiner, passes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--setting", action="append", help="NAME:tta=4,agreement=0.75,min_kept=0.5 (repeatable; "
                                                           "default: the Refiner's defaults)")
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--phantoms", type=int, default=0)
    parser.add_argument("--phantom-seed", type=int, default=50_000)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-lits", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--csv")
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.setting] if args.setting else [("default", {})]
    methods = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        for setting, options in settings:
            methods[f"{name}/{setting}"] = make_refiner(path, args.device, options)
    cases: list = [] if args.no_real else list(real_cases(not args.no_lits))
    cases += [make_phantom(args.phantom_seed + i) for i in range(args.phantoms)]
    if not cases:
        parser.error("no cases: --no-real leaves only --phantoms N (N > 0)")
    rows = []
    for case in cases:
        truth = case.label.array == 2
        if not truth.any():
            continue
        spacing = case.image.spacing_zyx
        large = np.array(large_lesions(truth, spacing))
        for v in range(args.variants):
            coarse = independent_coarse(truth, spacing, v)
            base = compute_metrics(truth, coarse, spacing)
            base_lesions = np.array(lesion_dice(truth, coarse, spacing))
            outputs = {name: (fn(case.image.array, coarse, spacing), 0.0, {}) for name, fn in SMOOTHINGS.items()}
            for name, (refiner, passes) in methods.items():
                t = time.perf_counter()
                result = refiner.refine(case.image.array, coarse, spacing, passes=passes)
                outputs[name] = (result.mask, time.perf_counter() - t, result.stats)
            for name, (pred, seconds, stats) in outputs.items():
                after = compute_metrics(truth, pred, spacing)
                delta = np.array(lesion_dice(truth, pred, spacing)) - base_lesions
                kept = sum(d["decision"] != "refined" for d in stats.get("lesions", []))
                rows.append({"case": case.name, "variant": v, "method": name, "coarse_dice": base["dice"],
                             "dice": after["dice"], "gain": after["dice"] - base["dice"], "coarse_assd": base["assd"],
                             "assd": after["assd"], "worst_large_lesion": float(delta[large].min()) if large.any() else 0.0,
                             "large_worse_002": int((delta[large] < -0.02).sum()), "large_lesions": int(large.sum()),
                             "kept_coarse": kept, "seconds": seconds, "parenchyma": stats.get("parenchyma_hu")})
            print(f"{case.name} v{v}: coarse {base['dice']:.3f} | " + "  ".join(
                f"{r['method']} {r['gain']:+.3f}" for r in rows if r["case"] == case.name and r["variant"] == v), flush=True)
    report(rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


def report(rows: list[dict]) -> None:
    """Per case (mean over variants) and per method: gain, ASSD, worst large lesion; then means."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(dict.fromkeys(r["case"] for r in rows))
    print(f"\n{'case':>16} {'method':>22} {'coarse':>7} {'dice':>7} {'gain':>7} {'ASSD':>13} {'worst L':>8} {'L<-.02':>7} {'kept':>5}")
    summary = {m: [] for m in methods}
    for case in names:
        for m in methods:
            sel = [r for r in rows if r["case"] == case and r["method"] == m]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("coarse_dice", "dice", "gain", "coarse_assd", "assd")}
            worst = min(r["worst_large_lesion"] for r in sel)
            worse = sum(r["large_worse_002"] for r in sel)
            kept = sum(r["kept_coarse"] for r in sel)
            summary[m].append((mean["gain"], mean["assd"] < mean["coarse_assd"], worst, worse))
            print(f"{case:>16} {m:>22} {mean['coarse_dice']:7.3f} {mean['dice']:7.3f} {mean['gain']:+7.3f} "
                  f"{mean['coarse_assd']:5.2f}->{mean['assd']:5.2f} {worst:+8.3f} {worse:7d} {kept:5d}")
    print(f"\n{'method':>22} {'mean gain':>9} {'min case':>8} {'ASSD down':>9} {'worst L':>8} {'L<-.02':>7}")
    for m in methods:
        gains = [s[0] for s in summary[m]]
        print(f"{m:>22} {np.mean(gains):+9.4f} {min(gains):+8.4f} {sum(s[1] for s in summary[m]):>5}/{len(gains):<3} "
              f"{min(s[2] for s in summary[m]):+8.3f} {sum(s[3] for s in summary[m]):7d}")


if __name__ == "__main__":
    sys.exit(main())
