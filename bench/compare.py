"""Boundary fixing compared: what a 3D Slicer user can do today to a coarse tumour mask, and ours.

    python bench/compare.py [CASES...] [--phantoms N] [--lits117] [--out DIR] [--model NAME=PATH ...]

Runs every method on the same cases and reports Dice, VOE, ASSD (mm), MSSD (mm) and wall seconds
per method and case, with means per case set (a result with no voxel has no surface distance: the
ASSD and MSSD means leave it out and say how many they left out). Writes ``compare.csv`` (per-case
rows, then one ``mean`` row per method and case set; rewritten atomically after every case) and
``compare.png`` (mean Dice and mean ASSD per method, grouped by case set) into ``--out``.

Cases:
  CASES          folders (or CT files) of (CT, truth, coarse) triplets: the layout
                 ``livertumorrefine demo`` writes (ct.nii.gz, truth.nii.gz, coarse.nii.gz), or
                 <name>_ct/_truth/_coarse.nii.gz; a folder of such folders works too. Set "given".
  --phantoms N   held-out phantoms, seeds 90000..90000+N-1 (set "phantoms").
  --lits117      LiTS case 117 (set "lits117").
  Held-out cases get exactly bench/heldout.py's coarse masks (bench/cases.py).
  --real V       the real validation set (realct_1720, realct_mip10 from bench/realct.py's cache,
                 and LiTS 117), each with V coarse masks from cases.independent_coarse (set "real").

Methods (each ``f(image, mask, spacing_zyx) -> mask``, millimetres converted per axis):
  coarse         the coarse mask as is.
  median-3mm     Segment Editor Smoothing "Median", kernel 3 mm.
  opening-2mm    Segment Editor Smoothing "Opening (remove extrusions)", radius 2 mm (kernel 4 mm).
  closing-2mm    Segment Editor Smoothing "Closing (fill holes)", radius 2 mm (kernel 4 mm).
                 Kernel sizes in voxels follow Slicer's rule (the nearest odd number to
                 size/spacing, at least 1). A 2 mm *kernel* would be 1 voxel - no change - at
                 spacings over 1.33 mm, so 2 mm is read as the radius.
  grow-from-seeds  Segment Editor "Grow from seeds": Slicer's vtkImageGrowCutSegment (from the
                 slicer-core wheel), seeds = the coarse mask eroded by 3 mm (inside) and the ring
                 3-8 mm outside it (outside), on the CT cropped to the coarse box + 10 mm.
  geodesic-ac    a geodesic active contour level set (SimpleITK), started from the coarse mask's
                 signed distance, on a sigmoid of the gradient magnitude, same crop; fixed
                 parameters (GAC_* below).
  NAME           ours: ``Refiner(PATH, device="cpu")`` per --model NAME=PATH; by default
                 ours=brnet_default.pt and ours-nomask=brnet_nomask.pt when they exist.

Timings are wall seconds of the method call only (model loading excluded), on the CPU.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import find_triplets, independent_coarse, read_triplet, real_cases, simulated_cases  # noqa: E402
from LiverTumorRefineLib.refine.boxes import lesion_box  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import compute_metrics  # noqa: E402
from LiverTumorRefineLib.training.case import RefineCase  # noqa: E402

Method = Callable[[np.ndarray, np.ndarray, Sequence[float]], np.ndarray]
KEYS = ("dice", "voe", "assd", "mssd")
DISTANCE_KEYS = ("assd", "mssd")  # surface distances: none for an empty result
DEFAULT_MODELS = {"ours": ROOT / "LiverTumorRefine/Resources/Models/brnet_default.pt",
                  "ours-nomask": ROOT / "LiverTumorRefine/Resources/Models/brnet_nomask.pt"}

CROP_MARGIN_MM = 10.0
SEED_INSIDE_MM = 3.0  # grow from seeds: inside seeds = coarse eroded by this
SEED_RING_MM = (3.0, 8.0)  # outside seeds = this ring outside the coarse mask
# Geodesic active contour, fixed for all cases: picked once from a dozen settings on training-range
# phantoms (seeds 1000-1005), never on the held-out ones.
GAC_HU_WINDOW = (-100.0, 250.0)  # HU clipped to the soft-tissue range before the gradient
GAC_SIGMA_MM = 1.0  # Gaussian of the gradient magnitude
GAC_SIGMOID = (-2.0, 6.0)  # alpha, beta (HU/mm): speed near 1 below ~2 HU/mm, near 0 above ~10 HU/mm
GAC_PROPAGATION, GAC_CURVATURE, GAC_ADVECTION = 0.5, 0.5, 2.0
GAC_ITERATIONS, GAC_MAX_RMS = 150, 0.002


class MethodUnavailable(RuntimeError):
    """The method cannot run here (e.g. a Slicer class missing from the installed wheel)."""


# ------------------------------------------------------------------------------ helpers
def kernel_size_vox(size_mm: float, spacing_zyx: Sequence[float]) -> tuple[int, ...]:
    """Slicer's Smoothing-effect kernel in voxels per axis: the nearest odd number to
    ``size_mm / spacing`` (SegmentEditorSmoothingEffect.getKernelSizePixel)."""
    return tuple(max(int(round((size_mm / s + 1) / 2)) * 2 - 1, 1) for s in spacing_zyx)


def _margin_vox(mm: float, spacing_zyx: Sequence[float]) -> list[int]:
    return [int(math.ceil(mm / s)) for s in spacing_zyx]


def _itk(array: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return image


def _signed_distance(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Signed Euclidean distance in mm, negative inside."""
    image = _itk(mask.astype(np.uint8), spacing_zyx)
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                               useImageSpacing=True))


def _binary_filter(mask: np.ndarray, spacing_zyx: Sequence[float], kernel_mm: float,
                   run: Callable[[sitk.Image, list[int]], sitk.Image]) -> np.ndarray:
    """Apply a SimpleITK binary filter with Slicer's kernel for ``kernel_mm`` on the mask's box."""
    mask = np.asarray(mask, dtype=bool)
    radius_zyx = [(k - 1) // 2 for k in kernel_size_vox(kernel_mm, spacing_zyx)]
    if not mask.any() or not any(radius_zyx):
        return mask.copy()
    box = lesion_box(mask, [r + 2 for r in radius_zyx])
    out = run(_itk(mask[box].astype(np.uint8), spacing_zyx), radius_zyx[::-1])
    result = np.zeros_like(mask)
    result[box] = sitk.GetArrayFromImage(out) > 0
    return result


# ------------------------------------------------------------------------------ methods
def coarse_as_is(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """The coarse mask unchanged (the baseline)."""
    return np.asarray(mask, dtype=bool).copy()


def median_3mm(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Slicer Smoothing "Median" with a 3 mm kernel (a box median, like vtkImageMedian3D)."""
    return _binary_filter(mask, spacing_zyx, 3.0, lambda im, r: sitk.BinaryMedian(
        im, radius=r, foregroundValue=1, backgroundValue=0))


def opening_2mm(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Slicer Smoothing "Opening" with a 4 mm (radius 2 mm) ellipsoid kernel (vtkImageOpenClose3D)."""
    return _binary_filter(mask, spacing_zyx, 4.0, lambda im, r: sitk.BinaryMorphologicalOpening(
        im, kernelRadius=r, kernelType=sitk.sitkBall, backgroundValue=0, foregroundValue=1))


def closing_2mm(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Slicer Smoothing "Closing" with a 4 mm (radius 2 mm) ellipsoid kernel (vtkImageOpenClose3D)."""
    return _binary_filter(mask, spacing_zyx, 4.0, lambda im, r: sitk.BinaryMorphologicalClosing(
        im, kernelRadius=r, kernelType=sitk.sitkBall, foregroundValue=1, safeBorder=True))


def growcut_class():
    """Slicer's ``vtkImageGrowCutSegment`` (what the Grow from seeds effect runs), or
    MethodUnavailable saying why it cannot be had headless."""
    try:
        from slicer_core.vtkSlicerSegmentationsModuleLogic import vtkImageGrowCutSegment
        return vtkImageGrowCutSegment
    except ImportError as first:
        try:
            import slicer

            return slicer.vtkImageGrowCutSegment
        except (ImportError, AttributeError) as exc:
            raise MethodUnavailable(f"vtkImageGrowCutSegment not importable from slicer-core ({first}; {exc})") from exc


def _vtk_image(array: np.ndarray, spacing_zyx: Sequence[float]):
    """A vtkImageData of a (z, y, x) array (x fastest), origin 0."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetSpacing(*(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(0.0, 0.0, 0.0)
    scalars = numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def growcut_seeds(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Seed labels for Grow from seeds: 1 = coarse eroded by 3 mm, 2 = ring 3-8 mm outside it,
    0 = unlabelled. A coarse component too thin to survive the erosion keeps its inner half
    (what a user would paint) so that it is not dropped for want of a seed."""
    distance = _signed_distance(mask, spacing_zyx)
    seeds = np.zeros(mask.shape, np.int16)
    seeds[(distance >= SEED_RING_MM[0]) & (distance <= SEED_RING_MM[1])] = 2
    inside = mask & (distance <= -SEED_INSIDE_MM)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(_itk(mask.astype(np.uint8), spacing_zyx), True))
    seeded = set(np.unique(labels[inside]).tolist())
    for lab in range(1, int(labels.max()) + 1):
        if lab not in seeded:
            component = labels == lab
            deepest = distance[component].min()
            inside |= component & (distance <= deepest / 2)
    seeds[inside] = 1
    return seeds


def grow_from_seeds(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Slicer's Grow from seeds (vtkImageGrowCutSegment, seed locality 0 as Slicer's default)
    from automatic seeds (``growcut_seeds``) on the coarse box + 10 mm."""
    cls = growcut_class()
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    box = lesion_box(mask, _margin_vox(CROP_MARGIN_MM, spacing_zyx))
    seeds = growcut_seeds(mask[box], spacing_zyx)
    grow = cls()
    grow.SetIntensityVolume(_vtk_image(np.asarray(image[box], dtype=np.float32), spacing_zyx))
    grow.SetSeedLabelVolume(_vtk_image(seeds, spacing_zyx))
    grow.SetDistancePenalty(0.0)
    grow.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    output = grow.GetOutput()
    if output is None or output.GetPointData().GetScalars() is None:
        raise RuntimeError("vtkImageGrowCutSegment produced no output")
    labels = vtk_to_numpy(output.GetPointData().GetScalars()).reshape(seeds.shape)
    result = np.zeros_like(mask)
    result[box] = labels == 1
    return result


def geodesic_active_contour(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """SimpleITK GeodesicActiveContourLevelSet from the coarse mask's signed distance (mm,
    negative inside), speed = sigmoid of the gradient magnitude; on the coarse box + 10 mm."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    box = lesion_box(mask, _margin_vox(CROP_MARGIN_MM, spacing_zyx))
    hu = np.clip(np.asarray(image[box], dtype=np.float32), *GAC_HU_WINDOW)
    gradient = sitk.GradientMagnitudeRecursiveGaussian(_itk(hu, spacing_zyx), sigma=GAC_SIGMA_MM)
    speed = sitk.Sigmoid(gradient, alpha=GAC_SIGMOID[0], beta=GAC_SIGMOID[1], outputMaximum=1.0, outputMinimum=0.0)
    initial = _itk(_signed_distance(mask[box], spacing_zyx).astype(np.float32), spacing_zyx)
    gac = sitk.GeodesicActiveContourLevelSetImageFilter()
    gac.SetPropagationScaling(GAC_PROPAGATION)
    gac.SetCurvatureScaling(GAC_CURVATURE)
    gac.SetAdvectionScaling(GAC_ADVECTION)
    gac.SetMaximumRMSError(GAC_MAX_RMS)
    gac.SetNumberOfIterations(GAC_ITERATIONS)
    level_set = gac.Execute(initial, sitk.Cast(speed, sitk.sitkFloat32))
    result = np.zeros_like(mask)
    result[box] = sitk.GetArrayFromImage(level_set) < 0
    return result


CLASSICAL: dict[str, Method] = {
    "coarse": coarse_as_is,
    "median-3mm": median_3mm,
    "opening-2mm": opening_2mm,
    "closing-2mm": closing_2mm,
    "grow-from-seeds": grow_from_seeds,
    "geodesic-ac": geodesic_active_contour,
}


def refiner_method(path: str | os.PathLike) -> Method:
    """Ours: ``Refiner(path, device="cpu").refine(...).mask`` (the model is loaded once, here)."""
    from LiverTumorRefineLib.refine.refiner import Refiner

    refiner = Refiner(path, device="cpu")

    def ours(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        return refiner.refine(image, mask, spacing_zyx).mask

    return ours


# ------------------------------------------------------------------------------ cases
def iter_cases(specs: Sequence[str], n_phantoms: int, lits: bool, log: Callable[[str], None] = print,
               real_variants: int = 0) -> Iterator[RefineCase]:
    for triplet in find_triplets(specs) if specs else []:
        c = read_triplet(*triplet)
        if not c.truth.any() or not c.coarse.any():
            log(f"{c.name}: {'truth' if not c.truth.any() else 'coarse'} mask empty; skipped")
            continue
        yield RefineCase(c.name, c.image, c.truth, c.coarse, c.spacing_zyx, set="given")
    for case, _seed, truth, coarse in simulated_cases(n_phantoms, False, log):
        yield RefineCase(case.name, case.image.array, truth, coarse, tuple(case.image.spacing_zyx), set="phantoms")
    if lits:
        from LiverTumorRefineLib.errors import RefineError

        try:
            for case, _seed, truth, coarse in simulated_cases(0, True, log):
                yield RefineCase(case.name, case.image.array, truth, coarse, tuple(case.image.spacing_zyx), set="lits117")
        except RefineError as exc:
            log(f"LiTS 117 unavailable, skipped: {exc}")
    for case in real_cases() if real_variants else []:
        truth = case.label.array == 2
        for v in range(real_variants):
            coarse = independent_coarse(truth, case.image.spacing_zyx, v)
            yield RefineCase(f"{case.name}#{v}", case.image.array, truth, coarse, tuple(case.image.spacing_zyx), set="real")


# ------------------------------------------------------------------------------ running and reporting
@dataclass
class Summary:
    set: str
    method: str
    n: int
    means: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    empty: int = 0  # results with no voxel: their distances are infinite and left out of the means


def run_method(method: Method, case: RefineCase) -> dict:
    t = time.perf_counter()
    pred = method(case.image, case.coarse, case.spacing_zyx)
    seconds = time.perf_counter() - t
    pred = np.asarray(pred)
    if pred.shape != case.coarse.shape:
        raise RuntimeError(f"returned shape {pred.shape}, expected {case.coarse.shape}")
    metrics = compute_metrics(case.truth, pred.astype(bool), case.spacing_zyx)
    return {**{k: float(metrics[k]) for k in KEYS}, "seconds": seconds}


def summarise(rows: list[dict], methods: Sequence[str]) -> list[Summary]:
    out = []
    for case_set in dict.fromkeys(r["set"] for r in rows):
        for method in methods:
            sel = [r for r in rows if r["set"] == case_set and r["method"] == method]
            ok = [r for r in sel if not r["error"]]
            if not sel:
                continue
            # An empty result has no surface, so no distance: a mean over it would be infinite and
            # hide every other case; the distances are the mean over the rest, and the count is shown.
            finite = [r for r in ok if math.isfinite(r["assd"])]
            means = {k: float(np.mean([r[k] for r in ok])) if ok else math.nan
                     for k in KEYS + ("seconds",) if k not in DISTANCE_KEYS}
            for k in DISTANCE_KEYS:
                means[k] = float(np.mean([r[k] for r in finite])) if finite else math.inf if ok else math.nan
            out.append(Summary(case_set, method, len(ok), means, len(sel) - len(ok), len(ok) - len(finite)))
    return out


CSV_FIELDS = ("set", "case", "method", "n_cases", "dice", "voe", "assd_mm", "mssd_mm", "seconds", "error")


def write_csv(path: Path, rows: list[dict], summaries: list[Summary]) -> None:
    """Per-case rows then one ``mean`` row per (set, method); written to a temporary file in the
    same folder and renamed over ``path``, so a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(suffix=".csv", prefix=f".{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({"set": r["set"], "case": r["case"], "method": r["method"], "n_cases": 1,
                                 "dice": _num(r["dice"]), "voe": _num(r["voe"]), "assd_mm": _num(r["assd"]),
                                 "mssd_mm": _num(r["mssd"]), "seconds": _num(r["seconds"]), "error": r["error"]})
            for s in summaries:
                m = s.means
                writer.writerow({"set": s.set, "case": "mean", "method": s.method, "n_cases": s.n,
                                 "dice": _num(m["dice"]), "voe": _num(m["voe"]), "assd_mm": _num(m["assd"]),
                                 "mssd_mm": _num(m["mssd"]), "seconds": _num(m["seconds"]),
                                 "error": _problems(s)})
        _readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _readable(path: str) -> None:
    """Give a mkstemp file (mode 0600) the permissions a plain open() would (0666 less umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _problems(s: Summary) -> str:
    """What a mean leaves out: failed runs, and empty results (left out of the distances only)."""
    parts = [f"{s.failed} failed"] if s.failed else []
    if s.empty:
        parts.append(f"{s.empty} empty: distances over {s.n - s.empty}")
    return "; ".join(parts)


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def format_table(summaries: list[Summary]) -> str:
    lines = []
    for case_set in dict.fromkeys(s.set for s in summaries):
        sel = [s for s in summaries if s.set == case_set]
        n = max(s.n + s.failed for s in sel)
        lines.append(f"{case_set} ({n} case{'s' if n != 1 else ''}):")
        lines.append(f"  {'method':<18} {'Dice':>6} {'VOE':>6} {'ASSD mm':>8} {'MSSD mm':>8} {'seconds':>8}")
        for s in sel:
            m = s.means
            problems = _problems(s)
            note = f"  ({problems})" if problems else ""
            lines.append(f"  {s.method:<18} {m['dice']:6.3f} {m['voe']:6.3f} {m['assd']:8.2f} {m['mssd']:8.1f} "
                         f"{m['seconds']:8.2f}{note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plot
PALETTE = [(120, 120, 120), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]


def write_plot(path: Path, summaries: list[Summary], methods: Sequence[str], use_matplotlib: bool = True) -> str:
    """Grouped bars of mean Dice and mean ASSD per method, one group per case set; written
    atomically. Uses matplotlib when importable, else draws the bars with numpy (no text: the
    colour key is returned for printing). Returns a note on how it was drawn."""
    sets = list(dict.fromkeys(s.set for s in summaries))
    value = {(s.set, s.method): s.means for s in summaries}
    if use_matplotlib:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.0 + 1.2 * len(sets) * len(methods) / 2), 4.5))
        width = 0.8 / max(len(methods), 1)
        for ax, key, title in ((axes[0], "dice", "mean Dice (higher is better)"),
                               (axes[1], "assd", "mean ASSD mm (lower is better)")):
            for j, method in enumerate(methods):
                ys = [value.get((s, method), {}).get(key, math.nan) for s in sets]
                ys = [y if math.isfinite(y) else math.nan for y in ys]
                ax.bar(np.arange(len(sets)) + (j - (len(methods) - 1) / 2) * width, ys, width,
                       label=method, color=[c / 255 for c in PALETTE[j % len(PALETTE)]])
            ax.set_xticks(np.arange(len(sets)), sets)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylim(0, 1)
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        handle, temporary = tempfile.mkstemp(suffix=".png", prefix=f".{path.stem}-", dir=path.parent)
        os.close(handle)
        try:
            fig.savefig(temporary, dpi=110)
            _readable(temporary)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        finally:
            plt.close(fig)
        return "matplotlib"
    from LiverTumorRefineLib.evaluate.overlay import write_png

    write_png(draw_bars(sets, methods, value), path)
    key = ", ".join(f"{m}=rgb{PALETTE[j % len(PALETTE)]}" for j, m in enumerate(methods))
    return f"numpy bars (no matplotlib): left Dice 0-1, right ASSD 0-max; colours {key}"


def draw_bars(sets: Sequence[str], methods: Sequence[str], value: dict) -> np.ndarray:
    """An RGB picture: two panels (Dice on 0-1, ASSD on 0-max), bars grouped by case set."""
    bar, gap, height, pad = 12, 18, 240, 20
    group = bar * len(methods) + gap
    panel_w = pad + group * len(sets)
    img = np.full((height + 2 * pad, 2 * panel_w + pad, 3), 255, np.uint8)
    assd_max = max([v.get("assd", 0.0) for v in value.values() if math.isfinite(v.get("assd", math.nan))] + [1e-6])
    for p, (key, top) in enumerate((("dice", 1.0), ("assd", assd_max))):
        x0 = pad + p * panel_w
        img[pad + height, x0:x0 + panel_w - pad] = 0  # axis
        img[pad:pad + height + 1, x0 - 1] = 0
        for i, s in enumerate(sets):
            for j, m in enumerate(methods):
                v = value.get((s, m), {}).get(key, math.nan)
                if not math.isfinite(v):
                    continue
                h = int(round(min(max(v / top, 0.0), 1.0) * height))
                x = x0 + gap // 2 + i * group + j * bar
                img[pad + height - h:pad + height, x:x + bar - 2] = PALETTE[j % len(PALETTE)]
    return img


# ------------------------------------------------------------------------------ main
def parse_models(specs: Sequence[str] | None) -> dict[str, str]:
    if specs:
        models = {}
        for spec in specs:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise SystemExit(f"--model {spec!r}: expected NAME=PATH")
            if not Path(path).is_file():
                raise SystemExit(f"--model {spec!r}: no such file {path}")
            models[name] = path
        return models
    return {name: str(path) for name, path in DEFAULT_MODELS.items() if path.is_file()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASES", help="folders/CT files of (CT, truth, coarse) triplets")
    parser.add_argument("--phantoms", type=int, default=0, metavar="N", help="held-out phantoms 90000..90000+N-1")
    parser.add_argument("--lits117", action="store_true", help="LiTS case 117")
    parser.add_argument("--real", type=int, default=0, metavar="V",
                        help="the real validation set with V independent coarse masks per case")
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare"), help="output folder (default runs/compare)")
    parser.add_argument("--model", action="append", metavar="NAME=PATH", help="a refinement model (repeatable)")
    args = parser.parse_args(argv)
    if not args.cases and not args.phantoms and not args.lits117 and not args.real:
        parser.error("no cases: give CASES, --phantoms N, --lits117 and/or --real V")

    models = parse_models(args.model)
    if not models:
        print("note: no --model given and no default model file "
              f"({', '.join(str(p) for p in DEFAULT_MODELS.values())}) exists; comparing classical methods only")
    methods: dict[str, Method] = dict(CLASSICAL)
    unavailable: dict[str, str] = {}
    try:
        growcut_class()
    except MethodUnavailable as exc:
        unavailable["grow-from-seeds"] = str(exc)
        del methods["grow-from-seeds"]
        print(f"grow-from-seeds UNAVAILABLE: {exc}")
    for name, path in models.items():
        if name in methods:
            raise SystemExit(f"--model name {name!r} clashes with a classical method; choose another")
        methods[name] = refiner_method(path)
        print(f"{name}: {path}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "compare.csv", out / "compare.png"
    rows: list[dict] = []
    names = list(methods)
    for case in iter_cases(args.cases, args.phantoms, args.lits117, real_variants=args.real):
        for name, method in methods.items():
            row = {"set": case.set, "case": case.name, "method": name, "error": ""}
            try:
                row.update(run_method(method, case))
            except Exception as exc:  # one method failing must not stop the comparison
                row.update({k: math.nan for k in KEYS + ("seconds",)}, error=f"{type(exc).__name__}: {exc}")
                print(f"{case.name:>14} {name:>16}: FAILED {row['error']}", flush=True)
            else:
                print(f"{case.name:>14} {name:>16}: Dice {row['dice']:.3f}  VOE {row['voe']:.3f}  ASSD {row['assd']:6.2f}"
                      f"  MSSD {row['mssd']:6.1f}  {row['seconds']:6.2f}s", flush=True)
            rows.append(row)
        write_csv(csv_path, rows, summarise(rows, names))
    if not rows:
        print("no cases ran")
        return 1
    summaries = summarise(rows, names)
    write_csv(csv_path, rows, summaries)
    how = write_plot(png_path, summaries, names)
    print()
    print(format_table(summaries))
    for name, why in unavailable.items():
        print(f"{name}: not run ({why})")
    print(f"\nwrote {csv_path} and {png_path} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
