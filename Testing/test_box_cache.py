"""Kept refined boxes (``Refiner.keep_boxes``, ``refine.result_cache``): a later call refines only the
boxes whose inputs changed, predicts only the patches whose inputs changed (int8 ONNX export), and its
result is the one a Refiner without kept boxes gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import blob_case
from LiverTumorRefineLib.refine.result_cache import ResultCache, digest
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.refine.weights import default_weights_path


def two_lesions():
    """Two blob lesions side by side, 77 mm apart (two boxes), on integer HU as a CT's are."""
    cases = [blob_case(seed, shape=(16, 64, 96)) for seed in (21, 22)]
    image = np.round(np.concatenate([c.image for c in cases], axis=2)).astype(np.float32)
    coarse = np.concatenate([c.coarse for c in cases], axis=2)
    return image, coarse, cases[0].spacing_zyx


def same(a, b) -> bool:
    """The same mask, disagreement and per-lesion decisions."""
    return (np.array_equal(a.mask, b.mask) and np.array_equal(a.uncertain, b.uncertain)
            and a.stats["lesions"] == b.stats["lesions"])


def test_a_second_call_refines_only_the_lesion_that_changed_and_gives_the_same_result(trained_model):
    image, coarse, spacing = two_lesions()
    kept = Refiner(trained_model, device="cpu", tta=2)
    kept.keep_boxes()
    first = kept.refine(image, coarse, spacing, passes=2)
    assert first.stats["boxes_reused"] == 0 and len(first.stats["crop_shapes"]) == 2
    again = kept.refine(image, coarse, spacing, passes=2)
    assert again.stats["boxes_reused"] == 4 and again.stats["patches"] == 0  # two boxes, two passes
    assert same(again, first)

    edited = coarse.copy()
    right = np.zeros_like(coarse)
    right[:, :, 96:] = True
    edited[right] = ndimage.binary_dilation(coarse, iterations=2)[right]  # the right lesion grown by 2 voxels
    changed = kept.refine(image, edited, spacing, passes=2)
    fresh = Refiner(trained_model, device="cpu", tta=2).refine(image, edited, spacing, passes=2)
    assert changed.stats["parenchyma_hu"] == first.stats["parenchyma_hu"]  # so the left box's inputs are the same
    assert changed.stats["boxes_reused"] >= 1 and 0 < changed.stats["patches"] < fresh.stats["patches"]
    assert same(changed, fresh) and changed.stats["voxels_changed"] == fresh.stats["voxels_changed"]


def test_later_passes_in_fewer_orientations_keep_their_own_boxes(trained_model):
    image, coarse, spacing = two_lesions()
    kept = Refiner(trained_model, device="cpu", tta=2)
    kept.keep_boxes()
    first = kept.refine(image, coarse, spacing, passes=2, later_tta=1)
    again = kept.refine(image, coarse, spacing, passes=2, later_tta=1)
    assert again.stats["boxes_reused"] == 4 and same(again, first)
    fresh = Refiner(trained_model, device="cpu", tta=2).refine(image, coarse, spacing, passes=2, later_tta=1)
    assert same(first, fresh)
    usual = kept.refine(image, coarse, spacing, passes=2)  # the first pass's boxes are shared, the second's are not
    assert usual.stats["boxes_reused"] == 2 and same(usual, Refiner(trained_model, device="cpu", tta=2).refine(
        image, coarse, spacing, passes=2))


def test_a_changed_option_or_ct_reuses_nothing(trained_model):
    image, coarse, spacing = two_lesions()
    refiner = Refiner(trained_model, device="cpu", tta=2)
    refiner.keep_boxes()
    refiner.refine(image, coarse, spacing)
    refiner.tta = 1  # options are part of the key
    assert refiner.refine(image, coarse, spacing).stats["boxes_reused"] == 0
    brighter = image.copy()
    brighter[:, :, :96] += 1.0  # the left lesion's CT changed by 1 HU
    assert refiner.refine(brighter, coarse, spacing).stats["boxes_reused"] == 0
    plain = Refiner(trained_model, device="cpu", tta=1)
    plain.refine(image, coarse, spacing)
    assert plain.refine(image, coarse, spacing).stats["boxes_reused"] == 0  # not asked to keep: nothing kept


def test_the_cache_keeps_its_byte_bound_and_drops_the_least_recently_used():
    cache = ResultCache(max_bytes=100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # now the most recently used
    cache.put("c", "C", 40)  # 120 bytes: "b" goes
    assert cache.get("b") is None and cache.get("c") == "C" and cache.nbytes == 80 and len(cache) == 2
    cache.put("huge", "H", 101)  # larger than the whole cache: not kept, nothing dropped for it
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("a", "A2", 10)  # kept again under the same key: its old size is given back
    assert cache.get("a") == "A2" and cache.nbytes == 50 and cache.hits == 3


@pytest.mark.parametrize("other", [np.zeros((2, 3), np.int16),  # another dtype
                                   np.zeros((3, 2), np.float32),  # another shape
                                   np.array([[0, 0, 0], [0, 0, 1]], np.float32)])  # another value
def test_the_digest_tells_dtype_shape_and_values_apart(other):
    base = np.zeros((2, 3), np.float32)
    assert digest(base) == digest(base.copy()) == digest(np.asfortranarray(base))
    assert digest(base) != digest(other)


def shipped_int8_refiner(**options) -> Refiner:
    """The shipped model in its int8 ONNX export (what the CPU runs when ONNX Runtime is installed)."""
    pytest.importorskip("onnxruntime")
    return Refiner(default_weights_path(), device="cpu", runtime="onnx", **options)


def test_the_int8_export_predicts_an_input_alike_in_any_batch():
    # what lets a kept Refiner keep a patch's prediction apart from the batch it was made in
    runtime = shipped_int8_refiner().runtime
    assert runtime.batch_invariant
    case = blob_case(3)
    x = torch.rand(70, 4, 48, 48) * 2 - 1
    x[:, -1] = torch.from_numpy(case.coarse[12, :48, :48]).float()  # a real mask channel, the same for all
    whole = runtime(x)
    for start, stop in ((0, 1), (5, 38), (64, 70)):
        assert torch.equal(runtime(x[start:stop].contiguous()), whole[start:stop])


def test_kept_patch_predictions_leave_the_result_as_a_fresh_refiners(trained_model):
    base = blob_case(4)
    image = np.round(base.image)
    edited = base.coarse.copy()
    edited[:, :, :40] = ndimage.binary_erosion(base.coarse, iterations=2)[:, :, :40]  # one side of the lesion moved in
    kept = shipped_int8_refiner(tta=2)
    kept.keep_boxes()
    first = kept.refine(image, base.coarse, base.spacing_zyx, passes=2)
    assert first.stats["patches_reused"] == 0
    changed = kept.refine(image, edited, base.spacing_zyx, passes=2)
    fresh = shipped_int8_refiner(tta=2).refine(image, edited, base.spacing_zyx, passes=2)
    assert changed.stats["boxes_reused"] == 0  # the box's mask changed ...
    assert 0 < changed.stats["patches_reused"] < changed.stats["patches"]  # ... but not along its other side
    assert fresh.stats["patches_reused"] == 0 and changed.stats["patches"] == fresh.stats["patches"]
    assert same(changed, fresh)
    torch_kept = Refiner(trained_model, device="cpu", runtime="torch")
    torch_kept.keep_boxes()
    assert torch_kept.boxes is not None and torch_kept.patches is None  # its logits depend on the batch
