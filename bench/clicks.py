"""Click-to-lesion: the ray grower, the learned click model and the hybrid of both, one click per
lesion and up to three corrective clicks.

    python bench/clicks.py [--phantoms 6] [--first-seed 90000] [--no-real] [--no-lits] [--clicks 4]
                           [--weights clicknet.pt] [--methods model,hybrid]
                           [--refiner brnet.pt --refiner-runtime torch]

Per lesion of 10 mm or more (equivalent sphere): click 1 at its deepest point (farthest from its
surface); each further click at the deepest point of the largest error region of the refined
result the user sees (positive on a missed part, negative on a leak), within the result's box and
the whole truth lesion's box together (so a missed part beyond the first click's crop is clicked too).
Each method and the shipped refiner re-run on that lesion's crop only: "model" is the click
model alone, "hybrid" the ray grower's lesion corrected near each click with the model
(``clicks.hybrid_lesion``), "separate" an earlier Slicer module's grouping (each positive click a
lesion of its own, see ``separate_click_lesion``), "unguarded" the hybrid's coarse lesion refined
without the hybrid's guards on the refined outline (``unguarded_click_lesion``). Lesion Dice is against that lesion alone (a
neighbour it takes counts against it). The ray grower (``seeded``) alone gets click 1 only. Cases: held-out phantoms
(seeds 90000+; the hybrid's constants were chosen on seeds 95000+ with --first-seed 95000 and
the --correction-radius, --growth-limit, --refine-reach, --first-click-switch, --first-click-min-mm,
--correction-scale, --growth-floor, --rim-min-hu, --no-intensity-guard, --click-trust-mm, --first-tta and --later-tta options) and
the real validation cases (``realct_1720``, ``realct_mip10`` from bench/realct.py's cache, LiTS
117). Timing: click 1 and a corrective click on each 512x512 CT with the models loaded, and the
first click including both models' loading. Merges: a lesion's result covering more than 10% of
another lesion; leaks: result voxels outside every lesion outnumbering the lesion's own voxels.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.coarse import clicks as clickmodel  # noqa: E402
from LiverTumorRefineLib.coarse import clicknet  # noqa: E402
from LiverTumorRefineLib.coarse import seeded  # noqa: E402
from LiverTumorRefineLib.coarse.seeded import nearest_seed_labels, seed_labels  # noqa: E402
from LiverTumorRefineLib.config import INTENSITY_GATE, SEEDED_REFINEMENT, Passes  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import dice  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402

from seeded import clicks as deepest_clicks  # noqa: E402

MERGE_SHARE = 0.10


def lesion_dice(truth: np.ndarray, result: clicknet.LesionMask) -> float:
    """Dice of a lesion result (on its box) against the whole-volume truth lesion."""
    inside = truth[result.box]
    total = float(truth.sum() + result.mask.sum())
    return 2.0 * float((inside & result.mask).sum()) / total if total else 1.0


def problems(labels: np.ndarray, own: int, result: clicknet.LesionMask) -> tuple[bool, bool]:
    """(merged, leaked): the result covers > 10% of another lesion; more voxels outside every
    lesion than the lesion has."""
    local = labels[result.box]
    merged = False
    for other in np.unique(local[result.mask]):
        if other not in (0, own):
            merged |= float((result.mask & (local == other)).sum()) > MERGE_SHARE * float((labels == other).sum())
    leak = float((result.mask & (local == 0)).sum())
    return merged, leak > float((labels == own).sum())


def separate_click_lesion(segmenter, refiner, image, spacing, lesion, others):
    """The Slicer module's grouping ("separate"): each positive click is a lesion of its own, grown
    by the hybrid with every other click as a neighbour, and the lesion is the union of its clicks'
    lesions, refined on its crop. (The module then refines the whole CT at once; here the crop.)"""
    own = [clickmodel.LesionClicks((p,), lesion.negative) for p in lesion.positive]
    label_map = clickmodel.lesion_labels(segmenter, image, spacing, own + list(others), method="hybrid")
    mine = (label_map > 0) & (label_map <= len(own))
    where = np.argwhere(mine)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(axis=0), where.max(axis=0)))
    coarse = clicknet.LesionMask(box, mine[box])
    return coarse, clickmodel.refine_lesion(refiner, image, spacing, coarse)


def unguarded_click_lesion(segmenter, refiner, image, spacing, lesion, others):
    """``refine --seeds`` and the Slicer module before they applied the hybrid's guards to their
    refinement ("unguarded"): the hybrid's coarse lesion refined without the guards on the refined
    outline (``REFINE_REACH_MM``, the lesion's cell, leak removal at negative clicks). (They refine
    the whole CT at once; here the crop.)"""
    coarse, _ = clickmodel.hybrid_lesion(segmenter, image, spacing, lesion, others)
    return coarse, clickmodel.refine_lesion(refiner, image, spacing, coarse)


def lesion_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a (non-empty) mask."""
    where = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(axis=0), where.max(axis=0)))


def user_click(truth: np.ndarray, truth_box: Sequence[slice], refined: clicknet.LesionMask,
               spacing: Sequence[float]) -> tuple[tuple[int, ...], bool] | None:
    """Where the simulated user corrects ``refined`` next (``clicks.corrective_click``: CT voxel and
    sign, True for a missed part; None when nothing is left), looking at the result's box and the
    whole truth lesion's box (``truth_box``) together: a user sees the whole lesion, not only the
    crop the result lies on."""
    seen = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(refined.box, truth_box))
    found = clickmodel.corrective_click(truth[seen], refined.paste(truth.shape)[seen], spacing)
    if found is None:
        return None
    return tuple(v + b.start for v, b in zip(found[0], seen)), found[1]


def click_series(segmenter, refiner, image, spacing, truth, labels, lab, lesion, others, n_clicks: int,
                 method: str) -> tuple[list[float], list[float], list[tuple[bool, bool]]]:
    """Lesion Dice (coarse, refined) and (merged, leaked) after each of ``n_clicks`` clicks by ``method``."""
    coarse_d, refined_d, flags = [], [], []
    current = lesion
    truth_box = lesion_box(truth)
    for k in range(n_clicks):
        if method == "separate":
            coarse, refined = separate_click_lesion(segmenter, refiner, image, spacing, current, others)
        elif method == "unguarded":
            coarse, refined = unguarded_click_lesion(segmenter, refiner, image, spacing, current, others)
        else:
            coarse, refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, current, others,
                                                      method=method)
        coarse_d.append(lesion_dice(truth, coarse))
        refined_d.append(lesion_dice(truth, refined))
        flags.append(problems(labels, int(lab), refined))
        found = user_click(truth, truth_box, refined, spacing)
        if found is None:  # nothing left to correct: later clicks change nothing
            coarse_d += [coarse_d[-1]] * (n_clicks - k - 1)
            refined_d += [refined_d[-1]] * (n_clicks - k - 1)
            flags += [flags[-1]] * (n_clicks - k - 1)
            break
        current = current.with_click(*found)
    return coarse_d, refined_d, flags


def run_case(case, segmenter: clicknet.ClickSegmenter, refiner: Refiner, n_clicks: int, methods: Sequence[str],
             out: dict) -> None:
    image, spacing = case.image.array, case.image.spacing_zyx
    truth_all = case.label.array == 2
    labels, seeds, diameters, ids = deepest_clicks(truth_all, spacing)
    if not seeds:
        print(f"{case.name}: no lesion of 10 mm or more", flush=True)
        return
    kind = "phantom" if case.name.startswith("phantom") else "real"
    lesions = [clickmodel.LesionClicks((tuple(float(v) for v in s),)) for s in seeds]
    grown = seed_labels(image, seeds, spacing)
    grown_refined = refiner.refine_seeded(image, grown > 0, spacing).mask  # as refine --seeds does
    cells = nearest_seed_labels(truth_all.shape, seeds, spacing)
    case_rows = []
    for i, (lab, diameter) in enumerate(zip(ids, diameters)):
        truth = labels == lab
        ray = dice(truth, grown == i + 1)
        ray_ref_mask = grown_refined & (cells == i + 1)
        ray_ref = dice(truth, ray_ref_mask)
        line, row = f"{case.name:>14} lesion {lab:2d} {diameter:5.1f} mm | ray {ray:.3f} -> {ray_ref:.3f}", [ray, ray_ref]
        for method in methods:
            coarse_d, refined_d, flags = click_series(segmenter, refiner, image, spacing, truth, labels, lab,
                                                      lesions[i], lesions[:i] + lesions[i + 1:], n_clicks, method)
            merged, leaked = any(f[0] for f in flags), any(f[1] for f in flags)
            line += (f" | {method} coarse " + " ".join(f"{d:.3f}" for d in coarse_d) + " refined "
                     + " ".join(f"{d:.3f}" for d in refined_d) + (" MERGED" if merged else "") + (" LEAK" if leaked else ""))
            row += [*coarse_d, *refined_d, merged, leaked]
        print(line, flush=True)
        case_rows.append(row)
        out[kind].append(row)
    print(f"{case.name:>14} mean of {len(case_rows)}: " + describe(np.array(case_rows, dtype=float), n_clicks, methods),
          flush=True)


def describe(v: np.ndarray, n: int, methods: Sequence[str]) -> str:
    """Mean figures of rows (ray, ray refined, then per method n coarse, n refined, merged, leaked)."""
    text = f"ray grower click 1: coarse {v[:, 0].mean():.3f} refined {v[:, 1].mean():.3f}"
    for m, method in enumerate(methods):
        at = 2 + m * (2 * n + 2)
        text += (f" | {method} coarse after clicks 1..{n}: " + " ".join(f"{d:.3f}" for d in v[:, at:at + n].mean(0))
                 + " refined: " + " ".join(f"{d:.3f}" for d in v[:, at + n:at + 2 * n].mean(0))
                 + f" merges {int(v[:, at + 2 * n].sum())} leaks {int(v[:, at + 2 * n + 1].sum())}")
    return text


def first_lesion(case) -> tuple[clickmodel.LesionClicks, np.ndarray]:
    """The case's first lesion of 10 mm or more (``deepest_clicks`` order): one click at its deepest
    point, and its truth mask."""
    labels, seeds, _, ids = deepest_clicks(case.label.array == 2, case.image.spacing_zyx)
    return clickmodel.LesionClicks((tuple(float(v) for v in seeds[0]),)), labels == ids[0]


def with_correction(lesion: clickmodel.LesionClicks, refined: clicknet.LesionMask, truth: np.ndarray,
                    spacing: Sequence[float]) -> clickmodel.LesionClicks:
    """``lesion``'s clicks and the correction of ``refined`` on its box (``clicks.corrective_click``);
    ``lesion`` itself when nothing is left to correct."""
    found = clickmodel.corrective_click(truth[refined.box], refined.mask, spacing)
    return lesion if found is None else lesion.with_click(
        tuple(v + b.start for v, b in zip(found[0], refined.box)), found[1])


def speed_threads(description: str, default: int, note: str = "torch threads") -> None:
    """The speed scripts' one option: ``--threads`` (default ``default``), parsed from the command
    line (``description`` is the script's help) and given to torch."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=default, help=note)
    torch.set_num_threads(parser.parse_args().threads)


def user_round(segmenter: clicknet.ClickSegmenter, refiner: Refiner, image: np.ndarray, spacing: Sequence[float],
               first: clickmodel.LesionClicks, second: clickmodel.LesionClicks, method: str = "hybrid"
               ) -> dict[str, tuple[float, clicknet.LesionMask]]:
    """Click 1 (``first``) and its correction (``second``) as a user meets them: click 1 computes
    afresh (``clicks.GROWN`` and the segmenter's ``seen`` cleared), the correction reuses what click 1
    kept. Per step ("click 1", "correction"): its seconds and refined lesion."""
    clickmodel.GROWN.clear()
    segmenter.seen.clear()
    out = {}
    for step, lesion in (("click 1", first), ("correction", second)):
        t = time.perf_counter()
        refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, lesion, method=method)[1]
        out[step] = (time.perf_counter() - t, refined)
    return out


def real_corrections(segmenter: clicknet.ClickSegmenter, refiner: Refiner):
    """Per real validation case (``bench/realct.py``'s cache): the case, its first lesion's click 1
    (``first_lesion``) and click 1 with the correction of its result (``with_correction``), for the
    speed scripts that run both side by side."""
    from realct import load_cases

    for case in load_cases():
        image, spacing = case.image.array, case.image.spacing_zyx
        first, truth = first_lesion(case)
        refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, first)[1]
        yield case, first, with_correction(first, refined, truth, spacing)


def timing(case, weights: str | None, methods: Sequence[str]) -> None:
    """Seconds of click 1 and of a corrective click 2 (each on the lesion's crop, models loaded), and
    of the first click including loading both models, per method."""
    image, spacing = case.image.array, case.image.spacing_zyx
    lesion, truth = first_lesion(case)
    for method in methods:
        clickmodel.GROWN.clear()  # the cases above ran this lesion's click 1 already
        t = time.perf_counter()
        segmenter, refiner = clicknet.ClickSegmenter(weights), Refiner(device="cpu")
        _, refined = clickmodel.click_lesion(segmenter, refiner, image, spacing, lesion, method=method)
        cold = time.perf_counter() - t
        second = with_correction(lesion, refined, truth, spacing)
        rounds = [user_round(segmenter, refiner, image, spacing, lesion, second, method) for _ in range(3)]
        best = {step: min(r[step][0] for r in rounds) for step in ("click 1", "correction")}
        print(f"timing {method} on {case.name} {image.shape}: first click with model loading {cold:.2f} s; models "
              f"loaded: click 1 {best['click 1']:.2f} s, corrective click 2 {best['correction']:.2f} s (best of 3, "
              f"{torch.get_num_threads()} threads)", flush=True)


def summary(out: dict, n_clicks: int, methods: Sequence[str]) -> None:
    for kind, rows in out.items():
        if rows:
            print(f"{kind}: {len(rows)} lesions | " + describe(np.array(rows, dtype=float), n_clicks, methods), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=90000)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-lits", action="store_true")
    parser.add_argument("--clicks", type=int, default=4)
    parser.add_argument("--weights", help="click model (default: the shipped one)")
    parser.add_argument("--methods", default="model,hybrid",
                        help="click methods to compare: model, hybrid, separate (an earlier Slicer module's grouping: "
                             "each positive click a lesion of its own) and unguarded (the hybrid's coarse lesion refined "
                             "without its guards on the refined outline, as refine --seeds and the module did)")
    parser.add_argument("--correction-radius", type=float, default=clickmodel.CORRECTION_RADIUS_MM,
                        help="hybrid: mm a correction reaches (tuned on phantoms 95000+ only)")
    parser.add_argument("--correction-scale", type=float, default=clickmodel.CORRECTION_SCALE,
                        help="hybrid: a correction reaches this times the lesion's sphere radius when over the radius")
    parser.add_argument("--growth-floor", type=int, choices=(0, 1), default=int(clickmodel.GROWTH_FLOOR),
                        help="hybrid: 1: corrections may always add a ball of their reach to the first-click lesion")
    parser.add_argument("--growth-limit", type=float, default=clickmodel.GROWTH_LIMIT,
                        help="hybrid: largest lesion volume, times its first-click volume")
    parser.add_argument("--refine-reach", type=float, default=clickmodel.REFINE_REACH_MM,
                        help="hybrid: mm the refiner may move the outline out of the coarse mask")
    parser.add_argument("--no-intensity-guard", action="store_true", help="hybrid: corrections add any model voxel")
    parser.add_argument("--click-trust-mm", type=float, default=clickmodel.CLICK_TRUST_MM,
                        help="hybrid: a positive correction adds the model's lesion this near its click without "
                             "the intensity guard (0: off)")
    parser.add_argument("--first-click-switch", type=float, default=clickmodel.FIRST_CLICK_SWITCH,
                        help="hybrid: click 1 takes the model's lesion when the grower's is this many times larger")
    parser.add_argument("--first-click-min-mm", type=float, default=clickmodel.FIRST_CLICK_MIN_MM,
                        help="hybrid: the switch needs the model's lesion to be at least this sphere diameter")
    parser.add_argument("--first-click-model", choices=clickmodel.FIRST_CLICK_MODELS, default=clickmodel.FIRST_CLICK_MODEL,
                        help="hybrid: what click 1 takes from the click model besides the grower's lesion")
    parser.add_argument("--first-click-reach", choices=clickmodel.FIRST_CLICK_REACHES, default=clickmodel.FIRST_CLICK_REACH,
                        help="hybrid: the first click's addition reaches as far as the grower's lesion is large, or "
                             "the larger of it and the model's one-click lesion")
    parser.add_argument("--rim-min-hu", type=float, default=seeded.DEFAULT.rim_min_hu,
                        help="ray grower: smallest rim overshoot (HU) that moves the edge out to the rim; 0: never")
    parser.add_argument("--first-tta", type=int, default=SEEDED_REFINEMENT.first_tta,
                        help="orientations of a click's first refinement pass (config.SEEDED_FIRST_TTA; 4 until stop 29)")
    parser.add_argument("--later-tta", type=int, default=SEEDED_REFINEMENT.later_tta,
                        help="orientations of a click's second refinement pass (config.SEEDED_LATER_TTA)")
    parser.add_argument("--intensity-gate", type=int, choices=(0, 1), default=int(INTENSITY_GATE),
                        help="0: the refiner without its intensity gate (config.INTENSITY_GATE), as click-made masks "
                             "were refined until this release")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--refiner", help="boundary refiner weights (default: the shipped ones)")
    parser.add_argument("--refiner-runtime", default="auto", choices=["auto", "torch", "onnx"],
                        help="the refiner's runtime (a candidate has no int8 export: compare in torch)")
    args = parser.parse_args(argv)
    seeded.DEFAULT = dataclasses.replace(seeded.DEFAULT, rim_min_hu=args.rim_min_hu)
    clickmodel.CORRECTION_RADIUS_MM = args.correction_radius
    clickmodel.GROWTH_LIMIT = args.growth_limit
    clickmodel.CORRECTION_SCALE = args.correction_scale
    clickmodel.GROWTH_FLOOR = bool(args.growth_floor)
    clickmodel.REFINE_REACH_MM = args.refine_reach
    clickmodel.INTENSITY_GUARD = not args.no_intensity_guard
    clickmodel.CLICK_TRUST_MM = args.click_trust_mm
    clickmodel.FIRST_CLICK_SWITCH = args.first_click_switch
    clickmodel.FIRST_CLICK_MIN_MM = args.first_click_min_mm
    clickmodel.FIRST_CLICK_MODEL = args.first_click_model
    clickmodel.FIRST_CLICK_REACH = args.first_click_reach
    if args.threads:
        torch.set_num_threads(args.threads)
    segmenter = clicknet.ClickSegmenter(args.weights)
    # every click-made mask is refined as refine --seeds does (SEEDED_*)
    seeded_passes = Passes(SEEDED_REFINEMENT.count, args.first_tta, args.later_tta)
    refiner = Refiner(args.refiner, device="cpu", runtime=args.refiner_runtime, intensity_gate=bool(args.intensity_gate),
                      seeded=seeded_passes)
    methods = [m for m in args.methods.split(",") if m]
    out: dict = {"phantom": [], "real": []}
    for i in range(args.phantoms):
        run_case(make_phantom(args.first_seed + i), segmenter, refiner, args.clicks, methods, out)
    real = []
    if not args.no_real:
        from cases import real_cases

        try:
            real = list(real_cases(lits=not args.no_lits))
        except Exception as exc:  # the real cases' cache is not built, or LiTS 117 is not available
            print(f"real cases unavailable: {exc}", flush=True)
        for case in real:
            run_case(case, segmenter, refiner, args.clicks, methods, out)
    summary(out, args.clicks, methods)
    for case in real:
        if case.image.array.shape[1:] == (512, 512):
            timing(case, args.weights, [m for m in methods if m in ("model", "hybrid")])


if __name__ == "__main__":
    main()
