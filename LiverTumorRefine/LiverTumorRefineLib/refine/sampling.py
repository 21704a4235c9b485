"""Boundary patch sampling: where patches go and what they contain.

Everything is vectorised tensor code that runs unchanged on CPU and CUDA. Coordinates are voxel
indices (z, y, x) of the array the functions receive (normally the crop around the lesions).

Coverage convention, shared with ``reassembly``: a patch centred on voxel ``c`` covers voxel ``v``
of the same slice when ``(v - c) * spacing`` lies in ``[-patch_mm/2, patch_mm/2)`` on both
in-plane axes; patch pixel ``i`` has its centre at ``(i + 0.5 - P/2) * pixel_mm`` from ``c``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F

from LiverTumorRefineLib.config import LIVER_REFERENCE_HU, PatchConfig


def clean_hu(image: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """float32 HU with NaN and -inf set to the window's low end and +inf to its high end."""
    low, high = window
    return torch.nan_to_num(image.float(), nan=low, posinf=high, neginf=low)


# Parenchyma estimate: the shell 3-15 mm outside the coarse lesions, soft-tissue HU only (fat, air
# and bone excluded), and the most common value there, since vessels and neighbouring organs are
# the minority of that shell while liver is the majority.
SHELL_MM = (3.0, 15.0)
SOFT_TISSUE_HU = (-30.0, 300.0)
MIN_SHELL_VOXELS = 200
PARENCHYMA_RANGE_HU = (20.0, 220.0)  # any liver, unenhanced to arterial; outside it the estimate is wrong


def shell_values(image: torch.Tensor, mask: torch.Tensor, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Soft-tissue HU in the in-plane shell ``SHELL_MM`` outside the coarse lesions of ``mask``.
    ``image`` clean HU and ``mask`` bool, both (Z, Y, X)."""
    inner, outer = (_dilated(mask, spacing_zyx, mm) for mm in SHELL_MM)
    low, high = SOFT_TISSUE_HU
    return image[outer & ~inner & (image > low) & (image < high)]


def parenchyma_from(values: torch.Tensor) -> float | None:
    """The liver parenchyma's HU from shell values (their most common value, refined by the
    median of its peak), or None when there are too few to tell or the value is no liver's."""
    if values.numel() < MIN_SHELL_VOXELS:
        return None
    low, high = SOFT_TISSUE_HU
    bins = int((high - low) / 5)
    hist = torch.histc(values.float(), bins=bins, min=low, max=high)
    hist = F.conv1d(hist[None, None], torch.tensor([[[1.0, 2.0, 3.0, 2.0, 1.0]]], device=hist.device), padding=2)[0, 0]
    mode = low + (float(hist.argmax()) + 0.5) * (high - low) / bins
    near = values[(values - mode).abs() <= 25]  # the liver's own peak, without vessels and organs
    estimate = float(near.median()) if near.numel() else mode
    lo, hi = PARENCHYMA_RANGE_HU
    return estimate if lo <= estimate <= hi else None


def parenchyma_hu(image: torch.Tensor, mask: torch.Tensor, spacing_zyx: Sequence[float]) -> float | None:
    """HU of the liver parenchyma around the coarse lesions of ``mask`` (see ``parenchyma_from``)."""
    return parenchyma_from(shell_values(image, mask, spacing_zyx))


def normalised(image: torch.Tensor, liver_hu: float | None, cfg: PatchConfig) -> torch.Tensor:
    """``image`` as the network expects it under ``cfg.normalise``: with "liver", shifted so the
    parenchyma (``liver_hu``, None when unknown: no shift) reads ``LIVER_REFERENCE_HU``."""
    if cfg.normalise != "liver" or liver_hu is None:
        return image
    return image + (LIVER_REFERENCE_HU - liver_hu)


def _dilated(mask: torch.Tensor, spacing_zyx: Sequence[float], mm: float) -> torch.Tensor:
    """``mask`` grown in-plane by ``mm`` (a square of that half-side), slab by slab."""
    ry, rx = (max(1, round(mm / s)) for s in spacing_zyx[1:])
    out = torch.empty(mask.shape, dtype=torch.bool, device=mask.device)
    for z in range(0, mask.shape[0], SLAB):
        out[z:z + SLAB] = _box_count(mask[z:z + SLAB], ry, rx) > 0
    return out


def network_input(patches: torch.Tensor, cfg: PatchConfig) -> torch.Tensor:
    """Patches as the network sees them: image channels clipped to the HU window and scaled to
    [-1, 1], the mask channel as is. Kept apart from cutting so training can augment in HU."""
    low, high = cfg.hu_window
    k = cfg.image_channels
    image = (patches[:, :k].clamp(low, high) - (low + high) / 2) / ((high - low) / 2)
    return torch.cat([image, patches[:, k:]], dim=1)


def boundary_band(mask: torch.Tensor) -> torch.Tensor:
    """In-plane boundary band on both sides: voxels whose 3x3 neighbourhood in their slice mixes
    inside and outside. (Z, Y, X) bool -> (Z, Y, X) bool."""
    return _mixed_within(mask, 1, 1)


def editable_band(mask: torch.Tensor, spacing_zyx: Sequence[float], band_mm: float) -> torch.Tensor:
    """Voxels refinement may change: within ``band_mm`` of the coarse boundary along each in-plane
    axis, on either side. Keeps a refinement to what it is for (moving the boundary by a few mm):
    a lesion core or distant tissue never flips, whatever one patch predicts. ``band_mm`` <= 0:
    everything. (Z, Y, X) bool -> (Z, Y, X) bool."""
    if band_mm <= 0:
        return torch.ones_like(mask, dtype=torch.bool)
    ry, rx = (max(1, int(band_mm / s)) for s in spacing_zyx[1:])
    return _mixed_within(mask, ry, rx)


# Slices per chunk of the in-plane filters: their float temporaries are several times the mask's
# size, which for a large lesion box was most of a refinement's peak memory.
SLAB = 8


def _mixed_within(mask: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """Voxels whose in-plane (2ry+1) x (2rx+1) box (the part inside the array) holds both inside
    and outside voxels, computed a few slices at a time (exact, since each slice is filtered on its
    own). (Z, Y, X) bool."""
    out = torch.empty(mask.shape, dtype=torch.bool, device=mask.device)
    inside = _in_array_count(mask.shape[1:], ry, rx, mask.device)
    for z in range(0, mask.shape[0], SLAB):
        count = _box_count(mask[z:z + SLAB], ry, rx)
        out[z:z + SLAB] = (count > 0) & (count < inside)
    return out


def _box_count(mask: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """Number of ``mask`` voxels in each voxel's in-plane (2ry+1) x (2rx+1) box (none counted
    outside the array), by running sums along y, then x: a cost independent of the box size,
    where a max pool's grows with it (the 15 mm parenchyma shell is a 41-voxel box side at
    0.75 mm). Integer arithmetic, so exact. (Z, Y, X) bool -> (Z, Y, X) int32."""
    return _window_sum(_window_sum(mask.to(torch.int32), ry, dim=1), rx, dim=2)


def _window_sum(values: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum over ``[i - r, i + r]`` along ``dim`` (zero beyond the ends): the difference of two
    views of one running sum over the values padded with zeros."""
    n = values.shape[dim]
    before, after = list(values.shape), list(values.shape)
    before[dim], after[dim] = r + 1, r
    padded = torch.cat([values.new_zeros(before), values, values.new_zeros(after)], dim)
    running = padded.cumsum(dim, dtype=torch.int32)
    return running.narrow(dim, 2 * r + 1, n) - running.narrow(dim, 0, n)


def _in_array_count(shape_yx: Sequence[int], ry: int, rx: int, device: torch.device) -> torch.Tensor:
    """Number of in-array voxels in each in-plane (2ry+1) x (2rx+1) box. (Y, X) int32."""
    def along(n: int, r: int) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=torch.int32)
        return torch.clamp(i + r, max=n - 1) - torch.clamp(i - r, min=0) + 1

    return along(shape_yx[0], ry)[:, None] * along(shape_yx[1], rx)[None, :]


def _half_extent_vox(spacing_zyx: Sequence[float], cfg: PatchConfig) -> tuple[float, float]:
    half = cfg.patch_mm / 2
    return half / spacing_zyx[1], half / spacing_zyx[2]


def _box_iou(a: torch.Tensor, b: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> torch.Tensor:
    """IoU of equal squares (side patch_mm) centred on voxels ``a`` and ``b`` (…, 3)."""
    side = cfg.patch_mm
    dy = ((a[..., 1] - b[..., 1]).abs() * spacing_zyx[1]).clamp(max=side)
    dx = ((a[..., 2] - b[..., 2]).abs() * spacing_zyx[2]).clamp(max=side)
    inter = (side - dy) * (side - dx)
    iou = inter / (2 * side * side - inter)
    return torch.where(a[..., 0] == b[..., 0], iou, torch.zeros_like(iou))


def _first_per_slice(slices: torch.Tensor, alive: torch.Tensor, n_slices: int) -> torch.Tensor:
    """Index of the first alive candidate in each slice (or -1 where none is alive)."""
    big = slices.numel()
    idx = torch.arange(big, device=slices.device)
    key = torch.where(alive, idx, torch.full_like(idx, big))
    first = torch.full((n_slices,), big, device=slices.device, dtype=idx.dtype)
    first.scatter_reduce_(0, slices, key, reduce="amin")
    return torch.where(first < big, first, torch.full_like(first, -1))


def nms_centres(candidates: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig, n_slices: int) -> torch.Tensor:
    """Greedy box NMS over candidate centres (BPR style), run for all slices at once.

    Each round keeps the first surviving candidate of every slice and suppresses the candidates
    of that slice whose box overlaps it with IoU above ``cfg.nms_iou``. Rounds = the largest
    number of patches kept in one slice, not the number of candidates.
    """
    if candidates.numel() == 0:
        return candidates
    slices = candidates[:, 0]
    alive = torch.ones(len(candidates), dtype=torch.bool, device=candidates.device)
    kept = []
    while bool(alive.any()):
        first = _first_per_slice(slices, alive, n_slices)
        chosen = first[first >= 0]
        kept.append(chosen)
        winner = candidates[first.clamp(min=0)[slices]]  # the chosen centre of each candidate's slice
        alive &= _box_iou(candidates, winner, spacing_zyx, cfg) <= cfg.nms_iou
        alive[chosen] = False
    return candidates[torch.cat(kept)]


def window_offsets(spacing_zyx: Sequence[float], cfg: PatchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel offsets (dy, dx) around a centre that a patch can cover, and the patch pixel index
    each one falls in (iy, ix; outside [0, P) means not covered)."""
    hy, hx = (math.ceil(h) for h in _half_extent_vox(spacing_zyx, cfg))
    dy = torch.arange(-hy, hy + 1, device=device)
    dx = torch.arange(-hx, hx + 1, device=device)
    p = cfg.patch_px
    iy = torch.floor(dy * (spacing_zyx[1] / cfg.pixel_mm) + p / 2).long()
    ix = torch.floor(dx * (spacing_zyx[2] / cfg.pixel_mm) + p / 2).long()
    return dy, dx, iy, ix


def covered(centres: torch.Tensor, shape: Sequence[int], spacing_zyx: Sequence[float], cfg: PatchConfig) -> torch.Tensor:
    """(Z, Y, X) bool: voxels inside at least one patch."""
    count = torch.zeros(int(shape[0] * shape[1] * shape[2]), device=centres.device)
    index, valid = patch_voxel_index(centres, shape, spacing_zyx, cfg)
    count.index_add_(0, index[valid], torch.ones(int(valid.sum()), device=centres.device))
    return count.view(*shape) > 0


def patch_voxel_index(centres: torch.Tensor, shape: Sequence[int], spacing_zyx: Sequence[float], cfg: PatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat voxel index of every (patch, dy, dx) window position and whether it is covered and
    inside the array. Shapes (N, Wy, Wx)."""
    dy, dx, iy, ix = window_offsets(spacing_zyx, cfg, centres.device)
    p = cfg.patch_px
    y = centres[:, 1, None, None] + dy[None, :, None]
    x = centres[:, 2, None, None] + dx[None, None, :]
    inside_patch = ((iy >= 0) & (iy < p))[:, None] & ((ix >= 0) & (ix < p))[None, :]
    valid = inside_patch[None] & (y >= 0) & (y < shape[1]) & (x >= 0) & (x < shape[2])
    index = (centres[:, 0, None, None] * shape[1] + y.clamp(0, shape[1] - 1)) * shape[2] + x.clamp(0, shape[2] - 1)
    return index, valid


def place_centres(mask: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> torch.Tensor:
    """Patch centres (N, 3) long along the boundary band so that every band voxel is covered.

    Dense candidates (every band voxel) are thinned by NMS; if the IoU threshold is low enough
    to leave band voxels uncovered, NMS is repeated on the uncovered ones until none remain.
    """
    band = boundary_band(mask)
    candidates = band.nonzero()
    centres = nms_centres(candidates, spacing_zyx, cfg, mask.shape[0])
    for _ in range(100):  # converges in one or two rounds; the bound only guards a bug
        uncovered = band & ~covered(centres, mask.shape, spacing_zyx, cfg)
        if not bool(uncovered.any()):
            return centres
        centres = torch.cat([centres, nms_centres(uncovered.nonzero(), spacing_zyx, cfg, mask.shape[0])])
    raise RuntimeError("patch placement did not converge")


def _pixel_offsets_vox(spacing: float, cfg: PatchConfig, device: torch.device) -> torch.Tensor:
    i = torch.arange(cfg.patch_px, device=device, dtype=torch.float32)
    return (i + 0.5 - cfg.patch_px / 2) * cfg.pixel_mm / spacing


def extract_patches(image: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> torch.Tensor:
    """Cut (N, C, P, P) patches: image channels in HU at the ``cfg.context_mm`` z offsets
    (trilinear, edges replicated) then, if ``cfg.use_mask``, the mask patch (nearest neighbour,
    0 outside). ``image`` is clean HU (``clean_hu``); ``mask`` is (Z, Y, X) bool.

    Trilinear is done as bilinear on the two slices around each z, blended: PyTorch's 2D
    grid_sample is vectorised on the CPU where the 3D one is not (3.5x faster over a whole
    refinement). Each patch samples only a small window cut around it, so the normalised
    coordinates keep full float32 precision whatever the crop's size.
    """
    n, p, dev = len(centres), cfg.patch_px, image.device
    if n == 0:
        return torch.zeros((0, cfg.in_channels, p, p), device=dev)
    depth, height, width = image.shape
    y, x = pixel_coordinates(centres, spacing_zyx, cfg)  # (N, P) each
    local_y, rows = _window(y, height, spacing_zyx[1], cfg)
    local_x, cols = _window(x, width, spacing_zyx[2], cfg)
    dz = torch.tensor(cfg.context_mm, device=dev, dtype=torch.float32) / spacing_zyx[0]
    z = (centres[:, 0, None].float() + dz[None]).clamp(0, depth - 1)  # (N, K)
    below = z.floor()
    weight = (z - below)[..., None, None]
    planes = torch.stack([below, (below + 1).clamp(max=depth - 1)], dim=-1).long()  # (N, K, 2)
    k, h, w = len(cfg.context_mm), rows.shape[1], cols.shape[1]
    windows = image[planes[..., None, None], rows[:, None, None, :, None], cols[:, None, None, None, :]]  # (N, K, 2, h, w)
    grid = torch.stack(torch.broadcast_tensors(((2 * local_x + 1) / w - 1)[:, None, :],
                                               ((2 * local_y + 1) / h - 1)[:, :, None]), dim=-1)  # (N, P, P, 2)
    grid = grid[:, None].expand(n, 2 * k, p, p, 2).reshape(n * 2 * k, p, p, 2)
    sampled = F.grid_sample(windows.float().reshape(n * 2 * k, 1, h, w), grid, mode="bilinear",
                            padding_mode="border", align_corners=False).view(n, k, 2, p, p)
    patches = torch.lerp(sampled[:, :, 0], sampled[:, :, 1], weight)
    if not cfg.use_mask:
        return patches
    return torch.cat([patches, cut_mask(mask, centres, y, x)[:, None].float()], dim=1)


def _window(coords: torch.Tensor, size: int, spacing: float, cfg: PatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``coords`` (N, P) along an axis of ``size`` voxels as coordinates in a
    window of voxels around each patch, and the window's voxel indices (N, w). Coordinates are
    clamped to the array and indices past its end repeat the last voxel, as border padding does."""
    clamped = coords.clamp(0, size - 1)
    extent = min(size, math.ceil((cfg.patch_px - 1) * cfg.pixel_mm / spacing) + 2)
    first = clamped[:, 0].floor()
    index = (first.long()[:, None] + torch.arange(extent, device=coords.device)[None]).clamp(max=size - 1)
    return clamped - first[:, None], index


def cut_mask(mask: torch.Tensor, centres: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour (N, P, P) bool patches of ``mask`` at pixel rows ``y`` and columns ``x``
    (voxel coordinates, (N, P) each) in the slices of ``centres``; False outside the array."""
    shape = mask.shape
    # Round half down: the exact inverse of the pixel each voxel falls in (``window_offsets``),
    # which is what makes cut-then-paste an identity when pixels are no larger than voxels.
    yi = torch.ceil(y - 0.5).long()
    xi = torch.ceil(x - 0.5).long()
    inside = ((yi >= 0) & (yi < shape[1]))[:, :, None] & ((xi >= 0) & (xi < shape[2]))[:, None, :]
    flat = (centres[:, 0, None, None] * shape[1] + yi.clamp(0, shape[1] - 1)[:, :, None]) * shape[2] + xi.clamp(0, shape[2] - 1)[:, None, :]
    return mask.reshape(-1)[flat] & inside


def pixel_coordinates(centres: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel coordinates (y, x) of the patch pixel centres, (N, P) each."""
    dev = centres.device
    y = centres[:, 1, None].float() + _pixel_offsets_vox(spacing_zyx[1], cfg, dev)[None]
    x = centres[:, 2, None].float() + _pixel_offsets_vox(spacing_zyx[2], cfg, dev)[None]
    return y, x


def cut_mask_patches(mask: torch.Tensor, centres: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> torch.Tensor:
    """(N, P, P) bool nearest-neighbour patches of ``mask`` (e.g. the truth, for training)."""
    y, x = pixel_coordinates(centres, spacing_zyx, cfg)
    return cut_mask(mask, centres, y, x)
