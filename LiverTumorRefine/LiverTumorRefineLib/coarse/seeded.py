"""Coarse tumour masks from one click per lesion.

Per-voxel thresholds fail on liver lesions: contrast is often no larger than the noise, lesions
are textured, have necrotic cores or enhancing rims, and a threshold leaks into any touching
tissue of similar density. So each lesion is modelled as star-shaped around its click: rays are
cast in ``N_RAYS`` directions through a denoised crop, each ray's edge is where the mean
intensity over the next ``edge_window_mm`` differs most from the last in the direction from
lesion to liver (hypo- or hyperdense, decided from the click's surroundings), and a ray stops
where the intensity leaves plausible soft tissue (fat, air, bone) or the image. The edges are
then made consistent: each ray's edge is chosen again, preferring radii near the lesion's
median radius (or, for a lesion that stands out clearly from the noise, near its neighbouring
rays' radius, so elongated lesions keep their shape), and replaced by the median of its
neighbouring rays. The surface interpolated between the ray ends is the lesion's coarse mask. Every voxel belongs to at most one seed (the
nearest), so neighbouring lesions never merge; the Refiner then moves the boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.errors import RefineError

N_RAYS = 162


@dataclass(frozen=True)
class SeedConfig:
    """How a lesion is found around a click (millimetres, so behaviour does not depend on spacing)."""

    max_radius_mm: float = 40.0
    smooth_mm: float = 2.0  # Gaussian sigma of the denoising
    edge_window_mm: float = 3.0  # intensity is averaged over this length on each side of an edge
    ray_step_mm: float = 0.5
    core_mm: float = 3.0  # the click's surroundings that give the lesion's intensity
    reference_mm: float = 15.0  # ray samples beyond this give the liver's intensity
    tissue_hu: tuple[float, float] = (-40.0, 250.0)  # a ray leaving this range has left the liver
    radius_prior: float = 0.3  # log-normal width of the preference for the median radius
    neighbours: int = 7  # rays in each ray's median
    radius_range: tuple[float, float] = (0.6, 1.5)  # ray radii are clamped to this times the median
    # With a clear lesion (contrast at least ``clear_contrast`` times the voxel noise) the edges are
    # trusted: each ray prefers its ``local_rays`` neighbours' radius instead of the lesion's
    # median, and the clamp widens, so elongated and lobulated lesions keep their shape.
    clear_contrast: float = 3.0
    local_rays: int = 15
    clear_radius_range: tuple[float, float] = (0.5, 2.0)  # ray radii are clamped to this times the median
    # An enhancing rim around a necrotic core: beyond the core's edge the intensity overshoots the
    # liver's to the other side and falls back. When the rays' median profile beyond their edges
    # rises at least ``rim_min_hu`` past the liver's intensity and falls back below ``rim_fraction``
    # of that within ``rim_search_mm``, each ray's edge moves out to where its rim falls back.
    rim_min_hu: float = 16.0  # 0: never; chosen of 0, 8, 12, 16 on tuning phantoms 95000-95029
    rim_search_mm: float = 15.0
    rim_fraction: float = 0.5


# What the functions below use when given no config (bench/ scripts set it to compare settings).
DEFAULT = SeedConfig()


def ray_directions(n: int = N_RAYS) -> np.ndarray:
    """``n`` near-uniform unit vectors (z, y, x) on the sphere (a Fibonacci spiral)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = math.pi * (1 + math.sqrt(5)) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1)


def smoothed(crop: np.ndarray, spacing_zyx: Sequence[float], sigma_mm: float) -> np.ndarray:
    """Gaussian-denoised copy of ``crop`` (sigma in millimetres)."""
    image = sitk.GetImageFromArray(crop.astype(np.float32, copy=False))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_mm))


def sample_rays(image: np.ndarray, seed: Sequence[float], spacing_zyx: Sequence[float], directions: np.ndarray,
                radii_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear samples (rays, radii) of ``image`` along rays from ``seed`` (voxels, z y x), and
    whether each sample lies inside the image."""
    points = (np.asarray(seed, dtype=np.float64)[None, None, :]
              + directions[:, None, :] * radii_mm[None, :, None] / np.asarray(spacing_zyx)[None, None, :])
    size = np.array(image.shape, dtype=np.float64)
    normalised = 2 * points / np.maximum(size - 1, 1) - 1
    grid = torch.from_numpy(normalised[..., ::-1].astype(np.float32).copy())[None, None]  # grid_sample wants x, y, z
    values = F.grid_sample(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None], grid,
                           mode="bilinear", padding_mode="border", align_corners=True)[0, 0, 0].numpy()
    inside = ((points >= 0) & (points <= size - 1)).all(axis=-1)
    return values, inside


def voxel_noise(raw: np.ndarray, smooth: np.ndarray) -> float:
    """Robust standard deviation (HU) of what the denoising removed: the image's voxel noise."""
    residual = (raw.astype(np.float32, copy=False) - smooth).ravel()
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def ray_radii(image: np.ndarray, seed: Sequence[float], spacing_zyx: Sequence[float],
              cfg: SeedConfig | None = None, directions: np.ndarray | None = None,
              noise_hu: float = float("inf")) -> np.ndarray:
    """The lesion's radius (mm) along each ray from ``seed`` through the denoised ``image``;
    ``noise_hu`` is the voxel noise of the image before denoising (unknown: the lesion is
    treated as faint); ``cfg`` None: ``DEFAULT``."""
    cfg = cfg or DEFAULT
    directions = ray_directions() if directions is None else directions
    t = np.arange(0.0, cfg.max_radius_mm + cfg.ray_step_mm, cfg.ray_step_mm)
    values, inside = sample_rays(image, seed, spacing_zyx, directions, t)
    lesion_hu = float(np.median(values[:, t <= cfg.core_mm]))
    far = values[:, t >= cfg.reference_mm]
    far = far[(far > cfg.tissue_hu[0]) & (far < cfg.tissue_hu[1])]
    liver_hu = float(np.median(far)) if far.size else lesion_hu
    towards_liver = 1.0 if lesion_hu <= liver_hu else -1.0

    # edge strength at each radius: mean over the next window minus mean over the last
    n = max(int(round(cfg.edge_window_mm / cfg.ray_step_mm)), 1)
    cumulative = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    at = np.arange(n, len(t) - n)
    strength = towards_liver * ((cumulative[:, at + n] - cumulative[:, at]) - (cumulative[:, at] - cumulative[:, at - n])) / n
    left = ~inside | (values < cfg.tissue_hu[0]) | (values > cfg.tissue_hu[1])
    stop = np.where(left.any(axis=1), left.argmax(axis=1), len(t) - 1)  # first sample out of tissue
    reachable = at[None, :] < stop[:, None]
    stop_mm = t[stop]

    def strongest(weight: np.ndarray) -> np.ndarray:
        score = np.where(reachable, np.maximum(strength, 0) * weight, -np.inf)
        found = np.isfinite(score.max(axis=1)) & (score.max(axis=1) > 0)
        return np.where(found, np.minimum(t[at[score.argmax(axis=1)]], stop_mm), stop_mm)

    order = np.argsort(-directions @ directions.T, axis=1)
    neighbours = order[:, :cfg.neighbours]
    radii = strongest(np.ones((1, len(at))))
    clear = abs(lesion_hu - liver_hu) >= cfg.clear_contrast * noise_hu
    if clear:
        typical = np.maximum(np.median(radii[order[:, :cfg.local_rays]], axis=1), cfg.ray_step_mm)
    else:
        typical = np.full(len(radii), max(float(np.median(np.median(radii[neighbours], axis=1))), cfg.ray_step_mm))
    prior = np.exp(-np.log(np.maximum(t[at], cfg.ray_step_mm)[None, :] / typical[:, None]) ** 2 / (2 * cfg.radius_prior**2))
    radii = np.median(strongest(prior)[neighbours], axis=1)
    low, high = cfg.clear_radius_range if clear else cfg.radius_range
    median = float(np.median(radii))
    radii = np.clip(radii, low * median, high * median)
    outer = rim_edges(towards_liver * (values - liver_hu), t, radii, stop_mm, cfg)
    if outer is None:
        return radii
    outer = np.median(outer[neighbours], axis=1)
    median = float(np.median(outer))
    return np.clip(outer, low * median, high * median)


def rim_edges(overshoot: np.ndarray, t: np.ndarray, radii: np.ndarray, stop_mm: np.ndarray,
              cfg: SeedConfig) -> np.ndarray | None:
    """Each ray's outer edge of an enhancing rim, or None when the lesion has no rim.

    ``overshoot`` (rays, radii ``t``): how far past the liver's intensity, away from the lesion's
    core, each sample lies. Beyond each ray's edge (``radii``) the median over rays of the
    overshoot, ``cfg.rim_search_mm`` long, must peak at ``cfg.rim_min_hu`` or more and then fall
    below ``cfg.rim_fraction`` of its peak. A ray's edge then moves out to its first sample, after
    its own highest overshoot, below that fraction of the profile's peak (to the median profile's
    fall where no such sample lies within the search)."""
    if cfg.rim_min_hu <= 0:
        return None
    step = float(t[1] - t[0])
    offsets = np.arange(1, int(round(cfg.rim_search_mm / step)) + 1)
    index = np.searchsorted(t, radii)[:, None] + offsets[None, :]
    valid = (index < len(t))
    index = np.minimum(index, len(t) - 1)
    valid &= t[index] < stop_mm[:, None]
    beyond = np.where(valid, np.take_along_axis(overshoot, index, axis=1), np.nan)
    enough = valid.sum(axis=0) >= len(radii) // 2
    if not enough.any():
        return None
    profile = np.nanmedian(beyond[:, enough], axis=0)
    peak_at = int(np.argmax(profile))
    peak = float(profile[peak_at])
    level = cfg.rim_fraction * peak
    fall = np.nonzero(profile[peak_at:] < level)[0]
    if peak < cfg.rim_min_hu or not fall.size:
        return None
    typical = float(offsets[enough][peak_at + int(fall[0])]) * step
    own_peak = np.nanargmax(np.where(np.isnan(beyond), -np.inf, beyond), axis=1)
    after = (np.arange(len(offsets))[None, :] > own_peak[:, None]) & valid & (beyond < level)
    found = after.any(axis=1)
    return radii + np.where(found, offsets[after.argmax(axis=1)] * step, typical)


def star_mask(shape: Sequence[int], seed: Sequence[float], spacing_zyx: Sequence[float], directions: np.ndarray,
              radii_mm: np.ndarray) -> np.ndarray:
    """Voxels of a grid of ``shape`` inside the star-shaped surface with ``radii_mm`` along
    ``directions`` from ``seed`` (radii interpolated between the three nearest rays)."""
    axes = [(np.arange(n, dtype=np.float32) - c) * s for n, c, s in zip(shape, seed, spacing_zyx)]
    offsets = torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3))
    distance = offsets.norm(dim=1)
    radii = torch.from_numpy(radii_mm.astype(np.float32))
    # A voxel's radius is a weighted mean of three rays' radii, so it lies between the smallest and
    # the largest ray's: only the voxels between those two spheres need their nearest rays (for a
    # typical lesion a small part of the crop, whose voxel-by-ray products were most of the time).
    # The margins cover float rounding of the weights.
    low, high = float(radii.min()), float(radii.max())
    inside = distance <= low * (1.0 - 1e-5)
    between = (~inside & (distance <= high * (1.0 + 1e-5) + 1e-4)).nonzero().squeeze(1)
    unit = offsets[between] / distance[between].clamp_min(1e-6)[:, None]
    nearest = (unit @ torch.from_numpy(directions.T.astype(np.float32))).topk(3, dim=1)
    weights = torch.softmax(nearest.values * 50.0, dim=1)  # sharp: close to the nearest ray's radius
    radius = (radii[nearest.indices] * weights).sum(dim=1)
    inside[between] = distance[between] <= radius
    return inside.reshape(tuple(shape)).numpy()


def _crop_box(seed: Sequence[int], shape: Sequence[int], spacing_zyx: Sequence[float], radius_mm: float
              ) -> tuple[slice, ...]:
    return tuple(slice(max(int(c) - int(math.ceil(radius_mm / s)), 0), min(int(c) + int(math.ceil(radius_mm / s)) + 1, n))
                 for c, s, n in zip(seed, spacing_zyx, shape))


def check_seeds(seeds_zyx: Sequence[Sequence[float]], shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Seeds as integer voxel indices; a seed outside the image is an error naming it."""
    out = []
    for number, seed in enumerate(seeds_zyx, start=1):
        voxel = tuple(int(round(float(v))) for v in seed)
        if len(voxel) != 3 or any(not 0 <= v < n for v, n in zip(voxel, shape)):
            raise RefineError(f"Seed {number} at voxel (z, y, x) {voxel} lies outside the CT (size {tuple(shape)}): "
                              "place every seed inside a lesion on this CT.")
        out.append(voxel)
    return out


def seed_labels(image: np.ndarray, seeds_zyx: Sequence[Sequence[float]], spacing_zyx: Sequence[float],
                cfg: SeedConfig | None = None) -> np.ndarray:
    """Each seed's lesion as a label map (int16): 0 nothing, ``i + 1`` the lesion of seed ``i``.

    Seeds are voxel indices (z, y, x) of ``image`` (HU). A voxel nearer to another seed is never
    claimed, and a seed's lesion always contains the seed. ``cfg`` None: ``DEFAULT``."""
    cfg = cfg or DEFAULT
    seeds = check_seeds(seeds_zyx, image.shape)
    out = np.zeros(image.shape, dtype=np.int16)
    directions = ray_directions()
    points_mm = np.array(seeds, dtype=np.float64).reshape(-1, 3) * np.asarray(spacing_zyx)
    for i, seed in enumerate(seeds):
        box = _crop_box(seed, image.shape, spacing_zyx, cfg.max_radius_mm + 3 * cfg.smooth_mm)
        local = [v - b.start for v, b in zip(seed, box)]
        smooth = smoothed(image[box], spacing_zyx, cfg.smooth_mm)
        radii = ray_radii(smooth, local, spacing_zyx, cfg, directions, voxel_noise(image[box], smooth))
        lesion = star_mask(out[box].shape, local, spacing_zyx, directions, radii)
        lesion &= _nearest_seed_is(i, points_mm, box, spacing_zyx) & (out[box] == 0)
        lesion[tuple(local)] = True
        out[box][lesion] = i + 1
    return out


def grow_from_seeds(image: np.ndarray, seeds_zyx: Sequence[Sequence[float]], spacing_zyx: Sequence[float],
                    cfg: SeedConfig | None = None) -> np.ndarray:
    """A coarse tumour mask (bool): the union of the seeds' lesions (see ``seed_labels``)."""
    return seed_labels(image, seeds_zyx, spacing_zyx, cfg) > 0


def _nearest_seed_is(i: int, points_mm: np.ndarray, box: tuple[slice, ...], spacing_zyx: Sequence[float]) -> np.ndarray:
    """Voxels of ``box`` no farther from seed ``i`` than from any other seed."""
    axes = np.ix_(*((np.arange(b.start, b.stop) * s).astype(np.float32) for b, s in zip(box, spacing_zyx)))
    own = sum((a - p) ** 2 for a, p in zip(axes, points_mm[i]))
    nearest = np.ones(tuple(b.stop - b.start for b in box), dtype=bool)
    for j, other in enumerate(points_mm):
        if j != i:
            nearest &= own <= sum((a - p) ** 2 for a, p in zip(axes, other))
    return nearest


def nearest_seed_labels(shape: Sequence[int], seeds_zyx: Sequence[Sequence[float]],
                        spacing_zyx: Sequence[float]) -> np.ndarray:
    """Each voxel labelled ``i + 1`` for its nearest seed ``i`` (the seeds' Voronoi cells)."""
    box = tuple(slice(0, n) for n in shape)
    points_mm = np.array(seeds_zyx, dtype=np.float64).reshape(-1, 3) * np.asarray(spacing_zyx)
    out = np.zeros(tuple(shape), dtype=np.int16)
    for i in range(len(points_mm)):
        out[_nearest_seed_is(i, points_mm, box, spacing_zyx) & (out == 0)] = i + 1
    return out
