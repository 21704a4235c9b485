"""Lesion boxes: the Refiner crops one box per lesion cluster, with the same result as one box."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from conftest import blob_case
from LiverTumorRefineLib.refine import boxes
from LiverTumorRefineLib.refine import refiner
from LiverTumorRefineLib.refine.refiner import Refiner


def _overlap(a, b) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), margin=st.tuples(*[st.integers(0, 6)] * 3))
def test_boxes_are_disjoint_and_hold_every_lesion_with_its_margin(seed, n, margin):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(12, 70, 3))
    mask = np.zeros(shape, bool)
    for _ in range(n):
        lo = [int(rng.integers(0, s)) for s in shape]
        mask[tuple(slice(l, l + int(rng.integers(1, 6))) for l in lo)] = True
    found = boxes.lesion_boxes(mask, margin)
    assert all(not _overlap(a, b) for i, a in enumerate(found) for b in found[i + 1:])
    covered = np.zeros(shape, bool)
    for box in found:
        covered[box] = True
    grown = np.zeros(shape, bool)  # every foreground voxel's margin neighbourhood, clipped to the array
    for z, y, x in np.argwhere(mask):
        grown[max(z - margin[0], 0):z + margin[0] + 1, max(y - margin[1], 0):y + margin[1] + 1,
              max(x - margin[2], 0):x + margin[2] + 1] = True
    assert not (grown & ~covered).any()


def test_far_apart_lesions_get_small_boxes_of_their_own():
    mask = np.zeros((200, 300, 300), bool)
    mask[10:14, 10:20, 10:20] = True
    mask[180:186, 270:280, 270:290] = True
    found = boxes.lesion_boxes(mask, (2, 5, 5))
    assert [tuple(s.stop - s.start for s in b) for b in found] == [(8, 20, 20), (10, 20, 30)]


def test_refining_box_by_box_equals_one_box_around_everything(trained_model, monkeypatch):
    """Two blob lesions side by side in one volume, far enough apart for two boxes."""
    a, b = blob_case(1), blob_case(6)
    image = np.concatenate([a.image, np.full((24, 96, 64), 100, np.float32), b.image], axis=2)
    coarse = np.concatenate([a.coarse, np.zeros((24, 96, 64), bool), b.coarse], axis=2)
    tool = Refiner(trained_model, device="cpu", min_kept=0.5)
    split = tool.refine(image, coarse, a.spacing_zyx)
    assert len(split.stats["crop_shapes"]) == 2
    monkeypatch.setattr(refiner, "lesion_boxes", lambda mask, margin: [boxes.lesion_box(mask, margin)])
    whole = tool.refine(image, coarse, a.spacing_zyx)
    assert len(whole.stats["crop_shapes"]) == 1
    assert np.array_equal(split.mask, whole.mask) and (split.mask != coarse).any()
    assert split.stats["patches"] == whole.stats["patches"]


def test_label_boxes_bound_each_label_inclusively():
    from LiverTumorRefineLib.refine.boxes import label_boxes

    labels = np.zeros((5, 8, 9), np.uint32)
    labels[1:3, 2:5, 3:4] = 1
    labels[4, 7, 0:9] = 2
    boxes = label_boxes(labels, 3)
    assert len(boxes) == 4 and boxes[1] == (1, 2, 2, 4, 3, 3) and boxes[2] == (4, 4, 7, 7, 0, 8)
    assert boxes[3][0] > boxes[3][1] and boxes[0][0] > boxes[0][1]  # absent, and the background: empty


def test_component_labels_of_a_crop_are_those_of_the_whole_array():
    """Only the mask's bounding box is labelled; the numbering must still be the whole array's
    raster order, as SimpleITK gives it, and the result must own its memory."""
    import SimpleITK as sitk

    from LiverTumorRefineLib.refine.boxes import component_labels

    rng = np.random.default_rng(3)
    mask = np.zeros((20, 40, 50), bool)
    mask[6:14, 10:30, 12:40] = rng.random((8, 20, 28)) < 0.15  # many small components, some touching
    whole = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    labels = component_labels(mask)
    assert whole.max() > 20 and labels.dtype == np.uint32 and np.array_equal(labels, whole)
    assert labels.flags.owndata or labels.base is None or labels.base.flags.owndata
    empty = component_labels(np.zeros((3, 4, 5), bool))
    assert empty.shape == (3, 4, 5) and not empty.any()
