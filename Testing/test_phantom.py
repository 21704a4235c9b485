"""Synthetic phantoms: determinism, labels, plausible HU per tissue, grids, lesions, writing."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib.training import phantom
from LiverTumorRefineLib.training.phantom import LIVER, TUMOUR, generate, lesions
from LiverTumorRefineLib.training.phantom.anatomy import draw_anatomy
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.grid import Grid
from LiverTumorRefineLib.training.phantom.scanner import add_scanner
from LiverTumorRefineLib.training.phantom.shapes import Waves
from LiverTumorRefineLib.training.phantom.voxelgrid import draw_grid

SMALL = dict(size_xy=160, n_slices=24, spacing=(1.2, 1.2, 4.0))  # a few tenths of a second per case


@pytest.fixture(scope="module")
def default_cases() -> list[phantom.Case]:
    """Phantoms with every parameter drawn at random, as training uses them."""
    return [phantom.make_phantom(seed) for seed in (0, 1, 2)]


def _components(mask: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))


def _eroded(mask: np.ndarray) -> np.ndarray:
    """In-plane erosion by one voxel: drops the partial-volume rim."""
    inner = mask.copy()
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return inner


def test_same_seed_gives_the_same_case_and_other_seeds_differ():
    a, b, c = phantom.make_phantom(4, **SMALL), phantom.make_phantom(4, **SMALL), phantom.make_phantom(5, **SMALL)
    assert a.name == "phantom_4"
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    assert a.image.geometry == b.image.geometry
    assert not np.array_equal(a.label.array, c.label.array)


def test_arrays_labels_and_geometry(default_cases):
    for case in default_cases:
        image, label = case.image.array, case.label.array
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and case.image.geometry == case.label.geometry
        assert set(np.unique(label)) <= {0, LIVER, TUMOUR}
        assert np.isfinite(image).all() and np.array_equal(image, np.rint(image))
        assert case.image.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_random_grids_stay_in_the_documented_ranges(default_cases):
    for case in default_cases:
        s_x, s_y, s_z = case.image.geometry.spacing
        nz, ny, nx = case.image.array.shape
        assert s_x == s_y and 0.6 <= s_x <= 1.5 and 1.0 <= s_z <= 5.0
        assert ny == nx and 192 <= nx <= 320
        assert nz * ny * nx <= phantom.MAX_VOXELS
    origins = {case.image.geometry.origin for case in default_cases}
    assert len(origins) == len(default_cases)


def test_tissues_have_plausible_hu(default_cases):
    for case in default_cases:
        image, label = case.image.array, case.label.array
        liver = np.median(image[_eroded(label == LIVER)])
        assert 55 <= liver <= 140
        assert image.min() <= -900  # air, lung or bowel gas
        assert np.percentile(image, 99.9) >= 300  # bone
        body = (image > -500) & (label == 0)
        assert np.percentile(image[body], 10) < -50  # fat is the commonest soft tissue outside organs


def test_lesions_differ_from_liver_and_have_plausible_sizes(default_cases):
    for case in default_cases:
        image, label = case.image.array, case.label.array
        components = _components(label == TUMOUR)
        assert 1 <= components.max() <= 6
        voxel_mm3 = float(np.prod(case.image.spacing_zyx))
        liver_hu = np.median(image[_eroded(label == LIVER)])
        for k in range(1, components.max() + 1):
            lesion = components == k
            diameter = 2 * (3 * lesion.sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
            assert 2 <= diameter <= 70
        contrast = [abs(np.median(image[components == k]) - liver_hu) for k in range(1, components.max() + 1)]
        assert max(contrast) >= 8


def test_explicit_parameters_are_honoured():
    case = phantom.make_phantom(7, size_xy=200, n_slices=30, spacing=(0.8, 0.8, 3.0), n_tumours=3)
    assert case.image.array.shape == (30, 200, 200)
    assert case.image.geometry.spacing == (0.8, 0.8, 3.0)
    assert 1 <= _components(case.label.array == TUMOUR).max() <= 3


def test_write_case_round_trips_arrays_and_geometry(tmp_path):
    case = phantom.make_phantom(3, **SMALL)
    ct_path, label_path = phantom.write_case(case, tmp_path)
    assert (ct_path.name, label_path.name) == ("phantom_3_ct.nii.gz", "phantom_3_label.nii.gz")
    for path, volume in ((ct_path, case.image), (label_path, case.label)):
        image = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
        np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing, atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), volume.geometry.direction, atol=1e-6)


def test_write_phantoms_names_cases_by_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "make_phantom", functools.partial(phantom.make_phantom, **SMALL))
    paths = phantom.write_phantoms(tmp_path, 2, seed=40)
    assert [p.name for p in paths] == ["phantom_40_ct.nii.gz", "phantom_41_ct.nii.gz"]
    assert (tmp_path / "phantom_41_label.nii.gz").is_file()


# --------------------------------------------------------------------------------------------
# Realistic lesion appearance and scanner: each test forces one feature on a small case by
# overriding the drawn look (same random draws, so the images differ only by that feature)

LESION_GRID = dict(size_xy=160, n_slices=24, spacing=(1.0, 1.0, 2.5), n_tumours=1)
BIG_LESION_SEEDS = (1, 4)  # one lesion of radius about 19 and 26 mm on LESION_GRID
FLAT = Waves(np.zeros((1, 3)), np.zeros(1), np.zeros(1))
PLAIN = dict(texture=FLAT, mottle_hu=0.0, soft_mm=0.0, margin_mm=0.0, rim_delta=0.0, capsule_hu=0.0,
             halo_hu=0.0, necrosis_hu=None)


def _case_with_look(monkeypatch, seed: int, **changes) -> phantom.Case:
    draw = lesions.draw_look

    def forced(rng, phase, lesion):
        return dataclasses.replace(draw(rng, phase, lesion), **{**PLAIN, **changes})

    monkeypatch.setattr(lesions, "draw_look", forced)
    case = phantom.make_phantom(seed, **LESION_GRID)
    monkeypatch.setattr(lesions, "draw_look", draw)
    return case


def _distance_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Signed distance to the mask's surface, negative inside."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(distance)


def _lesion_regions(case: phantom.Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, signed distance to the tumour label (mm) and the liver without its partial-volume rim."""
    label = case.label.array
    assert (label == TUMOUR).sum() > 2000
    return case.image.array, _distance_mm(label == TUMOUR, case.image.spacing_zyx), _eroded(label == LIVER)


@pytest.mark.parametrize("seed", BIG_LESION_SEEDS)
def test_halo_darkens_the_liver_just_outside_the_tumour_but_is_not_tumour(monkeypatch, seed):
    plain = _case_with_look(monkeypatch, seed, delta=-20.0)
    halo = _case_with_look(monkeypatch, seed, delta=-20.0, halo_hu=-40.0, halo_mm=8.0)
    np.testing.assert_array_equal(halo.label.array, plain.label.array)
    image, distance, liver = _lesion_regions(halo)
    shell, far = liver & (distance > 3) & (distance < 6), liver & (distance > 20)
    assert np.median(image[shell]) < np.median(image[far]) - 10
    assert np.median(plain.image.array[shell]) > np.median(plain.image.array[far]) - 6  # without it, liver-like
    np.testing.assert_array_equal(image[far], plain.image.array[far])  # and it stays near the lesion


@pytest.mark.parametrize("seed", BIG_LESION_SEEDS)
def test_necrotic_core_is_fluid_like_and_labelled_tumour(monkeypatch, seed):
    solid = _case_with_look(monkeypatch, seed, delta=-20.0)
    necrotic = _case_with_look(monkeypatch, seed, delta=-20.0, necrosis_hu=15.0, core_depth=4.0, core_outline=FLAT,
                               core_patches=(), core_soft=0.3, wall_mm=2.0)
    np.testing.assert_array_equal(necrotic.label.array, solid.label.array)  # the truth is the outer boundary
    image, distance, liver = _lesion_regions(necrotic)
    tumour = necrotic.label.array == TUMOUR
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(tumour.astype(np.uint8))))
    np.testing.assert_array_equal(filled.astype(bool), tumour)
    core, wall = tumour & (distance < -7), tumour & (distance > -2)
    assert 0 <= np.median(image[core]) <= 30
    assert np.median(image[wall]) - np.median(image[core]) > 35  # a strong step inside the tumour
    assert np.median(image[liver & (distance > 20)]) - np.median(image[core]) > 50


@pytest.mark.parametrize("capsule_hu, delta", [(50.0, -30.0), (-50.0, 30.0)])
def test_capsule_is_a_thin_ring_inside_the_label(monkeypatch, capsule_hu, delta):
    plain = _case_with_look(monkeypatch, 1, delta=delta)
    capsule = _case_with_look(monkeypatch, 1, delta=delta, capsule_hu=capsule_hu, capsule_mm=2.0)
    np.testing.assert_array_equal(capsule.label.array, plain.label.array)
    image, distance, liver = _lesion_regions(capsule)
    tumour = capsule.label.array == TUMOUR
    ring, interior = tumour & (distance > -2.5), tumour & (distance < -4)  # the outer two voxel layers
    assert np.sign(capsule_hu) * (np.median(image[ring]) - np.median(plain.image.array[ring])) > 10
    np.testing.assert_array_equal(image[interior], plain.image.array[interior])


def test_enhancing_rim_lies_inside_the_label(monkeypatch):
    plain = _case_with_look(monkeypatch, 1, delta=-40.0)
    rim = _case_with_look(monkeypatch, 1, delta=-40.0, rim_delta=60.0, rim_mm=3.0, rim_irregular=0.5,
                          rim_cover=-math.inf)
    np.testing.assert_array_equal(rim.label.array, plain.label.array)
    brighter = np.clip(rim.image.array - plain.image.array, 0, None)
    # only blur and partial volume spill it outside
    assert brighter[rim.label.array == TUMOUR].sum() > 0.75 * brighter.sum() > 0
    distance = _distance_mm(rim.label.array == TUMOUR, rim.image.spacing_zyx)
    assert brighter[(distance > -3) & (distance < -0.5)].mean() > 2 * brighter[(distance > 1.5) & (distance < 4)].mean()


def test_infiltrative_margin_is_soft_with_the_label_at_its_mid_point(monkeypatch):
    sharp = _case_with_look(monkeypatch, 4, delta=-60.0)
    soft = _case_with_look(monkeypatch, 4, delta=-60.0, soft_mm=2.0, margin_mm=3.0)
    np.testing.assert_array_equal(soft.label.array, sharp.label.array)
    image, distance, liver = _lesion_regions(soft)
    liver_hu = np.median(image[liver & (distance > 20)])
    inside = np.median(image[(soft.label.array == TUMOUR) & (distance < -8)])
    def level(layer: np.ndarray) -> float:  # 0 lesion, 1 liver
        return float((np.median(image[layer]) - inside) / (liver_hu - inside))

    # the voxel layers either side of the label's surface are both well inside the transition
    inner = level((distance >= -1.5) & (distance < 0))
    outer = level((soft.label.array == LIVER) & (distance > 0) & (distance <= 1.5))
    assert 0.15 < inner < 0.45 and 0.4 < outer < 0.85 and inner < outer
    just_out = (distance > 2) & (distance < 4) & liver
    # the visible transition reaches further out than a sharp edge's
    assert np.median(image[just_out]) < np.median(sharp.image.array[just_out]) - 3


def test_ct_noise_is_correlated_like_a_reconstruction_kernel_not_white():
    grid = Grid((6, 128, 128), np.array([2.5, 0.75, 0.75]), np.zeros(3))
    correlations, stds = [], []
    for seed in range(8):
        canvas = Canvas(grid, np.full(grid.shape, 60.0, np.float32), np.zeros(grid.shape, np.uint8))
        add_scanner(canvas, np.random.default_rng(seed))
        noise = canvas.image[:, 32:96, 32:96] - canvas.image[:, 32:96, 32:96].mean(axis=(1, 2), keepdims=True)
        correlations.append(float((noise[:, :, 1:] * noise[:, :, :-1]).mean() / (noise**2).mean()))
        stds.append(float(noise.std()))
    assert all(0.3 < c < 0.95 for c in correlations), correlations
    assert all(7 < s < 50 for s in stds), stds
    white = np.random.default_rng(0).standard_normal((6, 64, 64))
    assert abs((white[:, :, 1:] * white[:, :, :-1]).mean()) < 0.05


def test_thick_slices_are_common_in_random_grids():
    slices = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        slices.append(draw_grid(rng, draw_anatomy(rng), None, None, None).spacing[0])
    slices = np.array(slices)
    assert 0.22 < np.mean(slices == 5.0) < 0.4
    assert np.mean(slices >= 4.0) > 0.35
    assert np.mean((slices >= 2.5) & (slices <= 3.0)) > 0.15
    assert np.mean(slices <= 2.0) > 0.15  # thin slices stay
    assert slices.min() >= 1.0 and slices.max() <= 5.0


def test_same_seed_gives_the_same_case_with_drawn_spacing():
    a, b = (phantom.make_phantom(11, size_xy=128, n_slices=20) for _ in range(2))
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
