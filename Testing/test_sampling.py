"""Boundary patch sampling and reassembly invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from LiverTumorRefineLib.refine import sampling
from LiverTumorRefineLib.config import PatchConfig
from LiverTumorRefineLib.refine.reassembly import Canvas

CFG = PatchConfig()


def ellipsoids(shape, spacing, seed, n=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float) * np.array(spacing)[:, None, None, None]
    mask = np.zeros(shape, bool)
    extent = np.array(shape) * np.array(spacing)
    for _ in range(n):
        c = rng.uniform(0, extent)
        r = rng.uniform(2, 15, 3)
        mask |= (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1
    return mask


def cut_and_paste(mask: np.ndarray, spacing, cfg=CFG):
    m = torch.from_numpy(mask)
    centres = sampling.place_centres(m, spacing, cfg)
    patches = sampling.cut_mask_patches(m, centres, spacing, cfg)
    canvas = Canvas(m.shape, m.device)
    canvas.add(patches.float(), centres, spacing, cfg)
    return centres, canvas


def test_band_is_both_sides_of_the_boundary():
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 3:6, 3:6] = True
    band = sampling.boundary_band(torch.from_numpy(mask)).numpy()[0]
    assert band[3:6, 3:6].sum() == 8 and not band[4, 4]  # the inner ring, not the centre
    assert band[2, 2:7].all() and band[6, 2:7].all()  # and the outer ring
    assert not band[0].any() and not band[:, 0].any()


@pytest.mark.parametrize("spacing", [(2.0, 0.8, 0.8), (5.0, 1.5, 0.6)])
def test_editable_band_reaches_band_mm_each_side_of_the_boundary(spacing):
    mask = np.zeros((2, 101, 101), bool)
    mask[:, 20:81, 20:81] = True
    band = sampling.editable_band(torch.from_numpy(mask), spacing, 6.0).numpy()
    ry, rx = int(6.0 / spacing[1]), int(6.0 / spacing[2])
    row = band[0, 50]  # a row through the middle crosses the left and right edges
    assert row[20 - rx:20 + rx].all() and not row[:20 - rx].any()  # rx voxels outside, rx inside
    assert not row[20 + rx:81 - rx].any() and row[81 - rx:81 + rx].all() and not row[81 + rx:].any()
    column = band[1, :, 50]
    assert column[20 - ry:20 + ry].all() and not column[20 + ry:81 - ry].any()
    assert sampling.editable_band(torch.from_numpy(mask), spacing, 0).all()  # 0: no limit


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (5.0, 1.5, 0.6), (1.0, 0.5, 0.5)])
@pytest.mark.parametrize("iou", [0.1, 0.35, 0.6])
def test_every_band_voxel_is_covered(spacing, iou):
    cfg = PatchConfig(nms_iou=iou)
    mask = torch.from_numpy(ellipsoids((20, 90, 100), spacing, seed=1))
    centres = sampling.place_centres(mask, spacing, cfg)
    band = sampling.boundary_band(mask)
    assert bool(band[tuple(centres.T)].all())  # centres lie on the band
    assert not bool((band & ~sampling.covered(centres, mask.shape, spacing, cfg)).any())


def test_nms_thins_patches_more_at_lower_iou():
    spacing = (2.5, 0.7, 0.7)
    mask = torch.from_numpy(ellipsoids((20, 90, 100), spacing, seed=2))
    counts = [len(sampling.place_centres(mask, spacing, PatchConfig(nms_iou=t))) for t in (0.2, 0.35, 0.6)]
    band = int(sampling.boundary_band(mask).sum())
    assert counts[0] < counts[1] < counts[2] < band / 5


@pytest.mark.parametrize("spacing, patch_px", [((2.5, 0.7, 0.7), 48), ((3.0, 0.93, 0.81), 48), ((5.0, 1.5, 0.6), 64),
                                               ((1.0, 0.5, 0.5), 64)])
def test_identity_patches_reproduce_the_input_exactly(spacing, patch_px):
    """Exact whenever patch pixels are no larger than the voxels (0.67 mm with the default 48 px)."""
    cfg = PatchConfig(patch_px=patch_px)
    assert cfg.pixel_mm <= min(spacing[1:])
    mask = ellipsoids((16, 80, 90), spacing, seed=3)
    _, canvas = cut_and_paste(mask, spacing, cfg)
    assert np.array_equal(canvas.result(torch.from_numpy(mask)).numpy(), mask)


def test_identity_patches_with_voxels_finer_than_pixels_move_only_the_boundary():
    """Pixels larger than voxels resample the outline: it may move, but by less than a pixel."""
    spacing = (5.0, 0.5, 0.5)
    mask = ellipsoids((16, 80, 90), spacing, seed=3)
    _, canvas = cut_and_paste(mask, spacing)
    out = canvas.result(torch.from_numpy(mask)).numpy()
    band = sampling.boundary_band(torch.from_numpy(mask)).numpy()  # voxels within one voxel of the boundary
    assert (out != mask).any() and not (out != mask)[~band].any()


def test_voxels_outside_every_patch_keep_the_coarse_label():
    spacing = (2.5, 0.8, 0.8)
    mask = ellipsoids((16, 120, 120), spacing, seed=4)
    m = torch.from_numpy(mask)
    centres = sampling.place_centres(m, spacing, CFG)
    canvas = Canvas(m.shape, m.device)
    canvas.add(1 - sampling.cut_mask_patches(m, centres, spacing, CFG).float(), centres, spacing, CFG)  # invert all
    out = canvas.result(m).numpy()
    inside = sampling.covered(centres, m.shape, spacing, CFG).numpy()
    assert np.array_equal(out[~inside], mask[~inside])
    assert np.array_equal(out[inside], ~mask[inside])


def test_overlapping_patches_are_averaged():
    spacing = (1.0, 1.0, 1.0)
    shape = (1, 40, 40)
    centres = torch.tensor([[0, 20, 15], [0, 20, 25]])
    canvas = Canvas(shape, torch.device("cpu"))
    P = CFG.patch_px
    canvas.add(torch.stack([torch.full((P, P), 0.8), torch.full((P, P), 0.1)]), centres, spacing, CFG)
    mean = (canvas.total / canvas.count.clamp(min=1)).view(shape)[0]
    assert mean[20, 20].item() == pytest.approx(0.45)  # both patches
    assert mean[20, 0].item() == pytest.approx(0.8)  # only the first (x 15-16 .. 15+15)
    assert mean[20, 39].item() == pytest.approx(0.1)


def test_patch_pixels_have_fixed_physical_size():
    """The same physical disc looks the same in patches cut from grids of different spacing."""
    means = []
    for s in (0.6, 0.9, 1.2):
        n = int(round(60 / s))
        yy, xx = np.indices((n, n)) * s
        image = np.where((yy - 30) ** 2 + (xx - 30) ** 2 < 10 ** 2, 0.0, 100.0)[None].repeat(3, 0).astype(np.float32)
        mask = torch.zeros((3, n, n), dtype=torch.bool)
        centre = torch.tensor([[1, int(round(30 / s)), int(round(30 / s))]])
        patch = sampling.extract_patches(torch.from_numpy(image), mask, centre, (2.0, s, s), CFG)
        means.append(float((patch[0, 1] < 50).float().mean()))  # dark fraction = disc area / patch area
    assert np.ptp(means) < 0.02
    assert means[0] == pytest.approx(np.pi * 10 ** 2 / 32 ** 2, abs=0.02)


def test_patch_channels_follow_the_config():
    spacing = (2.0, 0.8, 0.8)
    mask = torch.from_numpy(ellipsoids((10, 60, 60), spacing, seed=5))
    image = torch.randn(mask.shape) * 50 + 60
    centres = sampling.place_centres(mask, spacing, CFG)
    with_mask = sampling.extract_patches(image, mask, centres, spacing, CFG)
    no_mask = sampling.extract_patches(image, mask, centres, spacing, PatchConfig(use_mask=False))
    P = CFG.patch_px
    assert with_mask.shape[1:] == (4, P, P) and no_mask.shape[1:] == (3, P, P)
    assert torch.equal(with_mask[:, :3], no_mask)
    net_in = sampling.network_input(with_mask, CFG)
    assert float(net_in[:, :3].abs().max()) <= 1.0 and torch.equal(net_in[:, 3], with_mask[:, 3])


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(4, 48), st.integers(4, 48)),
    spacing=st.tuples(st.floats(0.5, 5.0), st.floats(CFG.pixel_mm * 1.001, 2.0), st.floats(CFG.pixel_mm * 1.001, 2.0)),
    seed=st.integers(0, 10_000),
    density=st.floats(0.05, 0.7),
)
def test_property_coverage_identity_and_untouched_outside(shape, spacing, seed, density):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    centres, canvas = cut_and_paste(mask, spacing)
    m = torch.from_numpy(mask)
    band = sampling.boundary_band(m)
    covered = sampling.covered(centres, m.shape, spacing, CFG)
    assert not bool((band & ~covered).any())
    assert np.array_equal(canvas.result(m).numpy(), mask)


@pytest.mark.parametrize("spacing", [(2.5, 0.75, 0.75), (1.0, 0.6, 1.3), (3.0, 2.0, 2.0)])
def test_editable_band_is_the_boundary_within_band_mm_along_each_axis(spacing):
    """The fast separable band equals its definition: voxels whose (2ry+1) x (2rx+1) in-plane box
    holds both inside and outside voxels, with ry, rx = band_mm in voxels."""
    rng = np.random.default_rng(3)
    mask = rng.random((4, 50, 60)) > 0.985
    mask[:, 20:35, 25:45] = True
    ry, rx = (max(1, int(6.0 / s)) for s in spacing[1:])
    padded = np.pad(mask, ((0, 0), (ry, ry), (rx, rx)), constant_values=False)
    # voxels beyond the image edge count neither as inside nor as outside (max-pool padding)
    in_image = np.pad(np.ones_like(mask), ((0, 0), (ry, ry), (rx, rx)), constant_values=False)
    any_in, any_out = np.zeros_like(mask), np.zeros_like(mask)
    for dy in range(2 * ry + 1):
        for dx in range(2 * rx + 1):
            window = (slice(None), slice(dy, dy + mask.shape[1]), slice(dx, dx + mask.shape[2]))
            any_in |= padded[window]
            any_out |= ~padded[window] & in_image[window]
    expected = any_in & any_out
    assert np.array_equal(sampling.editable_band(torch.from_numpy(mask), spacing, 6.0).numpy(), expected)


def _box_max_reference(mask: torch.Tensor, ry: int, rx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and min over each voxel's in-plane box (out-of-array voxels ignored) by 2D max pools."""
    m = mask.float()[:, None]
    kernel, padding = (2 * ry + 1, 2 * rx + 1), (ry, rx)
    high = torch.nn.functional.max_pool2d(m, kernel, stride=1, padding=padding)[:, 0]
    low = -torch.nn.functional.max_pool2d(-m, kernel, stride=1, padding=padding)[:, 0]
    return high, low


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 8), st.integers(1, 40), st.integers(1, 40)), ry=st.integers(1, 12),
       rx=st.integers(1, 12), density=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_box_filters_equal_max_pools_at_any_size(shape, ry, rx, density, seed):
    """The editable band and the parenchyma shell (running sums, a cost independent of the box
    size) are exactly what 2D max pools give, at the array's edges too."""
    mask = torch.from_numpy(np.random.default_rng(seed).random(shape) < density)
    band_mm = 6.0
    spacing = (2.5, band_mm / (ry + 0.5), band_mm / (rx + 0.5))  # int(band_mm / spacing) = ry, rx
    high, low = _box_max_reference(mask, ry, rx)
    assert torch.equal(sampling.editable_band(mask, spacing, band_mm), high != low)
    # the shell: every voxel's own value, so that the values returned name the voxels
    index = torch.arange(mask.numel(), dtype=torch.float32).reshape(shape) * 1e-3
    unit = (1.0, 1.0, 1.0)  # 1 mm pixels: the shell's radii in voxels are the SHELL_MM values
    inner_r, outer_r = (max(1, round(mm)) for mm in sampling.SHELL_MM)
    inner, _ = _box_max_reference(mask, inner_r, inner_r)
    outer, _ = _box_max_reference(mask, outer_r, outer_r)
    expected = index[(outer > 0) & ~(inner > 0)]
    assert torch.equal(sampling.shell_values(index, mask, unit).sort().values, expected.sort().values)


def trilinear_patches(image: torch.Tensor, centres: torch.Tensor, spacing, cfg=CFG) -> torch.Tensor:
    """The image channels as one 3D trilinear grid_sample over the whole array (how patches were
    cut before the windowed 2D form): the reference the fast form must equal."""
    n, p = len(centres), cfg.patch_px
    y, x = sampling.pixel_coordinates(centres, spacing, cfg)
    z = centres[:, 0, None].float() + torch.tensor(cfg.context_mm) / spacing[0]
    k = z.shape[1]

    def norm(c, size):
        return (2 * c + 1) / size - 1

    grid = torch.stack(torch.broadcast_tensors(norm(x, image.shape[2])[:, None, None, :].expand(n, k, p, p),
                                               norm(y, image.shape[1])[:, None, :, None].expand(n, k, p, p),
                                               norm(z, image.shape[0])[:, :, None, None].expand(n, k, p, p)), dim=-1)
    out = torch.nn.functional.grid_sample(image[None, None], grid.view(1, n * k, p, p, 3), mode="bilinear",
                                          padding_mode="border", align_corners=False)
    return out.view(n, k, p, p)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(1, 7), st.integers(1, 70), st.integers(1, 70)),
       spacing=st.tuples(st.floats(0.5, 5.0), st.floats(0.3, 3.0), st.floats(0.3, 3.0)), seed=st.integers(0, 10_000))
def test_patches_equal_one_trilinear_sample_of_the_volume(shape, spacing, seed):
    """Windowed bilinear per slice, blended in z, is trilinear sampling with edges replicated:
    at any spacing (finer or coarser than a patch pixel), crop size, and centres on the edges."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.normal(60, 80, shape).astype(np.float32))
    mask = torch.from_numpy(rng.random(shape) < 0.3)
    corners = [[0, 0, 0], [shape[0] - 1, shape[1] - 1, shape[2] - 1], [0, shape[1] - 1, 0]]
    inner = np.stack([rng.integers(0, s, 5) for s in shape], axis=1)
    centres = torch.from_numpy(np.concatenate([corners, inner]).astype(np.int64))
    patches = sampling.extract_patches(image, mask, centres, spacing, CFG)
    expected = trilinear_patches(image, centres, spacing)
    assert torch.allclose(patches[:, :3], expected, atol=0.01, rtol=0)  # float32 rounding of HU in the hundreds
    y, x = sampling.pixel_coordinates(centres, spacing, CFG)
    assert torch.equal(patches[:, 3].bool(), sampling.cut_mask(mask, centres, y, x))
