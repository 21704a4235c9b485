"""The Refiner end to end on arrays: it really refines, keeps what it must, reports its work."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import blob_case
from LiverTumorRefineLib.config import SEEDED_REFINEMENT, Passes
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics
from LiverTumorRefineLib.refine.refiner import Refiner


def test_trained_network_improves_held_out_lesions(trained_model):
    refiner = Refiner(trained_model, device="cpu")
    gains = []
    for seed in (100, 101, 102, 103):  # never seen in training (seeds 0-7)
        case = blob_case(seed)
        refined = refiner.refine(case.image, case.coarse, case.spacing_zyx).mask
        gains.append(compute_metrics(case.truth, refined, case.spacing_zyx)["dice"]
                     - compute_metrics(case.truth, case.coarse, case.spacing_zyx)["dice"])
    assert np.mean(gains) > 0.05, gains
    assert min(gains) > 0, gains


def test_voxels_far_from_the_boundary_keep_the_coarse_label(trained_model):
    case = blob_case(7, shape=(24, 160, 160))
    result = Refiner(trained_model, device="cpu").refine(case.image, case.coarse, case.spacing_zyx)
    changed = np.argwhere(result.mask != case.coarse)
    assert len(changed) == result.stats["voxels_changed"] > 0
    # Every change lies in the editable band: within band_mm of the coarse boundary in-plane.
    band_mm = trained_model.patch_config.band_mm
    assert band_mm > 0
    ry, rx = (int(band_mm / s) for s in case.spacing_zyx[1:])
    m = case.coarse
    for z, y, x in changed:
        window = m[z, max(y - ry, 0):y + ry + 1, max(x - rx, 0):x + rx + 1]
        assert window.any() and not window.all(), (z, y, x)  # both sides of the boundary within reach


def test_inputs_unchanged_and_stats_reported(trained_model):
    case = blob_case(3)
    image, coarse = case.image.copy(), case.coarse.copy()
    result = Refiner(trained_model, device="cpu", batch_size=7).refine(case.image, case.coarse, case.spacing_zyx)
    assert np.array_equal(image, case.image) and np.array_equal(coarse, case.coarse)
    assert result.mask.shape == coarse.shape and result.mask.dtype == bool
    assert result.stats["patches"] > 0 and result.stats["device"] == "cpu"
    assert {"sample", "extract", "infer", "reassemble", "total"} <= set(result.stats["seconds"])


def test_two_passes_refine_the_first_passs_result_again(trained_model):
    case = blob_case(4)
    refiner = Refiner(trained_model, device="cpu")
    once = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    again = refiner.refine(case.image, once.mask, case.spacing_zyx)
    seen = []
    twice = refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2,
                           progress=lambda fraction, message: seen.append((fraction, message)))
    assert np.array_equal(twice.mask, again.mask)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert seen[0][1].startswith("Pass 1 of 2: ") and seen[-1][1].startswith("Pass 2 of 2: ")
    assert twice.stats["passes"] == 2 and "passes" not in once.stats
    assert twice.stats["patches"] == once.stats["patches"] + again.stats["patches"]
    assert twice.stats["voxels_changed"] == int(np.count_nonzero(twice.mask != case.coarse))
    assert twice.stats["lesions"] == once.stats["lesions"]  # decisions against the coarse mask
    assert np.array_equal(twice.uncertain, once.uncertain | again.uncertain)
    for bad in (0, 5, 1.5, True):
        with pytest.raises(RefineError, match="passes must be a whole number from 1 to 4"):
            refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=bad)


class CountingRuntime:
    """A runtime that counts the network inputs it runs (and otherwise is the one it wraps)."""

    def __init__(self, runtime) -> None:
        self.runtime, self.inputs = runtime, 0

    def __call__(self, inputs):
        self.inputs += len(inputs)
        return self.runtime(inputs)

    def __getattr__(self, name):
        return getattr(self.runtime, name)


def test_later_passes_may_predict_in_fewer_orientations(trained_model):
    case = blob_case(4)
    refiner = Refiner(trained_model, device="cpu")
    refiner.runtime = CountingRuntime(refiner.runtime)
    once = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    again = Refiner(trained_model, device="cpu", tta=1).refine(case.image, once.mask, case.spacing_zyx)
    refiner.runtime.inputs = 0
    quicker = refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2, later_tta=1)
    # the network saw each first-pass patch in 4 orientations and each second-pass patch in one
    assert refiner.runtime.inputs == 4 * once.stats["patches"] + again.stats["patches"]
    assert np.array_equal(quicker.mask, again.mask) and np.array_equal(quicker.uncertain, once.uncertain | again.uncertain)
    assert quicker.stats["patches"] == once.stats["patches"] + again.stats["patches"]
    assert quicker.stats["tta"] == refiner.tta == 4 and quicker.stats["later_tta"] == 1  # the Refiner is not changed
    usual = refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2)
    assert usual.stats["later_tta"] == 4
    assert np.array_equal(refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2, later_tta=4).mask, usual.mask)
    assert refiner.with_tta(4) is refiner and refiner.with_tta(2).model is refiner.model
    for bad in (0, 9, 1.5, True):
        with pytest.raises(RefineError, match="test-time augmentations must be a whole number"):
            refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2, later_tta=bad)


def test_the_first_pass_may_predict_in_fewer_orientations(trained_model):
    case = blob_case(4)
    refiner = Refiner(trained_model, device="cpu")
    refiner.runtime = CountingRuntime(refiner.runtime)
    first = Refiner(trained_model, device="cpu", tta=2).refine(case.image, case.coarse, case.spacing_zyx)
    second = Refiner(trained_model, device="cpu", tta=1).refine(case.image, first.mask, case.spacing_zyx)
    refiner.runtime.inputs = 0
    both = refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=2, first_tta=2, later_tta=1)
    # the network saw each first-pass patch in 2 orientations and each second-pass patch in one
    assert refiner.runtime.inputs == 2 * first.stats["patches"] + second.stats["patches"]
    assert np.array_equal(both.mask, second.mask)
    assert both.stats["tta"] == 2 and both.stats["later_tta"] == 1 and refiner.tta == 4  # the Refiner is not changed
    once = refiner.refine(case.image, case.coarse, case.spacing_zyx, first_tta=2)  # one pass: the first alone
    assert np.array_equal(once.mask, first.mask) and once.stats["tta"] == 2
    with pytest.raises(RefineError, match="test-time augmentations must be a whole number"):
        refiner.refine(case.image, case.coarse, case.spacing_zyx, first_tta=0)


def test_a_seeded_refinement_runs_the_refiners_own_passes(trained_model):
    """``refine_seeded`` refines as the Refiner's ``seeded`` says (default ``config.SEEDED_REFINEMENT``),
    so the click path and the benchmarks that compare settings share one setting."""
    case = blob_case(4)
    shipped = Refiner(trained_model, device="cpu")
    assert shipped.seeded == SEEDED_REFINEMENT
    default = shipped.refine_seeded(case.image, case.coarse, case.spacing_zyx)
    spelled = shipped.refine(case.image, case.coarse, case.spacing_zyx, passes=SEEDED_REFINEMENT.count,
                             first_tta=SEEDED_REFINEMENT.first_tta, later_tta=SEEDED_REFINEMENT.later_tta)
    assert np.array_equal(default.mask, spelled.mask) and default.stats["tta"] == SEEDED_REFINEMENT.first_tta
    one = Refiner(trained_model, device="cpu", seeded=Passes(1, 1, None)).refine_seeded(case.image, case.coarse,
                                                                                          case.spacing_zyx)
    assert one.stats["tta"] == 1 and "passes" not in one.stats
    assert np.array_equal(one.mask, Refiner(trained_model, device="cpu", tta=1).refine(case.image, case.coarse,
                                                                                       case.spacing_zyx).mask)
    for bad, message in ((Passes(0), "passes must be a whole number"), (Passes(2, 9), "test-time augmentations"),
                         (Passes(2, 2, 0), "test-time augmentations"), ((2, 2, 2), "seeded must be a config.Passes")):
        with pytest.raises(RefineError, match=message):
            Refiner(trained_model, device="cpu", seeded=bad)


def test_cpu_refinement_is_deterministic_and_batch_size_independent(trained_model):
    case = blob_case(5)
    a = Refiner(trained_model, device="cpu", batch_size=128).refine(case.image, case.coarse, case.spacing_zyx).mask
    b = Refiner(trained_model, device="cpu", batch_size=5).refine(case.image, case.coarse, case.spacing_zyx).mask
    assert np.array_equal(a, b)


def test_progress_reports_and_cancel(trained_model):
    case = blob_case(2)
    seen = []
    Refiner(trained_model, device="cpu", batch_size=8).refine(case.image, case.coarse, case.spacing_zyx,
                                                              progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 3
    with pytest.raises(RefineCancelled):
        Refiner(trained_model, device="cpu", batch_size=8).refine(case.image, case.coarse, case.spacing_zyx,
                                                                  progress=lambda f, m: f < 0.5)


def test_overlapped_loop_equals_the_serial_loop_and_leaves_no_thread(trained_model, monkeypatch):
    """With ONNX Runtime a helper thread cuts and pastes while the network runs: the votes it
    pastes must be exactly the serial loop's, and a cancel part-way must not leave it running.
    (The overlapped loop is run here with the PyTorch runtime: the loop, not the runtime, is tested.)"""
    import threading

    case = blob_case(6)
    refiner = Refiner(trained_model, device="cpu", batch_size=12)
    serial = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    monkeypatch.setattr(Refiner, "_run_serial", Refiner._run_overlapped)
    overlapped = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    assert np.array_equal(overlapped.mask, serial.mask) and np.array_equal(overlapped.uncertain, serial.uncertain)
    assert overlapped.stats["lesions"] == serial.stats["lesions"]
    with pytest.raises(RefineCancelled):
        refiner.refine(case.image, case.coarse, case.spacing_zyx, progress=lambda f, m: f < 0.5)
    assert not [t for t in threading.enumerate() if t.name.startswith("refine-patches")]


def test_read_only_inputs_are_refined_without_warnings(trained_model):
    """The pipeline hands the Refiner a read-only view of the coarse mask (no copy at the peak).
    Where a lesion box spans the whole array its crop is that view itself, which PyTorch cannot
    wrap: it must be copied, not turned into a warning or an error."""
    import warnings

    from LiverTumorRefineLib.refine.boxes import crop_margin, lesion_boxes

    case = blob_case(2)
    (box,) = lesion_boxes(case.coarse, crop_margin(case.spacing_zyx, trained_model.patch_config))
    image, coarse = case.image[box].astype(np.float32), case.coarse[box].copy()  # the array is its lesion box
    image.flags.writeable = coarse.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = Refiner(trained_model, device="cpu").refine(image, coarse, case.spacing_zyx)
    expected = Refiner(trained_model, device="cpu").refine(image.copy(), coarse.copy(), case.spacing_zyx)
    assert result.stats["crop_shapes"] == [coarse.shape]  # the box is the whole array: the case this guards
    assert np.array_equal(result.mask, expected.mask)


@pytest.mark.parametrize("shift_mm", [2.5, -2.5])
def test_removal_needs_its_own_agreement_and_growth_is_untouched(trained_model, shift_mm):
    """A voxel leaves the tumour only when ``removal_agreement`` of the predictions agree, while
    growth keeps ``agreement``: a stricter removal never removes more coarse voxels and never
    changes what is added. (The lesion gate is off, min_kept=0, so only the voxel gate acts.)"""
    case = blob_case(7, coarse_shift_mm=shift_mm)  # over- and under-segmented

    def refined(removal: float) -> np.ndarray:
        refiner = Refiner(trained_model, device="cpu", min_kept=0.0, removal_agreement=removal)
        return refiner.refine(case.image, case.coarse, case.spacing_zyx).mask

    lenient, strict = refined(0.75), refined(1.0)
    removed = lambda mask: case.coarse & ~mask  # noqa: E731
    added = lambda mask: mask & ~case.coarse  # noqa: E731
    assert not (removed(strict) & ~removed(lenient)).any()
    assert np.array_equal(added(strict), added(lenient))
    if shift_mm > 0:  # over-segmented: removals happen, and some split 3 to 1, so the setting is exercised
        assert removed(strict).sum() < removed(lenient).sum()
    with pytest.raises(RefineError, match="removal_agreement must be between 0 and 1"):
        Refiner(trained_model, device="cpu", removal_agreement=1.5)


def test_nan_and_inf_voxels_do_not_poison_the_result(trained_model):
    case = blob_case(4)
    image = case.image.copy()
    image[::3, ::5, ::7] = np.nan
    image[1, :, :] = np.inf
    result = Refiner(trained_model, device="cpu").refine(image, case.coarse, case.spacing_zyx)
    assert result.mask.dtype == bool and result.mask.any()


@pytest.mark.parametrize("bad, message", [
    (dict(mask=np.zeros((24, 96, 96), bool)), "empty"),
    (dict(mask=np.ones((24, 96, 95), bool)), "different grids"),
    (dict(spacing=(0.0, 1.0, 1.0)), "spacing"),
])
def test_bad_input_is_refused_with_a_clear_message(trained_model, bad, message):
    case = blob_case(1)
    with pytest.raises(RefineError, match=message):
        Refiner(trained_model, device="cpu").refine(case.image, bad.get("mask", case.coarse), bad.get("spacing", case.spacing_zyx))


def test_cuda_requested_without_gpu_is_a_user_error(trained_model):
    import torch

    if torch.cuda.is_available():
        assert Refiner(trained_model, device="cuda").device.type == "cuda"
    else:
        with pytest.raises(RefineError, match="no CUDA GPU"):
            Refiner(trained_model, device="cuda")


def test_whole_volume_mask_is_refused(trained_model):
    case = blob_case(2)
    with pytest.raises(RefineError, match="every voxel"):
        Refiner(trained_model, device="cpu").refine(case.image, np.ones_like(case.coarse), case.spacing_zyx)


def test_runtime_chunk_size_does_not_change_the_mask_and_the_runtime_is_reported(trained_model):
    case = blob_case(4)
    refiner = Refiner(trained_model, device="cpu", runtime="torch")
    a = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    refiner.runtime.batch_size = 3  # the network sees 3 inputs at a time instead of its measured best
    b = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    assert np.array_equal(a.mask, b.mask)
    assert a.stats["runtime"] == "torch"
