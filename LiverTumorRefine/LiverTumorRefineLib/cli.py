"""The ``livertumorrefine`` command line.

User errors (RefineError) print one line on stderr and exit 2; Ctrl-C exits 130 with no file
half-written (outputs are renamed into place only when complete; files already complete, such
as a training checkpoint or finished phantoms, stay).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from LiverTumorRefineLib.config import (INTENSITY_GATE, MIN_KEPT, SEEDED_FIRST_TTA, SEEDED_LATER_TTA, SEEDED_PASSES,
                                        TTA)
from LiverTumorRefineLib.errors import RefineError

PROG = "livertumorrefine"
BATCH_FAILED = 3  # refine --batch: the batch ran to the end but some cases failed (see its summary)


def _cmd_refine(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.coarse.points import is_seed_file, parse_seeds, parse_signed_seeds
    from LiverTumorRefineLib.progress import ProgressBar

    if args.batch_size < 1:
        raise RefineError(f"--batch-size must be at least 1 (got {args.batch_size}).")
    if args.label is not None and args.label <= 0:
        raise RefineError(f"--label {args.label}: label 0 is the background and cannot be the tumour; "
                          "give the tumour's label (usually 2 in a LiTS map, 1 in a binary mask).")
    if args.batch is not None:
        return _cmd_refine_batch(args)
    batch_only = [flag for flag, value in (("--out-dir", args.out_dir), ("--shard", args.shard),
                                           ("--workers", args.workers)) if value is not None]
    if batch_only:
        raise RefineError(f"{', '.join(batch_only)} go with --batch MANIFEST_OR_FOLDER.")
    given = args.mask is not None or args.seeds is not None or args.auto_coarse or args.totalsegmentator
    if args.image is None or args.out is None or not given:  # an empty --seeds '' is given, and refused later
        raise RefineError("refine needs --image, --out and one of --mask, --seeds, --auto-coarse, --totalsegmentator "
                          "(or --batch MANIFEST_OR_FOLDER --out-dir DIR for a dataset).")
    common = dict(device=args.device, weights=args.weights, batch_size=args.batch_size, min_kept=args.min_kept,
                  tta=args.tta, force=args.force, progress=ProgressBar("refine"), report=args.report, runtime=args.runtime,
                  intensity_gate=args.intensity_gate, dicom_output=args.dicom_output)
    if args.mask is not None:
        if args.coarse_out is not None:
            raise RefineError("--coarse-out is for coarse masks this command makes (--seeds, --auto-coarse, "
                              "--totalsegmentator); with --mask the coarse mask is your file.")
        stats = api.refine_files(args.image, args.mask, args.out, label=args.label, segment=args.segment, **common)
    else:
        if args.label is not None:
            raise RefineError("--label selects a label of --mask; the coarse sources make their own mask.")
        if args.segment is not None:
            raise RefineError("--segment selects a segment of --mask (a DICOM SEG, .seg.nrrd or RT structure set); "
                              "the coarse sources make their own mask.")
        if args.seeds is None and (args.negative_seeds is not None or args.seed_method != "auto"):
            raise RefineError("--negative-seeds and --seed-method go with --seeds (a positive point inside each lesion).")
        source = "seeds" if args.seeds is not None else "auto" if args.auto_coarse else "totalsegmentator"
        if args.report is not None:
            api.check_report_output(args.report, [args.image, args.seeds if args.seeds and is_seed_file(args.seeds) else None],
                                    args.force)
        seeds, negative = parse_signed_seeds(args.seeds) if args.seeds is not None else (None, [])
        negative += parse_seeds(args.negative_seeds) if args.negative_seeds is not None else []
        stats = api.refine_without_mask(args.image, args.out, source, seeds, args.coarse_out,
                                        negative_seeds=negative, seed_method=args.seed_method,
                                        seg_weights=args.coarse_weights, coarse_progress=ProgressBar("coarse"),
                                        **common)
    s = stats["seconds"]
    coarse = f"coarse {s['coarse']:.2f}, " if "coarse" in s else ""
    print(f"Refined {args.out}: {stats['patches']} patches, {stats['voxels_changed']} voxels changed, "
          f"{s['total'] + s.get('coarse', 0.0):.2f} s on {stats['device']} ({coarse}sample {s['sample']:.2f}, "
          f"infer {s['infer']:.2f}, reassemble {s['reassemble']:.2f})")
    if args.report is not None:
        rows = stats["review"]
        flagged = sum(1 for row in rows if row["flags"])
        print(f"Wrote {args.report}: {len(rows)} lesion(s), {flagged} flagged for review")
    return 0


def _cmd_refine_batch(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib import batch

    single = [flag for flag, value in (("--image", args.image), ("--mask", args.mask), ("--seeds", args.seeds),
                                       ("--negative-seeds", args.negative_seeds),
                                       ("--auto-coarse", args.auto_coarse), ("--totalsegmentator", args.totalsegmentator),
                                       ("--out", args.out), ("--coarse-out", args.coarse_out),
                                       ("--coarse-weights", args.coarse_weights), ("--report", args.report),
                                       ("--dicom-output", args.dicom_output)) if value]
    if single:
        raise RefineError(f"--batch reads each case's CT and coarse mask from the manifest or folder: leave out "
                          f"{', '.join(single)}.")
    if args.out_dir is None:
        raise RefineError("--batch needs --out-dir DIR: the folder for the refined masks and the batch summary.")
    settings = batch.BatchSettings(weights=args.weights, device=args.device, batch_size=args.batch_size,
                                   min_kept=args.min_kept, tta=args.tta, label=args.label, segment=args.segment,
                                   runtime=args.runtime, intensity_gate=args.intensity_gate)
    shard = batch.parse_shard(args.shard) if args.shard is not None else (0, 1)
    report = batch.run_batch(args.batch, args.out_dir, settings, shard, 1 if args.workers is None else args.workers,
                             args.force, log=lambda line: print(line, flush=True))
    return BATCH_FAILED if report.failed else 0


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf: an empty mask gives null


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.evaluate.metrics import format_metrics_table

    metrics = api.evaluate_files(args.truth, args.pred, args.label, segment=args.segment, pred_segment=args.pred_segment,
                                 image_path=args.image)
    if args.json:
        print(json.dumps({k: _json_number(float(v)) for k, v in metrics.items()}))
    else:
        print(format_metrics_table({Path(args.pred).name: metrics}))
    return 0


def _cmd_overlay(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.volume import files, io
    from LiverTumorRefineLib.evaluate.overlay import render_overlay_figure, write_png

    out = io.check_output(args.out, [args.image, args.truth, args.coarse, args.refined], args.force, suffixes=(".png",))
    ct = io.to_lps(io.read_image(args.image))  # axial slices, anterior up, whatever the file's storage order
    image = io.from_sitk(ct)
    masks: dict[str, object] = {}
    label = args.label
    for name in ("truth", "coarse", "refined"):
        path = getattr(args, name)
        if path is None:
            continue
        mask = files.mask_for_display(path, ct, args.segment).array
        if label is None and name == "truth":
            masks[name], label = api.select_label(mask, None)
        else:
            masks[name] = api.prediction_mask(mask, label)
    write_png(render_overlay_figure(image.array, image.spacing_zyx, slice_index=args.slice, **masks), out)
    print(f"Wrote {out}")
    return 0


def _cmd_qa(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib.volume import io
    from LiverTumorRefineLib.evaluate import qa
    from LiverTumorRefineLib.evaluate.overlay import write_png

    if args.batch is not None:
        if any(getattr(args, name) is not None for name in ("image", "truth", "coarse", "refined")):
            raise RefineError("--batch finds each case's files in the folder; leave out --image, --truth, --coarse "
                              "and --refined.")
        cases = qa.find_cases(args.batch)
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise RefineError(f"--out {out_dir} is a file: with --batch give a folder for the sheets.")
        if not out_dir.parent.is_dir():
            raise RefineError(f"Output folder {out_dir.parent} does not exist: create it first.")
        out_dir.mkdir(exist_ok=True)
        jobs = [(case, io.check_output(out_dir / f"{case.name}.png", [], args.force, suffixes=(".png",)))
                for case in cases]
    else:
        missing = [f"--{name}" for name in ("image", "coarse", "refined") if getattr(args, name) is None]
        if missing:
            raise RefineError(f"qa needs {', '.join(missing)} (or --batch FOLDER).")
        inputs = [args.image, args.truth, args.coarse, args.refined]
        out = io.check_output(args.out, inputs, args.force, suffixes=(".png",))
        name = Path(args.refined).name
        jobs = [(qa.QaCase(name, Path(args.image), Path(args.truth) if args.truth else None, Path(args.coarse),
                           Path(args.refined)), out)]
    for case, out in jobs:
        image, truth, coarse, refined = qa.load_case(case.ct, case.coarse, case.refined, case.truth, args.label,
                                                     args.segment)
        sheet, tiles = qa.render_qa_sheet(image.array, image.spacing_zyx, coarse, refined, truth, title=case.name)
        write_png(sheet, out)
        print(f"Wrote {out}: {len(tiles)} lesion(s)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib.demo import run_demo
    from LiverTumorRefineLib.progress import ProgressBar

    run_demo(args.out, device=args.device, weights=args.weights, progress=ProgressBar("refine"))
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib.training.phantom import make_phantom, write_case
    from LiverTumorRefineLib.progress import ProgressBar

    if args.cases < 1:
        raise RefineError(f"--cases must be at least 1 (got {args.cases}).")
    bar = ProgressBar("phantoms")
    for i in range(args.cases):
        write_case(make_phantom(args.seed + i), args.out)
        bar((i + 1) / args.cases, f"phantom_{args.seed + i}")
    print(f"Wrote {args.cases} phantoms (seeds {args.seed}-{args.seed + args.cases - 1}) to {Path(args.out).resolve()}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib.config import NetConfig, PatchConfig
    from LiverTumorRefineLib.progress import ProgressBar
    from LiverTumorRefineLib.training.train import TrainConfig, train
    from LiverTumorRefineLib.training.trainset import VALIDATION_PHANTOM_SEED, parse_spec, split_every, with_coarse

    data = parse_spec(args.data)
    val = parse_spec(args.val) if args.val else (parse_spec(f"phantom:{args.val_cases}:{VALIDATION_PHANTOM_SEED}")
                                                 if data.folder is None else None)
    init = None
    patch, net = PatchConfig(use_mask=not args.no_mask_patch), NetConfig(base_channels=args.width)
    if args.init:  # fine-tuning: the architecture and patch layout are the starting model's
        from LiverTumorRefineLib.refine.weights import load_model

        init = load_model(args.init)
        patch, net = init.patch_config, init.net_config  # type: ignore[attr-defined]
    if not args.keep_weight > 0:
        raise RefineError(f"--keep-weight must be above 0 (got {args.keep_weight}); 1 weighs every voxel alike.")
    if args.keep_weight != 1.0 and not patch.use_mask:
        raise RefineError("--keep-weight weighs voxels by the coarse mask patch, which --no-mask-patch leaves out.")
    if args.minutes is not None and not args.minutes > 0:
        raise RefineError(f"--minutes must be above 0 (got {args.minutes}).")
    if not 0.0 <= args.exact_share <= 1.0:
        raise RefineError(f"--exact-share must be from 0 to 1 (got {args.exact_share}).")
    if args.exact_share and args.coarse_dir:
        raise RefineError("--exact-share shapes simulated coarse masks; --coarse-dir gives real ones. Use one of them.")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, epoch_steps=args.epoch_steps,
                      patch=patch, net=net, keep_weight=args.keep_weight, minutes=args.minutes, exact_share=args.exact_share)
    cases = with_coarse(data.cases(), args.variants, args.seed, args.coarse_dir, args.exact_share)
    if val is None:  # a folder without --val: every 10th case is held out for validation
        train_cases, val_cases = split_every(cases, 10)
    else:
        train_cases, val_cases = cases, list(with_coarse(val.cases(), 1, args.seed + 1))
    train(cfg, train_cases, val_cases, args.out, device=args.device, resume=args.resume, progress=ProgressBar("train"),
          init=init)
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.progress import ProgressBar

    stats = api.segment_file(args.image, args.out, weights=args.weights, device=args.device, force=args.force,
                             progress=ProgressBar("segment"))
    print(f"Wrote {args.out}: liver {stats['liver_ml']:.0f} ml, {stats['tumours']} tumour(s) "
          f"{stats['tumour_ml']:.1f} ml, {stats['seconds']:.1f} s on {stats['device']}")
    return 0


def _cmd_train_coarse(args: argparse.Namespace) -> int:
    from LiverTumorRefineLib.progress import ProgressBar
    from LiverTumorRefineLib.training.segtrain import SegTrainConfig, train_segnet
    from LiverTumorRefineLib.training.trainset import VALIDATION_PHANTOM_SEED, parse_spec

    data = parse_spec(args.data)
    val = parse_spec(args.val) if args.val else parse_spec(f"phantom:{args.val_cases}:{VALIDATION_PHANTOM_SEED}")
    cfg = SegTrainConfig(steps=args.steps, batch_size=args.batch_size, crop_px=args.crop, lr=args.lr, seed=args.seed,
                         slices_per_case=args.slices_per_case)
    train_segnet(cfg, data.cases(), list(val.cases()), args.out, device=args.device, progress=ProgressBar("train"))
    return 0


def _add_refine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="refine a coarse tumour mask (given, or made from seeds or automatically)")
    p.add_argument("--image", help="CT volume (NIfTI, NRRD, MHA) or a DICOM CT series: its folder, or one of its "
                                   "files (picks that series in a folder holding several)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--mask", help="coarse tumour mask or LiTS-style label map, or a DICOM SEG (.dcm), Slicer "
                                       ".seg.nrrd or RT structure set (.dcm, filled on the CT's slices); pick the "
                                       "segment or structure with --segment")
    source.add_argument("--seeds", help="one point inside each lesion: \"R,A,S;R,A,S\" in RAS mm as Slicer shows "
                                        "them, or a Slicer point list file (.mrk.json; points whose description is "
                                        "\"lesion N\" are one lesion's clicks)")
    source.add_argument("--auto-coarse", action="store_true",
                        help="make the coarse liver and tumour labels with the shipped coarse network (trained on "
                             "phantoms: good for the liver, misses most tumours on real CT; for automatic lesions "
                             "use --totalsegmentator, when lesions matter --seeds)")
    source.add_argument("--totalsegmentator", action="store_true",
                        help="make the coarse tumour mask with TotalSegmentator (installed separately)")
    p.add_argument("--out", help="refined mask, written on the CT's grid; a .dcm name writes a DICOM SEG (or RT "
                                 "structure set, see --dicom-output) referencing the CT series (--image must be a "
                                 "DICOM series)")
    p.add_argument("--dicom-output", choices=("seg", "rtstruct"),
                   help="what a .dcm --out is: a DICOM SEG (seg) or an RT structure set of closed contours round the "
                        "voxels (rtstruct) (default: an RT structure set when --mask is one, else a SEG)")
    p.add_argument("--coarse-out", help="also write the coarse mask made from --seeds / --auto-coarse / "
                                        "--totalsegmentator here")
    p.add_argument("--negative-seeds", help="points outside the lesions whose tissue the coarse mask must leave out "
                                            "(a leak): \"R,A,S;R,A,S\" or a .mrk.json file; with --seeds (a seed "
                                            "file's points labelled \"neg...\" count as negative too)")
    p.add_argument("--seed-method", choices=("auto", "hybrid", "rays", "model"), default="auto",
                   help="what grows each lesion from its seed: the ray grower (rays), the learned click model "
                        "(model), or hybrid (= auto): the ray grower's lesion with the model's near the seed, "
                        "corrected near each negative seed by the model (the best in bench/clicks.py)")
    p.add_argument("--coarse-weights", help="coarse network file for --auto-coarse (default: the shipped one)")
    p.add_argument("--segment", metavar="NAME", help="segment of a DICOM SEG or .seg.nrrd --mask, or structure of an "
                                                     "RT structure set, by name (case-insensitive) or number "
                                                     "(default: its only one, else its one named as a tumour)")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses a CUDA GPU when there is one")
    p.add_argument("--weights", help="model file (default: the shipped model)")
    p.add_argument("--batch-size", type=int, default=128, help="patches per inference batch")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"],
                   help="what runs the network: auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or "
                        "onnx (pip install onnxruntime)")
    p.add_argument("--min-kept", type=float, default=MIN_KEPT, metavar="FRACTION",
                   help="a lesion keeps at least this fraction of its coarse voxels when the refinement is fully "
                        "sure, and more when it is less sure; otherwise it keeps its coarse outline "
                        f"(default {MIN_KEPT}; 0 lets refinement delete lesions)")
    p.add_argument("--intensity-gate", action=argparse.BooleanOptionalAction, default=INTENSITY_GATE,
                   help="refuse the changes the CT's intensity contradicts: an added voxel that reads as liver, a "
                        "removed one that reads as lesion, where lesion and liver differ by 15 HU or more; on the real "
                        "validation CTs it nearly halved the lesions made worse, and it keeps click-made masks off the "
                        f"liver (default: {'on' if INTENSITY_GATE else 'off'})")
    p.add_argument("--tta", type=int, default=TTA, metavar="N",
                   help=f"orientations each patch is predicted in, 1-8 (default {TTA}); a voxel changes only where "
                        "the predictions covering it agree; 1 is fastest. A mask made from --seeds is refined in "
                        f"{SEEDED_PASSES} passes of {SEEDED_FIRST_TTA} and {SEEDED_LATER_TTA} orientations whatever this says")
    p.add_argument("--report", metavar="FILE", help="also write a lesion-by-lesion review (volumes, RECIST diameters, "
                                                    "confidence, decision, flags) as FILE.csv or FILE.json")
    p.add_argument("--force", action="store_true", help="overwrite OUT (and the report) if it exists")
    batch = p.add_argument_group("dataset (batch) mode")
    batch.add_argument("--batch", metavar="MANIFEST_OR_FOLDER",
                       help="refine every case of a manifest .csv (columns image, mask; optional out, truth, name) or "
                            "of a folder of [NAME_]ct and [NAME_]coarse files, skipping finished cases")
    batch.add_argument("--out-dir", metavar="DIR", help="with --batch: folder for the refined masks (NAME_refined.nii.gz "
                                                        "unless the manifest gives out) and batch_summary.csv/.json")
    batch.add_argument("--shard", metavar="I/N", help="with --batch: refine only every N-th case from the I-th "
                                                      "(0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/10 (default: all)")
    batch.add_argument("--workers", type=int, metavar="K", help="with --batch: refine K cases at once, each with 1/K "
                                                                "of the cores (default 1)")
    p.set_defaults(func=_cmd_refine)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, VOE, RVD, ASSD, MSSD, HD95 of a mask against truth")
    p.add_argument("--truth", required=True, help="reference mask or LiTS-style label map (NIfTI, NRRD, MHA)")
    p.add_argument("--pred", required=True, help="predicted mask, resampled onto the truth's grid when it differs")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--segment", metavar="NAME", help="segment (name or number) of whichever of --truth/--pred is a "
                                                     "DICOM SEG (.dcm), Slicer .seg.nrrd or RT structure set (.dcm, "
                                                     "filled on the other's grid)")
    p.add_argument("--pred-segment", metavar="NAME", help="segment of --pred when its name differs from --segment's")
    p.add_argument("--image", help="the CT (volume file or DICOM series): both masks are read onto its grid (needed "
                                   "when both are RT structure sets)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _add_overlay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overlay", help="PNG of an axial slice with truth/coarse/refined outlines")
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA) or DICOM series")
    p.add_argument("--truth", help="ground truth (red); masks may also be DICOM SEG, .seg.nrrd or RT structure sets")
    p.add_argument("--coarse", help="coarse mask (yellow)")
    p.add_argument("--refined", help="refined mask (green)")
    p.add_argument("--out", required=True, help="PNG file (never one of the inputs)")
    p.add_argument("--slice", type=int, help="axial slice index (default: the one with the most tumour)")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--segment", metavar="NAME", help="segment (name or number) of whichever mask is a DICOM SEG, "
                                                     ".seg.nrrd or RT structure set with several")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_overlay)


def _add_qa(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qa", help="PNG contact sheet: one zoomed tile per lesion with truth/coarse/refined outlines")
    p.add_argument("--image", help="CT volume (NIfTI, NRRD, MHA) or DICOM series")
    p.add_argument("--truth", help="ground truth (red; optional: Dice needs it); masks may also be DICOM SEG, "
                                   ".seg.nrrd or RT structure sets")
    p.add_argument("--coarse", help="coarse mask (yellow, dashed)")
    p.add_argument("--refined", help="refined mask (green)")
    p.add_argument("--batch", metavar="FOLDER", help="every case in FOLDER and its sub-folders: [NAME_]ct, truth, "
                                                     "coarse, refined .nii.gz (as demo writes them); one sheet each")
    p.add_argument("--out", required=True, help="PNG file, or with --batch the folder for NAME.png sheets")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--segment", metavar="NAME", help="segment (name or number) of whichever mask is a DICOM SEG, "
                                                     ".seg.nrrd or RT structure set with several")
    p.add_argument("--force", action="store_true", help="overwrite existing sheets")
    p.set_defaults(func=_cmd_qa)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="refine a default case (LiTS 117 or a phantom) and write everything to a folder")
    p.add_argument("--out", default="livertumorrefine-demo", help="output folder (default: ./livertumorrefine-demo)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses a CUDA GPU when there is one")
    p.add_argument("--weights", help="model file (default: the shipped model)")
    p.set_defaults(func=_cmd_demo)


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="generate synthetic abdominal CT phantoms with LiTS labels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cases", type=int, default=10, help="number of phantoms (at least 1)")
    p.add_argument("--seed", type=int, default=1000, help="case i uses seed SEED+i")
    p.set_defaults(func=_cmd_phantom)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a boundary refinement network")
    p.add_argument("--data", required=True, help="phantom:N[:SEED] or a LiTS / MSD Task03 / phantom folder")
    p.add_argument("--val", help="validation data spec (default: 6 phantoms from another seed range, "
                                 "or every 10th case of a folder)")
    p.add_argument("--val-cases", type=int, default=6, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="run folder: model.pt, model.pt.sha256, checkpoint.pt")
    p.add_argument("--steps", type=int, default=6000, help="training steps (batches)")
    p.add_argument("--minutes", type=float, help="wall-time budget of the training steps: after 50 steps the "
                                                 "schedule is fitted to it (at most --steps)")
    p.add_argument("--epoch-steps", type=int, default=1000, help="steps between validation and checkpoints")
    p.add_argument("--batch-size", type=int, default=32, help="patches per training batch")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--width", type=int, default=16, help="BRNet base channels")
    p.add_argument("--variants", type=int, default=2, help="simulated coarse masks per case")
    p.add_argument("--coarse-dir", help="folder of real coarse predictions <case>*.nii.gz instead of simulated ones")
    p.add_argument("--seed", type=int, default=0, help="random seed (sampling, augmentation, initial weights)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses a CUDA GPU when there is one")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", metavar="MODEL", help="start from these weights (e.g. brnet_default.pt) to fine-tune on "
                                                   "a site's own data; its architecture replaces --width")
    p.add_argument("--no-mask-patch", action="store_true", help="ablation: image channels only, no mask patch")
    p.add_argument("--keep-weight", type=float, default=1.0,
                   help="loss weight of voxels the coarse mask already has right: above 1, the network learns to "
                        "change a voxel only when it is that many times more likely right than wrong")
    p.add_argument("--exact-share", type=float, default=0.0,
                   help="share of simulated lesions given their true mask as the coarse one (0 to 1), so that the "
                        "network also learns to leave a right edge alone (default: 0)")
    p.set_defaults(func=_cmd_train)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="automatic coarse liver (1) and tumour (2) label map from a CT (the "
                                       "liver is reliable; on real CT most tumours are missed)")
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA)")
    p.add_argument("--out", required=True, help="0/1/2 label map, written on the CT's grid")
    p.add_argument("--weights", help="coarse model file (default: the shipped segnet_default.pt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses a CUDA GPU when there is one")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_segment)


def _add_train_coarse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-coarse", help="train the automatic coarse liver and tumour network")
    p.add_argument("--data", required=True, help="phantom:N[:SEED] or a LiTS / MSD Task03 / phantom folder")
    p.add_argument("--val", help="validation data spec (default: 4 phantoms from the validation seed range)")
    p.add_argument("--val-cases", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="run folder: segnet.pt, segnet.pt.sha256")
    p.add_argument("--steps", type=int, default=3000, help="training steps (batches)")
    p.add_argument("--batch-size", type=int, default=8, help="slice stacks per training batch")
    p.add_argument("--crop", type=int, default=128, help="training crop size in pixels (a multiple of 16)")
    p.add_argument("--slices-per-case", type=int, default=24, help="training slices drawn from each case")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="random seed (sampling, augmentation, initial weights)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses a CUDA GPU when there is one")
    p.set_defaults(func=_cmd_train_coarse)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_refine, _add_segment, _add_evaluate, _add_overlay, _add_qa, _add_demo, _add_phantom, _add_train, _add_train_coarse]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option that has a real default and does not state it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or "default" in text or text == argparse.SUPPRESS):
            return action.help
        return f"{text} (default: %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
    from LiverTumorRefineLib import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Refine the boundary of coarse liver-tumour segmentations on CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(_glue_seed_values(sys.argv[1:] if argv is None else list(argv)))
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line, no source excerpt
        return _run(args)


def _glue_seed_values(argv: list[str]) -> list[str]:
    """``--seeds -6.4,22,-532`` as ``--seeds=-6.4,22,-532`` (``--negative-seeds`` too): RAS
    coordinates are often negative, and argparse would take the value for an option."""
    out = list(argv)
    i = 0
    while i < len(out) - 1:
        value = out[i + 1]
        if out[i] in ("--seeds", "--negative-seeds") and value[:1] == "-" and value[1:2] in set("0123456789."):
            out[i:i + 2] = [f"{out[i]}={value}"]
        i += 1
    return out


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except RefineError as exc:
        print(f"{PROG}: error: {exc.for_cli()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no partial file was left (completed files and checkpoints stay).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
