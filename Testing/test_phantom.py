"""Synthetic phantoms: determinism, labels, plausible HU per tissue, grids, lesions, writing."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib import phantom
from LiverTumorRefineLib.phantom import LIVER, TUMOUR

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
    monkeypatch.setattr(phantom, "make_phantom", functools.partial(phantom.make_phantom, **SMALL))
    paths = phantom.write_phantoms(tmp_path, 2, seed=40)
    assert [p.name for p in paths] == ["phantom_40_ct.nii.gz", "phantom_41_ct.nii.gz"]
    assert (tmp_path / "phantom_41_label.nii.gz").is_file()
