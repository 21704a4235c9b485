"""Coarse tumour masks: simulated from the truth for training, or real predictions read from disk.

A coarse segmentation network gets the lesions roughly right and their boundaries wrong by a few
millimetres, as often too big as too small. ``simulate_coarse`` reproduces that per lesion:

- drift: the truth's signed distance thresholded at a smooth random drift (a systematic over- or
  under-segmentation plus a wandering part, 1-4 mm, strength random per lesion, over- and
  under-segmentation balanced in voxels over many cases);
- blocky edges of a low-resolution network (some cases);
- thick slices (>= ``THICK_SLICE_MM``): each slice's outline shifted by a voxel or two and grown or
  shrunk on its own, and now and then an end slice of the lesion missing or one extra;
- with the image: a missed outer rim whose HU is close to the surrounding liver (the mask stops at
  the strong inner edge), an included lesion-like halo around the lesion, and thin leaks along an
  adjacent vessel or lesion-like structure;
- small lesions sometimes missed, a few small false positives next to the lesions in liver-like
  tissue;
- optionally (``exact_share``) a share of the found lesions segmented right: their true mask, through
  the case's blocky edges if it has them, so that the network also sees edges it should leave alone.

Bound: every changed voxel of a found lesion lies within ``MAX_CHANGE_MM`` of its true surface
(the refinement network sees boundary errors, not a different problem), except vessel leaks,
which reach at most ``MAX_LEAK_MM`` from the surface and are thin (no more voxels than a tube of
radius ``LEAK_RADIUS_MM`` and length ``MAX_LEAK_MM``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Volume

MAX_DRIFT_MM = 4.0
MAX_BLOCK_MM = 3.0  # in-plane block of a low-resolution network
MAX_CHANGE_MM = 6.0  # no voxel further than this from a found lesion's surface changes, except leaks
MAX_LEAK_MM = 10.0  # a vessel leak reaches at most this far from the lesion's surface
LEAK_RADIUS_MM = 3.0  # and has at most the volume of a tube this wide and MAX_LEAK_MM long
THICK_SLICE_MM = 2.5  # slices at least this thick are segmented slice by slice: jitter, end slices
MIN_CONTRAST_HU = 15.0  # lesion-liver contrast below which rims and halos are not simulated
OVER = (0.1, 0.7)  # range of a case's chance that a lesion drifts outward: FP:FN voxels ~1:1 with the rest

# chances per found lesion
P_RIM = 0.3  # a liver-like outer rim is missed (image given)
P_HALO = 0.25  # a lesion-like halo around the lesion is included (image given)
P_LEAK = 0.3  # a finger follows an adjacent vessel or lesion-like structure (image given)
P_JITTER = 0.6  # thick slices: outlines shifted, grown or shrunk slice by slice
P_END_SLICE = 0.3  # thick slices: an end slice of the lesion missing or one extra


@dataclass(frozen=True)
class _CaseStyle:
    """What one coarse network is like on one case."""

    quality: float  # scales every lesion's drift: good and bad cases
    over: float  # chance that a lesion is over- rather than under-segmented
    block: tuple[int, int, int]  # low-resolution blocks (z, y, x) voxels; (1, 1, 1) for smooth output
    threshold: float  # fraction of a block that must be inside for the block to be on


def _draw_style(rng: np.random.Generator, spacing_zyx: Sequence[float]) -> _CaseStyle:
    block = (1, 1, 1)
    if rng.random() < 0.35:
        factor = min(int(rng.integers(2, 5)), max(1, int(MAX_BLOCK_MM // spacing_zyx[2])))
        block = (1, factor, factor)
    return _CaseStyle(rng.uniform(0.5, 1.3), rng.uniform(*OVER), block, rng.uniform(0.35, 0.65))


def _signed_distance(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) to the mask's surface, negative inside, with the surface half a
    voxel outside the boundary voxels so that ``< 0`` gives the mask back exactly."""

    def maurer(m: np.ndarray) -> np.ndarray:
        image = sitk.GetImageFromArray(m.astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
        distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        return sitk.GetArrayFromImage(distance)

    return 0.5 * (maurer(mask) - maurer(~mask))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing_zyx: Sequence[float],
                  wavelength_mm: tuple[float, float]) -> np.ndarray:
    """A smooth random field of unit RMS: a few random plane waves."""
    axes = np.ix_(*(np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing_zyx)))
    out = np.zeros(shape, np.float32)
    n_waves = 6
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        k = direction / np.linalg.norm(direction) * (2 * math.pi / rng.uniform(*wavelength_mm))
        out += np.sin(k[0] * axes[0] + k[1] * axes[1] + k[2] * axes[2] + rng.uniform(0, 2 * math.pi))
    return out * math.sqrt(2.0 / n_waves)


def _blocky(mask: np.ndarray, block: tuple[int, int, int], threshold: float) -> np.ndarray:
    """What a network working on ``block``-sized voxels outputs: block fractions, thresholded,
    repeated back to full resolution. Blocks are aligned with the array origin."""
    pads = [(0, -n % b) for n, b in zip(mask.shape, block)]
    padded = torch.from_numpy(np.pad(mask, pads).astype(np.float32))[None, None]
    coarse = F.avg_pool3d(padded, block, stride=block) >= threshold
    full = coarse[0, 0].numpy()
    for axis, b in enumerate(block):
        full = np.repeat(full, b, axis=axis)
    return full[tuple(slice(0, n) for n in mask.shape)]


def _case_edges(mask: np.ndarray, style: _CaseStyle) -> np.ndarray:
    """``mask`` with the case's blocky low-resolution edges where it has them, else as it is."""
    return _blocky(mask, style.block, style.threshold) if style.block != (1, 1, 1) else mask


def _lesion_boxes(truth: np.ndarray) -> tuple[np.ndarray, list[tuple[int, tuple[slice, ...], int]]]:
    """Connected lesions: the label array and, per lesion, (label, bounding box, voxel count)."""
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(truth.astype(np.uint8)), True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    boxes = []
    for k in stats.GetLabels():
        x, y, z, sx, sy, sz = stats.GetBoundingBox(k)
        boxes.append((k, (slice(z, z + sz), slice(y, y + sy), slice(x, x + sx)), stats.GetNumberOfPixels(k)))
    return sitk.GetArrayFromImage(labels), boxes


def _grown(box: tuple[slice, ...], shape: tuple[int, ...], margin: Sequence[int], block: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels, its start snapped to the block grid, clipped."""
    out = []
    for s, n, m, b in zip(box, shape, margin, block):
        start = max(0, s.start - m)
        out.append(slice(start - start % b, min(n, s.stop + m)))
    return tuple(out)


def _missed(rng: np.random.Generator, diameter_mm: float) -> bool:
    """Coarse networks drop small lesions now and then, big ones practically never."""
    chance = 0.35 if diameter_mm < 10 else 0.1 if diameter_mm < 20 else 0.0
    return rng.random() < chance


def _majority(mask: np.ndarray) -> np.ndarray:
    """A 3x3x3 majority vote: speckle from image noise removed, solid regions kept."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.avg_pool3d(t, 3, stride=1, padding=1, count_include_pad=False) > 0.5)[0, 0].numpy()


def _smoothed(image: np.ndarray) -> np.ndarray:
    """The image averaged over 3x3 in-plane voxels: what an intensity criterion sees through the noise."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
    return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)[:, 0].numpy()


def _shift(plane: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``plane`` moved by (dy, dx) voxels, zeros coming in."""
    out = np.zeros_like(plane)
    ny, nx = plane.shape
    out[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] = plane[max(-dy, 0):ny - max(dy, 0),
                                                                        max(-dx, 0):nx - max(dx, 0)]
    return out


def _jitter_slices(rng: np.random.Generator, coarse: np.ndarray) -> np.ndarray:
    """Thick slices segmented one by one: each slice's outline shifted by up to ``max_shift``
    voxels in-plane (70% of slices, ``max_shift`` 1 or 2 per lesion), and occasionally an end
    slice dropped or the end slice repeated one slice further."""
    out = coarse.copy()
    if rng.random() < P_JITTER:
        max_shift = int(rng.integers(1, 3))
        for z in range(out.shape[0]):
            if out[z].any() and rng.random() < 0.7:
                dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
                out[z] = _shift(out[z], dy, dx)
    if rng.random() < P_END_SLICE:
        on = np.flatnonzero(out.any(axis=(1, 2)))
        top = rng.random() < 0.5
        if on.size >= 3 and rng.random() < 0.5:  # an end slice missing
            out[on[0] if top else on[-1]] = False
        elif on.size:  # one extra: the end slice repeated beyond the lesion
            end = on[0] if top else on[-1]
            beyond = end - 1 if top else end + 1
            if 0 <= beyond < out.shape[0]:
                out[beyond] |= out[end]
    return out


def _intensity_errors(rng: np.random.Generator, coarse: np.ndarray, distance: np.ndarray,
                      smooth: Callable[[], np.ndarray] | None, radius_mm: float) -> np.ndarray:
    """Errors that follow the image: a liver-like outer rim missed, a lesion-like halo included.
    ``likeness`` is 0 at the lesion core's HU and 1 at the surrounding liver's."""
    rim, halo = rng.random() < P_RIM, rng.random() < P_HALO
    rim_depth = min(rng.uniform(2.0, MAX_CHANGE_MM), 0.6 * radius_mm)
    rim_cut, halo_width, halo_cut = rng.uniform(0.35, 0.6), rng.uniform(2.0, MAX_CHANGE_MM), rng.uniform(0.35, 0.6)
    if smooth is None or not (rim or halo):
        return coarse
    image = smooth()
    core = image[distance < 0.5 * distance.min()]
    around = image[(distance > 1.5) & (distance < MAX_CHANGE_MM)]
    if core.size == 0 or around.size == 0:
        return coarse
    lesion_hu, liver_hu = float(np.median(core)), float(np.median(around))
    if abs(liver_hu - lesion_hu) < MIN_CONTRAST_HU:
        return coarse
    likeness = (image - lesion_hu) / (liver_hu - lesion_hu)
    out = coarse.copy()
    if rim:
        out &= ~_majority((distance <= 0) & (distance > -rim_depth) & (likeness > rim_cut))
    if halo:
        out |= _majority((distance > 0) & (distance < halo_width) & (likeness < halo_cut))
    return out


def _leak(rng: np.random.Generator, distance: np.ndarray, image: np.ndarray | None,
          smooth: Callable[[], np.ndarray] | None, spacing_zyx: Sequence[float]) -> np.ndarray | None:
    """A thin finger along an adjacent structure: a connected region unlike the liver (a vessel,
    bright or dark, or lesion-like tissue) that touches the lesion, up to ``length`` mm from the
    surface. Unlike the liver both in ``image`` and in its ``smooth`` version: the structure
    itself, not its blurred edge or noise. None when there is no such region, or only a thick
    one (no leak then)."""
    if rng.random() >= P_LEAK:
        return None
    length = rng.uniform(4.0, MAX_LEAK_MM)
    pick = rng.random()
    if image is None or smooth is None:
        return None
    smooth = smooth()
    around = smooth[(distance > 1.5) & (distance < MAX_CHANGE_MM)]
    inside = smooth[distance < 0.5 * distance.min()]
    if around.size == 0 or inside.size == 0:
        return None
    liver_hu = float(np.median(around))
    unlike = max(20.0, 0.5 * abs(float(np.median(inside)) - liver_hu))
    candidate = (distance > 0) & (distance <= length) & (np.abs(smooth - liver_hu) >= unlike)
    candidate &= np.abs(image - liver_hu) >= unlike
    if not candidate.any():
        return None
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(candidate.astype(np.uint8)), True))
    touching = np.unique(labels[(distance > 0) & (distance <= 1.01 * max(spacing_zyx))])
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    voxel_mm3 = float(np.prod(spacing_zyx))
    cap = math.pi * LEAK_RADIUS_MM**2 * length / voxel_mm3
    sizes = np.bincount(labels.ravel())[touching]
    thin = touching[(sizes <= cap) & (sizes >= 2)]
    if thin.size == 0:
        return None
    return labels == thin[int(pick * thin.size)]


def _lesion_coarse(rng: np.random.Generator, lesion: np.ndarray, spacing_zyx: Sequence[float], style: _CaseStyle,
                   radius_mm: float, image: np.ndarray | None = None) -> np.ndarray:
    """One lesion's coarse mask (same crop as ``lesion`` and ``image``): the surface moved by a
    smooth, clipped drift, smaller on small lesions (a 3 mm error would erase a 5 mm lesion
    rather than outline it), then the slice, blocky and intensity errors, clipped to
    ``MAX_CHANGE_MM``, and possibly a vessel leak. Never empty when the lesion is not."""
    strength = min(rng.uniform(1.0, MAX_DRIFT_MM) * style.quality, 0.3 + 0.2 * radius_mm)
    sign = 1.0 if rng.random() < style.over else -1.0
    bias = sign * strength * rng.uniform(0.3, 1.0)
    wander = strength * rng.uniform(0.3, 0.8) * _smooth_field(rng, lesion.shape, spacing_zyx, (10.0, 40.0))
    thick = spacing_zyx[0] >= THICK_SLICE_MM
    if thick:  # each slice grown or shrunk on its own
        per_slice = rng.normal(0.0, rng.uniform(0.5, 1.5) * min(1.0, 0.2 * radius_mm), lesion.shape[0])
        wander = wander + per_slice.astype(np.float32)[:, None, None] * float(np.mean(spacing_zyx[1:]))
    drift = np.clip(bias + wander, -MAX_DRIFT_MM, MAX_DRIFT_MM)
    distance = _signed_distance(lesion, spacing_zyx)
    coarse = distance < drift
    first = coarse
    if thick:
        coarse = _jitter_slices(rng, coarse)
    coarse = _case_edges(coarse, style)
    cache: list[np.ndarray] = []

    def smooth() -> np.ndarray:  # only computed when an intensity behaviour needs it
        if not cache:
            cache.append(_smoothed(image))
        return cache[0]

    coarse = _intensity_errors(rng, coarse, distance, None if image is None else smooth, radius_mm)
    coarse = (coarse & (distance <= MAX_CHANGE_MM)) | (distance < -MAX_CHANGE_MM)  # the bound
    leak = _leak(rng, distance, image, None if image is None else smooth, spacing_zyx)
    if leak is not None:
        coarse |= leak
    if not (coarse & lesion).any():  # errors piled up on a tiny lesion: keep it found
        coarse = first if (first & lesion).any() else lesion.copy()
    return coarse


def _false_positives(rng: np.random.Generator, truth: np.ndarray, spacing_zyx: Sequence[float],
                     centres: list[np.ndarray], image: np.ndarray | None) -> np.ndarray:
    """0-3 small blobs 10-50 mm from a lesion centre, apart from every lesion, and in tissue
    that looks like the lesion's surroundings (the liver) when the image is given."""
    out = np.zeros(truth.shape, bool)
    n = min(3, int(rng.poisson(0.7)))
    if not centres or n == 0:
        return out
    spacing = np.asarray(spacing_zyx, float)
    liver_hu = _surrounding_hu(truth, image, centres[0], spacing) if image is not None else None
    for _ in range(n):
        for _try in range(50):
            direction = rng.normal(size=3)
            offset_mm = direction / np.linalg.norm(direction) * rng.uniform(10, 50)
            centre = np.rint(centres[rng.integers(len(centres))] + offset_mm / spacing).astype(int)
            if np.any(centre < 0) or np.any(centre >= truth.shape):
                continue
            if liver_hu is not None and abs(float(image[tuple(centre)]) - liver_hu) > 40:
                continue
            box, blob = _blob(rng, centre, spacing, truth.shape)
            if not truth[box].any():  # a separate finding, not a bump on a lesion
                out[box] |= blob
                break
    return out


def _surrounding_hu(truth: np.ndarray, image: np.ndarray, centre: np.ndarray, spacing: np.ndarray) -> float:
    """Median HU of a 40 mm cube around a lesion, outside the lesions: mostly liver."""
    half = np.ceil(20.0 / spacing).astype(int)
    box = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(centre, half))
    outside = ~truth[box]
    return float(np.median(image[box][outside])) if outside.any() else float(np.median(image[box]))


def _blob(rng: np.random.Generator, centre: np.ndarray, spacing: np.ndarray,
          shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """A small ellipsoid (diameter 4-12 mm) at ``centre``: its box (one voxel of margin) and mask."""
    radii = rng.uniform(2.0, 6.0) * rng.uniform(0.7, 1.3, 3)
    half = np.ceil(radii / spacing).astype(int) + 1
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    axes = np.ix_(*((np.arange(a, b) - c) * s / r for a, b, c, s, r in zip(lo, hi, centre, spacing, radii)))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2 <= 1.0


def simulate_coarse(truth: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator,
                    image: np.ndarray | None = None, exact_share: float = 0.0) -> np.ndarray:
    """A plausible coarse segmentation of the lesions in ``truth`` ((z, y, x) bool).

    Per lesion: boundary drift of up to ``MAX_DRIFT_MM`` (bias and smooth wander, random
    strength, outward or inward about equally often in voxels), slice-by-slice jitter and
    end-slice errors on thick slices, occasional misses of small lesions; with ``image`` (HU,
    same shape) also missed liver-like rims, included lesion-like halos and thin vessel leaks.
    Per case: sometimes blocky low-resolution edges, and a few small false positives near the
    lesions (in liver-like HU when ``image`` is given). Changes of a found lesion stay within
    ``MAX_CHANGE_MM`` of its surface, leaks within ``MAX_LEAK_MM``. ``exact_share``: the chance that a
    found lesion is segmented right instead (its true mask, blocky where the case is); at 0 no draw is
    made for it, so the masks are those of a simulator without the option. Deterministic for a given
    ``rng`` state.
    """
    if not 0.0 <= exact_share <= 1.0:
        raise RefineError(f"The share of exact lesions must be from 0 to 1 (got {exact_share}).")
    truth = np.asarray(truth, bool)
    spacing = np.asarray(spacing_zyx, float)
    style = _draw_style(rng, spacing_zyx)
    out = np.zeros(truth.shape, bool)
    labels, lesions = _lesion_boxes(truth)
    margin = np.ceil(MAX_LEAK_MM / spacing).astype(int) + 2  # room for the widest change, a leak
    centres = []
    voxel_mm3 = float(np.prod(spacing))
    largest = max((count for _, _, count in lesions), default=0)
    for k, box, count in lesions:
        centres.append(np.array([(s.start + s.stop - 1) // 2 for s in box]))
        radius = (3 * count * voxel_mm3 / (4 * math.pi)) ** (1 / 3)
        if count < largest and _missed(rng, 2 * radius):  # the main lesion is always found
            continue
        crop = _grown(box, truth.shape, margin, style.block)
        lesion = labels[crop] == k
        if exact_share and rng.random() < exact_share:
            out[crop] |= _case_edges(lesion, style)
            continue
        out[crop] |= _lesion_coarse(rng, lesion, spacing_zyx, style, radius, None if image is None else image[crop])
    return out | _false_positives(rng, truth, spacing_zyx, centres, image)


def tumour_mask(values: np.ndarray) -> np.ndarray:
    """Tumour voxels of a LiTS-style label map (0/1/2), a binary mask (any non-zero value) or a
    probability map (floats up to 1, >= 0.5)."""
    top = values.max() if values.size else 0
    if top == 2:
        return values == 2
    if np.issubdtype(values.dtype, np.floating) and top <= 1:
        return values >= 0.5
    return values != 0


_NIFTI = re.compile(r"^(?:[._-](?!\d)[^/]*)?\.nii(?:\.gz)?$")


def load_coarse_folder(folder: str | Path, case_name: str, reference: Volume | None = None) -> Volume:
    """The real coarse prediction for ``case_name`` in ``folder``: the one NIfTI file named
    ``<case_name>.nii[.gz]`` or ``<case_name>_<anything>.nii[.gz]`` (so ``liver_1`` does not
    pick up ``liver_10``). A LiTS-style label map (values 0/1/2) gives its tumour label, a binary
    mask its foreground, a probability map values >= 0.5. The volume is reoriented like the
    dataset readers, and put on ``reference``'s grid when one is given.
    """
    from LiverTumorRefineLib.volume import io
    from LiverTumorRefineLib.training.datasets import read_oriented

    folder = Path(folder)
    if not folder.is_dir():
        raise RefineError(f"Coarse prediction folder {folder} does not exist.")
    matches = sorted(p for p in folder.iterdir()
                     if p.name.startswith(case_name) and _NIFTI.match(p.name[len(case_name):]) and p.is_file())
    exact = [p for p in matches if p.name in (f"{case_name}.nii", f"{case_name}.nii.gz")]
    if len(exact) == 1:
        matches = exact
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) if matches else "none"
        raise RefineError(f"Expected one coarse prediction {case_name}[_*].nii[.gz] in {folder}, found {found}: "
                          "keep exactly one file per case.")
    volume = read_oriented(matches[0])
    mask = tumour_mask(volume.array)
    if reference is not None:
        itk = io.to_sitk(Volume(mask.astype(np.uint8), volume.geometry))
        mask = sitk.GetArrayFromImage(io.resample_mask_to(itk, io.to_sitk(reference))).astype(bool)
        return Volume(mask, reference.geometry)
    return Volume(mask, volume.geometry)
