"""Simulated coarse masks (realistic errors, only near the boundary) and reading real ones."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib.training import coarse_simulator as coarse

from LiverTumorRefineLib.training import phantom
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import dice
from LiverTumorRefineLib.training.phantom import TUMOUR
from LiverTumorRefineLib.volume.geometry import Geometry, Volume


@pytest.fixture(scope="module")
def cases() -> list[phantom.Case]:
    """Small-grid phantoms: real lesion shapes at a fraction of the cost."""
    return [phantom.make_phantom(seed, size_xy=160, n_slices=32, spacing=(1.2, 1.2, 3.0)) for seed in range(8)]


def _components(mask: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))


def _distance_to_surface(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """|signed distance| (mm) to the mask's surface, halfway between boundary voxels."""

    def maurer(m):
        image = sitk.GetImageFromArray(m.astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
        return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, False, False, True))

    return np.abs(0.5 * (maurer(mask) - maurer(~mask)))


def _simulate(case: phantom.Case, seed: int) -> tuple[np.ndarray, np.ndarray]:
    truth = case.label.array == TUMOUR
    return truth, coarse.simulate_coarse(truth, case.image.spacing_zyx, np.random.default_rng(seed), image=case.image.array)


def _assert_thin_leaks(beyond: np.ndarray, spacing_zyx) -> None:
    """Changes further than MAX_CHANGE_MM from the surface are vessel leaks: thin fingers."""
    cap = np.pi * coarse.LEAK_RADIUS_MM**2 * coarse.MAX_LEAK_MM / np.prod(spacing_zyx)
    labels = _components(beyond)
    assert all(size <= cap for size in np.bincount(labels.ravel())[1:])


def _ellipsoid(shape, spacing_zyx, centre_mm, radii_mm) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid mask and its normalised radius (1 on the surface) on a (z, y, x) grid."""
    axes = np.ix_(*((np.arange(n) * s - c) / r for n, s, c, r in zip(shape, spacing_zyx, centre_mm, radii_mm)))
    rho = np.sqrt(axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2)
    return rho <= 1.0, rho


def _liver_image(shape, rng, liver_hu=100.0, noise=8.0) -> np.ndarray:
    return (liver_hu + rng.normal(0.0, noise, shape)).astype(np.float32)


def test_same_rng_state_gives_the_same_mask(cases):
    truth, a = _simulate(cases[0], 3)
    _, b = _simulate(cases[0], 3)
    assert a.dtype == bool and a.shape == truth.shape
    np.testing.assert_array_equal(a, b)


def test_dice_spreads_like_a_coarse_network(cases):
    scores = [dice(*_simulate(case, seed)) for case in cases for seed in (0, 1)]
    assert max(scores) < 0.97  # never the truth itself
    assert 0.55 <= np.median(scores) <= 0.92
    assert max(scores) - min(scores) >= 0.1  # quality varies from case to case


def test_changes_stay_near_the_surface_except_false_positives_and_missed_lesions(cases):
    false_positives = 0
    for k, case in enumerate(cases):
        truth, mask = _simulate(case, 10 + k)
        lesions, blobs = _components(truth), _components(mask)
        found = set(np.unique(lesions[mask])) - {0}
        lost = (lesions > 0) & ~np.isin(lesions, list(found))
        stray = (blobs > 0) & ~np.isin(blobs, list(set(np.unique(blobs[truth])) - {0}))
        false_positives += len(set(np.unique(blobs[stray])) - {0})
        changed = (mask != truth) & ~lost & ~stray
        distance = _distance_to_surface(truth, case.image.spacing_zyx)
        assert distance[changed].max(initial=0) <= coarse.MAX_LEAK_MM
        _assert_thin_leaks(changed & (distance > coarse.MAX_CHANGE_MM), case.image.spacing_zyx)
        assert (mask & truth).any()  # the largest lesion is always found
        if stray.any():
            assert not (_components(stray) > 0)[truth].any()
    assert false_positives >= 1  # a few cases in eight have one


def test_small_lesions_are_sometimes_missed_big_ones_never():
    truth = np.zeros((20, 80, 80), bool)
    z, y, x = np.ogrid[:20, :80, :80]
    truth |= (z - 10) ** 2 * 4 + (y - 40) ** 2 + (x - 40) ** 2 <= 15**2  # 30 mm lesion at 1 mm in-plane
    for cy, cx in ((8, 8), (8, 72), (72, 8), (72, 72), (8, 40), (72, 40)):
        truth |= (z - 10) ** 2 * 4 + (y - cy) ** 2 + (x - cx) ** 2 <= 3**2  # 6 mm lesions
    big = _components(truth) == _components(truth)[10, 40, 40]
    small = _components(truth & ~big)
    found = []
    for seed in range(12):
        mask = coarse.simulate_coarse(truth, (2.0, 1.0, 1.0), np.random.default_rng(seed))
        assert (mask & big).sum() > 0.3 * big.sum()
        found.append(len(set(np.unique(small[mask])) - {0}))
    assert min(found) < 6 and max(found) > 0


def test_no_lesions_gives_an_empty_mask():
    empty = np.zeros((8, 32, 32), bool)
    assert not coarse.simulate_coarse(empty, (3.0, 1.0, 1.0), np.random.default_rng(0)).any()


def test_over_and_under_segmentation_balance():
    """As many false-positive as false-negative voxels over many lesions, each lesion either way."""
    spacing = (2.0, 1.0, 1.0)
    fp = fn = 0
    signs = []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        radii = rng.uniform(6.0, 14.0) * rng.uniform(0.8, 1.2, 3)
        truth, _ = _ellipsoid((20, 48, 48), spacing, (19.0, 24.0, 24.0), radii)
        image = _liver_image(truth.shape, rng)
        image[truth] -= 60.0  # a homogeneous hypodense lesion
        mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed), image=image)
        over, under = int((mask & ~truth).sum()), int((truth & ~mask).sum())
        fp, fn = fp + over, fn + under
        signs.append(over > under)
    assert 0.6 <= fp / fn <= 1.6
    assert 0.2 <= np.mean(signs) <= 0.8


def _shell_case(rng, shell_hu: float, halo_hu: float = 100.0):
    """A 12 mm radius lesion at HU 40 whose outer 4 mm have ``shell_hu``, in liver at HU 100 with
    a 4 mm ring of ``halo_hu`` around it."""
    spacing = (1.5, 1.0, 1.0)
    truth, rho = _ellipsoid((24, 44, 44), spacing, (18.0, 22.0, 22.0), (12.0, 12.0, 12.0))
    image = _liver_image(truth.shape, rng)
    image[rho <= 1.0 + 4.0 / 12.0] += halo_hu - 100.0
    image[truth] = 40.0 + rng.normal(0.0, 8.0, int(truth.sum()))
    shell = truth & (rho > 8.0 / 12.0)
    image[shell] += shell_hu - 40.0
    return truth, image, spacing, shell, (rho > 1.0 + 1.5 / 12.0) & (rho <= 1.0 + 3.5 / 12.0)


def test_a_liver_like_rim_is_missed_more_often_than_a_lesion_like_one():
    missed = {40.0: [], 95.0: []}
    for shell_hu in missed:
        for seed in range(24):
            truth, image, spacing, shell, _ = _shell_case(np.random.default_rng(seed), shell_hu)
            mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed), image=image)
            missed[shell_hu].append((shell & ~mask).sum() / shell.sum())
    assert np.mean(missed[95.0]) > np.mean(missed[40.0]) + 0.1
    assert sum(m > 0.6 for m in missed[95.0]) >= 3  # the mask stopping at the strong inner edge


def test_a_lesion_like_halo_is_included_more_often_than_liver():
    included = {100.0: [], 50.0: []}
    for halo_hu in included:
        for seed in range(24):
            truth, image, spacing, _, ring = _shell_case(np.random.default_rng(seed), 40.0, halo_hu)
            mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed), image=image)
            included[halo_hu].append((ring & mask).sum() / ring.sum())
    assert np.mean(included[50.0]) > np.mean(included[100.0]) + 0.05


@pytest.fixture
def no_false_positives(monkeypatch):
    """Only the lesions' own errors: no separate findings, which may land next to a lesion."""
    monkeypatch.setattr(coarse, "_false_positives", lambda rng, truth, *rest: np.zeros(truth.shape, bool))


def test_an_adjacent_vessel_is_sometimes_leaked_into_thinly(no_false_positives):
    spacing = (1.0, 1.0, 1.0)
    shape = (32, 56, 56)
    truth, _ = _ellipsoid(shape, spacing, (16.0, 28.0, 18.0), (9.0, 9.0, 9.0))
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    vessel = ((z - 16) ** 2 + (y - 28) ** 2 <= 2**2) & (x >= 24)  # a 4 mm bright tube from inside the lesion outwards
    distance = _distance_to_surface(truth, spacing)
    leaks = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image = _liver_image(shape, rng)
        image[truth] = 40.0 + rng.normal(0.0, 8.0, int(truth.sum()))
        image[vessel & ~truth] = 200.0
        mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed), image=image)
        beyond = mask & ~truth & (distance > coarse.MAX_CHANGE_MM)
        if beyond.any():
            leaks += 1
            assert not (beyond & ~vessel).any()  # along the vessel only
            assert distance[beyond].max() <= coarse.MAX_LEAK_MM
            _assert_thin_leaks(beyond, spacing)
    assert 3 <= leaks <= 25


def test_thick_slices_jitter_slice_by_slice(no_false_positives):
    """Per-slice area ratios (coarse / truth) jump more from slice to slice on 3 mm slices than on
    1 mm ones, compared at the same positions 3 mm apart (the smooth drift is the same on both)."""

    def jumps(spacing) -> float:
        shape = (int(round(30 / spacing[0])), 40, 40)
        truth, _ = _ellipsoid(shape, spacing, (15.0, 20.0, 20.0), (11.0, 12.0, 12.0))
        at = (np.arange(9.0, 22.0, 3.0) / spacing[0]).round().astype(int)  # the same z (mm) on both grids
        out = []
        for seed in range(16):
            mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed))
            ratio = (mask.sum(axis=(1, 2))[at] + 1) / truth.sum(axis=(1, 2))[at]
            out.append(np.std(np.diff(np.log(ratio))))
        return float(np.mean(out))

    assert jumps((3.0, 1.0, 1.0)) > 1.5 * jumps((1.0, 1.0, 1.0))


def test_without_an_image_only_geometric_errors_and_the_bound_holds(no_false_positives):
    spacing = (3.0, 1.0, 1.0)
    truth, _ = _ellipsoid((12, 40, 40), spacing, (16.0, 20.0, 20.0), (10.0, 12.0, 9.0))
    distance = _distance_to_surface(truth, spacing)
    for seed in range(10):
        mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed))
        assert (mask & truth).any()
        assert distance[mask != truth].max(initial=0) <= coarse.MAX_CHANGE_MM


# --- real coarse predictions ----------------------------------------------------------------


def _write(path, array, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetDirection([float(d) for d in direction])
    sitk.WriteImage(image, str(path))


def test_load_coarse_folder_matches_the_case_name_exactly(tmp_path):
    label_map = np.zeros((4, 10, 10), np.uint8)
    label_map[1:3, 2:8, 2:8] = 1
    label_map[1:3, 4:6, 4:6] = 2
    _write(tmp_path / "liver_1.nii.gz", label_map)
    _write(tmp_path / "liver_10.nii.gz", np.zeros((4, 10, 10), np.uint8))
    binary = (label_map > 0).astype(np.uint8) * 255
    _write(tmp_path / "phantom_3_coarse.nii.gz", binary)
    _write(tmp_path / "p7_prob.nii", np.where(label_map == 2, 0.8, 0.2).astype(np.float32))

    got = coarse.load_coarse_folder(tmp_path, "liver_1")
    np.testing.assert_array_equal(got.array, label_map == 2)  # the tumour label of a LiTS-style map
    assert got.geometry.spacing == pytest.approx((0.8, 0.8, 2.0))
    np.testing.assert_array_equal(coarse.load_coarse_folder(tmp_path, "phantom_3").array, label_map > 0)
    np.testing.assert_array_equal(coarse.load_coarse_folder(tmp_path, "p7").array, label_map == 2)
    with pytest.raises(RefineError, match="found none"):
        coarse.load_coarse_folder(tmp_path, "liver_2")
    _write(tmp_path / "phantom_3_v2.nii.gz", binary)
    with pytest.raises(RefineError, match="phantom_3_coarse.nii.gz, phantom_3_v2.nii.gz"):
        coarse.load_coarse_folder(tmp_path, "phantom_3")


def test_load_coarse_folder_reorients_and_resamples_onto_the_reference(tmp_path):
    mask = np.zeros((4, 10, 10), np.uint8)
    mask[1:3, 1:4, 5:9] = 1
    _write(tmp_path / "case.nii.gz", mask, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    got = coarse.load_coarse_folder(tmp_path, "case")
    assert got.geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(got.array, mask[:, ::-1, ::-1] > 0)
    reference = Volume(np.zeros((4, 10, 10), np.float32), got.geometry)
    on_grid = coarse.load_coarse_folder(tmp_path, "case", reference=reference)
    np.testing.assert_array_equal(on_grid.array, got.array)
    assert on_grid.geometry == reference.geometry
    shifted = Volume(reference.array, Geometry(got.geometry.spacing, tuple(np.add(got.geometry.origin, (0.8, 0, 0)))))
    moved = coarse.load_coarse_folder(tmp_path, "case", reference=shifted)
    np.testing.assert_array_equal(moved.array[:, :, :-1], got.array[:, :, 1:])


def test_an_exact_share_gives_some_lesions_their_true_mask(no_false_positives):
    spacing = (1.0, 1.0, 1.0)
    shape = (40, 40, 96)
    first, _ = _ellipsoid(shape, spacing, (20.0, 20.0, 22.0), (9.0, 9.0, 9.0))
    second, _ = _ellipsoid(shape, spacing, (20.0, 20.0, 70.0), (10.0, 8.0, 9.0))
    truth = first | second
    exact = changed = 0
    for seed in range(30):
        plain = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed))
        # at 0 no extra draw is made: the masks are those of the simulator without the option
        np.testing.assert_array_equal(plain, coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed),
                                                                    exact_share=0.0))
        mask = coarse.simulate_coarse(truth, spacing, np.random.default_rng(seed), exact_share=0.5)
        for lesion in (first, second):
            near = _distance_to_surface(lesion, spacing) <= coarse.MAX_CHANGE_MM
            region = lesion | (near & ~(truth & ~lesion))
            if np.array_equal(mask[region], lesion[region]):
                exact += 1
            else:
                changed += 1
    assert 15 <= exact <= 45 and changed >= 15  # about half of 60 lesions, blocky cases not counted exact
    # every found lesion exact: the truth itself, or its blocky copy where the case draws blocky
    # edges (a small lesion may still be missed)
    everything = [coarse.simulate_coarse(truth, spacing, np.random.default_rng(s), exact_share=1.0) for s in range(8)]
    outside = _distance_to_surface(truth, spacing) * ~truth
    assert any(np.array_equal(m, truth) for m in everything)
    assert all(outside[m].max(initial=0.0) <= coarse.MAX_BLOCK_MM for m in everything)
    with pytest.raises(RefineError, match="from 0 to 1"):
        coarse.simulate_coarse(truth, spacing, np.random.default_rng(0), exact_share=1.5)
