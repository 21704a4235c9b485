"""The ``livertumorrefine`` command line.

User errors (RefineError) print one line on stderr and exit 2; Ctrl-C exits 130 with nothing
half-written (outputs are renamed into place only when complete).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import RefineError

PROG = "livertumorrefine"


def _cmd_refine(args: argparse.Namespace) -> int:
    from . import api
    from .progress import ProgressBar

    stats = api.refine_files(args.image, args.mask, args.out, label=args.label, device=args.device,
                             weights=args.weights, batch_size=args.batch_size, force=args.force,
                             progress=ProgressBar("refine"))
    s = stats["seconds"]
    print(f"Refined {args.out}: {stats['patches']} patches, {stats['voxels_changed']} voxels changed, "
          f"{s['total']:.2f} s on {stats['device']} (sample {s['sample']:.2f}, infer {s['infer']:.2f}, "
          f"reassemble {s['reassemble']:.2f})")
    return 0


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf: an empty mask gives null


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import api
    from .metrics import format_metrics_table

    metrics = api.evaluate_files(args.truth, args.pred, args.label)
    if args.json:
        print(json.dumps({k: _json_number(float(v)) for k, v in metrics.items()}))
    else:
        print(format_metrics_table({Path(args.pred).name: metrics}))
    return 0


def _cmd_overlay(args: argparse.Namespace) -> int:
    from . import api, io
    from .overlay import render_overlay, write_png

    ct = io.read_image(args.image)
    image = io.from_sitk(ct)
    masks: dict[str, object] = {}
    label = args.label
    for name in ("truth", "coarse", "refined"):
        path = getattr(args, name)
        if path is None:
            continue
        mask = io.from_sitk(io.resample_mask_to(io.read_image(path), ct)).array
        if label is None and name == "truth":
            masks[name], label = api.select_label(mask, None)
        else:
            masks[name] = api.prediction_mask(mask, label)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise RefineError(f"{out} already exists: choose another output or pass --force.")
    write_png(render_overlay(image.array, image.spacing_zyx, slice_index=args.slice, **masks), out)
    print(f"Wrote {out}")
    return 0


def _add_refine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="refine a coarse tumour mask")
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA)")
    p.add_argument("--mask", required=True, help="coarse tumour mask or LiTS-style label map")
    p.add_argument("--out", required=True, help="refined mask, written on the CT's grid")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--weights", help="model file (default: the shipped model)")
    p.add_argument("--batch-size", type=int, default=128, help="patches per inference batch")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_refine)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, VOE, RVD, ASSD, MSSD, HD95 of a mask against truth")
    p.add_argument("--truth", required=True)
    p.add_argument("--pred", required=True)
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _add_overlay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overlay", help="PNG of an axial slice with truth/coarse/refined outlines")
    p.add_argument("--image", required=True)
    p.add_argument("--truth", help="ground truth (red)")
    p.add_argument("--coarse", help="coarse mask (yellow)")
    p.add_argument("--refined", help="refined mask (green)")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--slice", type=int, help="axial slice index (default: the one with the most tumour)")
    p.add_argument("--label", type=int, help="tumour label (default: 2 in a 0/1/2 map, else any non-zero)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_overlay)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_refine, _add_evaluate, _add_overlay]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Refine the boundary of coarse liver-tumour segmentations on CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RefineError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no output was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
