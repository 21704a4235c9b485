"""Metrics against medpy (the LiTS reference implementation) and their edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as mb

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import METRIC_KEYS, compute_metrics, dice, format_metrics_table

SPACINGS = [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7), (5.0, 0.8, 1.1), (0.6, 3.0, 1.7)]
SHAPES = [(12, 20, 20), (7, 31, 18), (25, 9, 16)]


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Union of random ellipsoids; centres may lie on or past the border so masks touch it."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        centre = [rng.uniform(-0.1, 1.1) * n for n in shape]
        radii = [rng.uniform(0.8, 0.45 * n) for n in shape]
        mask |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    return mask


def _medpy_metrics(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    jaccard = mb.jc(pred, truth)
    return {
        "dice": mb.dc(pred, truth),
        "jaccard": jaccard,
        "voe": 1.0 - jaccard,
        "rvd": mb.ravd(pred, truth),
        "assd": mb.assd(pred, truth, voxelspacing=spacing, connectivity=2),
        "mssd": mb.hd(pred, truth, voxelspacing=spacing, connectivity=2),
        "hd95": mb.hd95(pred, truth, voxelspacing=spacing, connectivity=2),
    }


def _assert_matches_medpy(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> None:
    ours = compute_metrics(truth, pred, spacing)
    expected = _medpy_metrics(truth, pred, spacing)
    assert set(ours) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(expected[key], abs=1e-6, rel=0), key


@pytest.mark.parametrize("seed", range(16))
def test_random_blobs_match_medpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = SHAPES[seed % len(SHAPES)]
    spacing = SPACINGS[seed % len(SPACINGS)]
    truth = _blobs(rng, shape, int(rng.integers(1, 4)))
    pred = _blobs(rng, shape, int(rng.integers(1, 4)))
    if not truth.any() or not pred.any():
        pytest.skip("medpy needs both masks non-empty")
    _assert_matches_medpy(truth, pred, spacing)


@pytest.mark.parametrize("seed", range(6))
def test_speckle_and_thin_structures_match_medpy(seed: int) -> None:
    """Sparse noise makes one-voxel-thin shapes whose whole body is surface."""
    rng = np.random.default_rng(100 + seed)
    shape = SHAPES[seed % len(SHAPES)]
    spacing = SPACINGS[seed % len(SPACINGS)]
    truth = rng.random(shape) < 0.05
    pred = rng.random(shape) < 0.3
    _assert_matches_medpy(truth, pred, spacing)


def test_perturbed_copy_matches_medpy() -> None:
    """A refined mask is usually close to the truth: few, small distances."""
    rng = np.random.default_rng(7)
    truth = _blobs(rng, (16, 24, 24), 2)
    pred = truth ^ (rng.random(truth.shape) < 0.02)
    _assert_matches_medpy(truth, pred, (2.5, 0.7, 0.7))


def test_full_volume_masks_match_medpy() -> None:
    """Every voxel set: only the volume border is surface (medpy erodes with background outside)."""
    truth = np.ones((5, 6, 7), dtype=bool)
    pred = truth.copy()
    pred[:, :, -1] = False
    _assert_matches_medpy(truth, pred, (5.0, 0.8, 1.1))


def test_distances_far_apart_in_large_volume() -> None:
    """Cropping to the masks must not change distances between far-apart objects."""
    truth = np.zeros((30, 40, 40), dtype=bool)
    pred = np.zeros_like(truth)
    truth[2:5, 3:7, 3:6] = True
    pred[25:29, 30:38, 33:40] = True
    _assert_matches_medpy(truth, pred, (2.5, 0.7, 0.7))


def test_identical_masks() -> None:
    rng = np.random.default_rng(3)
    mask = _blobs(rng, (10, 20, 20), 2)
    result = compute_metrics(mask, mask, (2.5, 0.7, 0.7))
    assert result["dice"] == 1.0 and result["jaccard"] == 1.0
    assert result["voe"] == 0.0 and result["rvd"] == 0.0
    assert result["assd"] == result["mssd"] == result["hd95"] == 0.0


def test_both_empty() -> None:
    empty = np.zeros((4, 5, 6), dtype=bool)
    assert compute_metrics(empty, empty, (1, 1, 1)) == {
        "dice": 1.0, "jaccard": 1.0, "voe": 0.0, "rvd": 0.0, "assd": 0.0, "mssd": 0.0, "hd95": 0.0,
    }


def test_empty_prediction() -> None:
    truth = np.zeros((4, 5, 6), dtype=bool)
    truth[1:3, 1:3, 1:3] = True
    result = compute_metrics(truth, np.zeros_like(truth), (1, 1, 1))
    assert result["dice"] == 0.0 and result["jaccard"] == 0.0 and result["voe"] == 1.0
    assert result["rvd"] == -1.0
    assert all(math.isinf(result[key]) for key in ("assd", "mssd", "hd95"))


def test_empty_truth() -> None:
    pred = np.zeros((4, 5, 6), dtype=bool)
    pred[2, 2, 2] = True
    result = compute_metrics(np.zeros_like(pred), pred, (1, 1, 1))
    assert result["dice"] == 0.0 and result["voe"] == 1.0
    assert math.isinf(result["rvd"])
    assert all(math.isinf(result[key]) for key in ("assd", "mssd", "hd95"))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(RefineError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        compute_metrics(np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), (1, 1, 1))


def test_inputs_not_modified_and_labels_read_as_foreground() -> None:
    rng = np.random.default_rng(5)
    truth = _blobs(rng, (10, 14, 14), 2).astype(np.uint8) * 2  # label value 2, not 1
    pred = _blobs(rng, (10, 14, 14), 2).astype(np.int16)
    truth_before, pred_before = truth.copy(), pred.copy()
    result = compute_metrics(truth, pred, (2.5, 0.7, 0.7))
    np.testing.assert_array_equal(truth, truth_before)
    np.testing.assert_array_equal(pred, pred_before)
    assert result == compute_metrics(truth > 0, pred > 0, (2.5, 0.7, 0.7))


def test_format_metrics_table() -> None:
    coarse = {
        "dice": 0.81234, "jaccard": 0.7, "voe": 0.3, "rvd": -0.1, "assd": 1.5, "mssd": 12.25, "hd95": 4.0,
    }
    refined = dict(coarse, dice=0.9, mssd=math.inf)
    lines = format_metrics_table({"coarse": coarse, "refined": refined}).splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["Dice", "VOE", "RVD", "ASSD", "mm", "MSSD", "mm", "HD95", "mm"]
    assert lines[1].split() == ["coarse", "0.812", "0.300", "-0.100", "1.500", "12.250", "4.000"]
    assert lines[2].split()[0] == "refined" and "inf" in lines[2]
    # Right-aligned columns: every row ends its cells at the same character positions.
    assert len({len(line) for line in lines}) == 1


def test_plain_dice_matches_the_full_metrics() -> None:
    rng = np.random.default_rng(5)
    truth = _blobs(rng, (12, 24, 24), 3)
    pred = truth | _blobs(rng, (12, 24, 24), 3)
    pred[:6] = False
    assert 0.0 < dice(truth, pred) < 1.0
    assert dice(truth, pred) == compute_metrics(truth, pred, (2.0, 1.0, 1.0))["dice"]
    empty = np.zeros_like(truth)
    assert dice(empty, empty) == 1.0 and dice(truth, empty) == 0.0
    with pytest.raises(RefineError, match="different shapes"):
        dice(truth, truth[1:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_lesion_in_a_large_volume_scores_as_on_its_own_box(seed: int) -> None:
    """The metrics are computed on the box of the two masks: the same masks placed anywhere in a
    much larger volume (touching its border or not) give exactly the same figures."""
    rng = np.random.default_rng(seed)
    truth = rng.random((9, 14, 12)) < 0.4
    pred = rng.random((9, 14, 12)) < 0.4
    spacing = (2.5, 0.8, 0.7)
    tight = compute_metrics(truth, pred, spacing)
    for offset in ((0, 0, 0), (5, 30, 17), (31, 86, 88)):
        big_truth, big_pred = np.zeros((40, 100, 100), bool), np.zeros((40, 100, 100), bool)
        box = tuple(slice(o, o + n) for o, n in zip(offset, truth.shape))
        big_truth[box], big_pred[box] = truth, pred
        assert compute_metrics(big_truth, big_pred, spacing) == tight
