"""Rebuild the two real-CT validation cases from their public DICOM sources into a local cache.

    python bench/realct.py --patient1720 SRC1/data/raw/patient_1720 --mip SRC2/dataset [--cache DIR]

Cases (portal-venous/equilibrium abdominal CT with manual liver and tumour DICOM SEG):

* ``realct_1720``: ``patient_1720/DICOM/31_EQP_Ax5.00mm`` with
  ``patient_1720/SEGMENTATIONS/31_EQP_Ax5.00mm_ManualROI_{Liver,Tumor}.dcm`` (512x512x52, 5 mm
  slices; the series also holds one coronal reformat slice, dropped with a warning; the other
  series ``10_AP_Ax5.00mm`` in that folder is ignored).
* ``realct_mip10``: ``dataset/10_AP_Ax2.50mm`` with ``dataset/10_AP_Ax2.50mm_ManualROI_{Liver,Tumor}.dcm``
  (512x512x207, 2.5 mm slices).

Getting the sources (their licence is unstated: never commit them or the cache to this repo):
mirror github IrvingPU/Medical_Images_Project and check out commit
8f31cc7052843be549822b8d5b9d5f8c95acfe14 (``git archive 8f31cc70 data/raw/patient_1720 | tar -x -C SRC1``),
and github gcriscione/MIP at commit 809879e69de523caca5eea2a06c391cc0451d5fa
(``git archive 809879e6 dataset | tar -x -C SRC2``).

Writes ``<name>_ct.nii.gz`` (int16 HU) and ``<name>_label.nii.gz`` (0 background, 1 liver,
2 tumour; the tumour overrides the liver) in the phantom folder layout that
``datasets.find_cases`` reads, to ``--cache`` (default ``datasets.cache_dir()/realct``, i.e.
``~/.cache/livertumorrefine/realct``), and prints per case the shape, spacing, HU range, liver
and tumour volumes, mean HU inside each (a check that the masks sit on the right anatomy) and
the tumour's connected components. Other bench scripts get the cases with ``load_cases()``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.training import datasets  # noqa: E402
from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402
from LiverTumorRefineLib.training.phantom import Case, write_case  # noqa: E402

NAMES = ("realct_1720", "realct_mip10")


def default_cache() -> Path:
    """``datasets.cache_dir()/realct`` (``$XDG_CACHE_HOME`` or ``~/.cache``), outside the repo."""
    return datasets.cache_dir() / "realct"


def source_cases(patient1720: str | Path, mip: str | Path) -> list[tuple[str, Path, list[Path]]]:
    """(case name, CT series folder, SEG files) of the two cases in their source folders."""
    p, m = Path(patient1720).expanduser(), Path(mip).expanduser()
    series = "31_EQP_Ax5.00mm"
    return [(NAMES[0], p / "DICOM" / series, [p / "SEGMENTATIONS" / f"{series}_ManualROI_{s}.dcm" for s in ("Liver", "Tumor")]),
            (NAMES[1], m / "10_AP_Ax2.50mm", [m / f"10_AP_Ax2.50mm_ManualROI_{s}.dcm" for s in ("Liver", "Tumor")])]


def build(patient1720: str | Path, mip: str | Path, cache: str | Path | None = None) -> list[Case]:
    """Read both cases from their DICOM sources and write them to ``cache``; returns them."""
    out = Path(cache).expanduser() if cache is not None else default_cache()
    cases = []
    for name, series, segs in source_cases(patient1720, mip):
        missing = [str(p) for p in [series, *segs] if not p.exists()]
        if missing:
            raise RefineError(f"{name}: source not found: {', '.join(missing)} (see the docstring of bench/realct.py).")
        case = datasets.read_dicom_case(name, series, segs)
        write_case(case, out)
        cases.append(case)
    return cases


def load_cases(cache: str | Path | None = None) -> list[Case]:
    """The cached real-CT cases (``realct_1720``, ``realct_mip10``) as Cases: image float32 HU,
    label uint8 0/1/2, LPS-oriented. RefineError when the cache has not been built."""
    folder = Path(cache).expanduser() if cache is not None else default_cache()
    if not all((folder / f"{name}_ct.nii.gz").is_file() for name in NAMES):
        raise RefineError(f"The real-CT cases are not in {folder}: build them with bench/realct.py.")
    return [case for case in datasets.find_cases(str(folder)) if case.name in NAMES]


def describe(case: Case) -> str:
    """Shape, spacing, HU range, liver/tumour volume and mean HU, tumour components."""
    image, label = case.image.array, case.label.array
    ml = float(np.prod(case.image.spacing_zyx)) / 1000.0
    components = component_labels(label == 2)
    sizes = sorted((float((components == i).sum()) * ml for i in range(1, int(components.max()) + 1)), reverse=True)
    z, y, x = case.image.spacing_zyx
    return "\n".join([
        f"{case.name}: shape (z,y,x) {image.shape}, spacing (z,y,x) {z:.3f} x {y:.3f} x {x:.3f} mm, "
        f"HU {image.min():.0f} .. {image.max():.0f}",
        f"  liver (incl. tumour) {float((label >= 1).sum()) * ml:.1f} ml, tumour {float((label == 2).sum()) * ml:.1f} ml",
        f"  mean HU: liver parenchyma {image[label == 1].mean():.1f}, tumour {image[label == 2].mean():.1f}, "
        f"whole volume {image.mean():.1f}",
        f"  tumour components (26-connected): {len(sizes)}: " + ", ".join(f"{s:.2f} ml" for s in sizes)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patient1720", required=True, help="the data/raw/patient_1720 folder (IrvingPU/Medical_Images_Project)")
    parser.add_argument("--mip", required=True, help="the dataset folder (gcriscione/MIP)")
    parser.add_argument("--cache", help=f"output folder (default {default_cache()})")
    args = parser.parse_args(argv)
    try:
        cases = build(args.patient1720, args.mip, args.cache)
    except RefineError as exc:
        print(f"realct: error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {len(cases)} cases to {Path(args.cache).expanduser() if args.cache else default_cache()}")
    for case in cases:
        print(describe(case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
