"""The intensity evidence gate: changes the CT's intensities contradict are refused."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import ball_mask, blob_case
from LiverTumorRefineLib import api, cli
from LiverTumorRefineLib.batch import BatchSettings
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine.intensity import CONTRAST_MIN_HU, gate_lesions, intensity_gate, label_medians
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.refine.weights import save_model
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

SHAPE, SPACING, CENTRE = (9, 64, 64), (2.0, 0.8, 0.8), (4, 32, 32)
LIVER_HU = 100.0


def ball(radius_mm: float) -> np.ndarray:
    return ball_mask(SHAPE, CENTRE, radius_mm, SPACING)


def lesion_image(lesion_hu: float, core_hu: float | None = None, core_mm: float = 6.0) -> np.ndarray:
    """Liver at 100 HU with a 12 mm-radius lesion (and optionally a darker centre)."""
    image = np.where(ball(12.0), lesion_hu, LIVER_HU).astype(np.float32)
    if core_hu is not None:
        image[ball(core_mm)] = core_hu
    return image


def test_additions_that_read_as_liver_and_removals_that_read_as_lesion_are_refused():
    image = lesion_image(40.0)
    coarse, grown = ball(10.0), ball(13.5)  # the refinement adds 2 mm of lesion and 1.5 mm of liver
    before = (image.copy(), coarse.copy(), grown.copy())
    out, (decision,) = intensity_gate(image, coarse, grown, LIVER_HU, SPACING)
    assert decision.applied and decision.lesion_hu == pytest.approx(40.0, abs=15)
    assert (out & ball(11.0) == ball(11.0)).all()  # the true lesion it added is kept
    assert not (out & ~ball(12.8)).any()  # the liver it added is refused (the blurred edge aside)
    assert decision.additions_refused > 0 and decision.removals_refused == 0
    for a, b in zip(before, (image, coarse, grown)):
        assert np.array_equal(a, b)  # inputs untouched

    shrunk = ball(9.0)  # a refinement that cuts 3 mm of lesion away
    out, (decision,) = intensity_gate(image, ball(12.0), shrunk, LIVER_HU, SPACING)
    assert not (out & ~ball(12.0)).any() and (out & ball(11.0) == ball(11.0)).all()  # all but the blurred edge back
    assert decision.removals_refused == int((out & ~shrunk).sum()) and decision.additions_refused == 0


@pytest.mark.parametrize("coarse_mm", [9.0, 13.5, 14.5])
def test_a_refinement_to_the_true_edge_passes_from_either_side(coarse_mm):
    """Under- or over-segmented by up to 2.5 mm: the lesion is read inside the refined outline, so
    liver in a too-large coarse mask does not make the removal of that liver look wrong."""
    out, (decision,) = intensity_gate(lesion_image(40.0), ball(coarse_mm), ball(12.0), LIVER_HU, SPACING)
    assert decision.applied and decision.lesion_hu == pytest.approx(40.0, abs=2)
    assert decision.removals_refused == 0 and decision.additions_refused <= 4  # at most a few blurred edge voxels
    assert int((out != ball(12.0)).sum()) == decision.additions_refused


def test_no_contrast_no_gate():
    image = lesion_image(LIVER_HU - CONTRAST_MIN_HU / 2)  # nearly isodense: intensity cannot tell
    out, (decision,) = intensity_gate(image, ball(10.0), ball(13.5), LIVER_HU, SPACING)
    assert not decision.applied and np.array_equal(out, ball(13.5))
    out, decisions = intensity_gate(lesion_image(40.0), ball(10.0), ball(13.5), None, SPACING)  # no liver estimate
    assert decisions == [] and np.array_equal(out, ball(13.5))


def test_the_lesion_reads_at_its_edge_not_its_necrotic_centre():
    """A margin close to the liver and a dark necrotic centre: the margin the refiner adds is the
    lesion as the edge band reads it (a centre-based reference would call it liver)."""
    image = lesion_image(75.0, core_hu=10.0, core_mm=8.0)  # margin 75 HU, centre 10 HU, liver 100
    out, (decision,) = intensity_gate(image, ball(10.0), ball(12.0), LIVER_HU, SPACING)
    assert decision.applied and decision.lesion_hu == pytest.approx(75.0, abs=8)
    assert (out & ball(11.0) == ball(11.0)).all()  # only the blurred edge is refused


def test_refiner_reports_the_gate_and_it_only_takes_changes_back(trained_model):
    case = blob_case(3, coarse_shift_mm=3.0)  # over-segmented by 3 mm
    plain = Refiner(trained_model, device="cpu", min_kept=0.0, intensity_gate=False).refine(
        case.image, case.coarse, case.spacing_zyx)
    gated = Refiner(trained_model, device="cpu", min_kept=0.0).refine(case.image, case.coarse, case.spacing_zyx)
    assert "intensity_gate" not in plain.stats
    entry = gated.stats["intensity_gate"]
    assert entry["lesions"] == entry["applied"] == 1
    changed_plain, changed_gated = plain.mask != case.coarse, gated.mask != case.coarse
    assert not (changed_gated & ~changed_plain).any()  # the gate never makes a change of its own
    assert int((changed_plain & ~changed_gated).sum()) == entry["additions_refused"] + entry["removals_refused"] > 0
    with pytest.raises(RefineError, match="intensity_gate must be True or False"):
        Refiner(trained_model, device="cpu", intensity_gate="yes")


def test_cli_api_and_batch_take_the_gate(trained_model, tmp_path):
    case = blob_case(5, coarse_shift_mm=3.0)
    paths = {"ct": tmp_path / "ct.nii.gz", "coarse": tmp_path / "coarse.nii.gz", "weights": tmp_path / "model.pt"}
    geometry = Geometry(spacing=tuple(reversed(case.spacing_zyx)))
    io.write_volume(Volume(case.image, geometry), paths["ct"])
    io.write_volume(Volume(case.coarse.astype(np.uint8), geometry), paths["coarse"])
    save_model(trained_model, paths["weights"])
    common = dict(device="cpu", weights=str(paths["weights"]), min_kept=0.0)
    stats = api.refine_files(paths["ct"], paths["coarse"], tmp_path / "api.nii.gz", **common)
    assert stats["intensity_gate"]["applied"] == 1
    off = api.refine_files(paths["ct"], paths["coarse"], tmp_path / "plain.nii.gz", intensity_gate=False, **common)
    assert "intensity_gate" not in off
    assert cli.main(["refine", "--image", str(paths["ct"]), "--mask", str(paths["coarse"]),
                     "--out", str(tmp_path / "cli.nii.gz"), "--weights", str(paths["weights"]), "--device", "cpu",
                     "--min-kept", "0", "--no-intensity-gate"]) == 0
    assert cli.main(["refine", "--image", str(paths["ct"]), "--mask", str(paths["coarse"]),
                     "--out", str(tmp_path / "cli_default.nii.gz"), "--weights", str(paths["weights"]), "--device",
                     "cpu", "--min-kept", "0"]) == 0
    gated, plain = (io.read_volume(tmp_path / name).array for name in ("api.nii.gz", "plain.nii.gz"))
    assert np.array_equal(io.read_volume(tmp_path / "cli.nii.gz").array, plain)
    assert np.array_equal(io.read_volume(tmp_path / "cli_default.nii.gz").array, gated)  # on unless switched off
    assert not np.array_equal(gated, plain)
    # a batch finished without the gate is not the output a gated batch would make; one recorded
    # before the option existed (no key) counts as done for the default
    assert BatchSettings(intensity_gate=False).identity() != BatchSettings().identity()
    assert "intensity_gate" not in BatchSettings().identity()


def test_each_lesion_is_read_on_its_own():
    """A dark and a bright lesion side by side: each is judged against its own intensity, so the
    result does not depend on which lesions share a crop."""
    image = np.full(SHAPE, LIVER_HU, np.float32)
    left = ball_mask(SHAPE, (4, 32, 16), 9.0, SPACING)
    right = ball_mask(SHAPE, (4, 32, 48), 9.0, SPACING)
    image[left], image[right] = 40.0, 160.0
    grow = lambda centre: ball_mask(SHAPE, centre, 10.5, SPACING)  # noqa: E731 - 1.5 mm of liver added
    coarse = left | right
    refined = grow((4, 32, 16)) | grow((4, 32, 48))
    out, decisions = intensity_gate(image, coarse, refined, LIVER_HU, SPACING)
    dark, bright = sorted(d.lesion_hu for d in decisions)
    assert dark < 70 < LIVER_HU < 130 < bright  # each lesion's own intensity (the blurred edge pulls a little)
    assert all(d.additions_refused > 0 for d in decisions)
    assert not (out & ~ball_mask(SHAPE, (4, 32, 16), 9.8, SPACING) & ~ball_mask(SHAPE, (4, 32, 48), 9.8, SPACING)).any()
    alone, _ = intensity_gate(image, left, grow((4, 32, 16)), LIVER_HU, SPACING)
    assert np.array_equal(out[:, :, :32], alone[:, :, :32])


@pytest.mark.parametrize("seed", [1, 2, 6])
def test_working_on_the_lesions_box_changes_nothing(seed):
    """The gate works on the lesions' bounding box padded by the smoothing's reach: the result and
    the decisions equal those on the whole crop."""
    case = blob_case(seed)
    refined = ball_mask(case.image.shape, np.argwhere(case.truth).mean(0), 12.0, case.spacing_zyx)
    liver = float(np.median(case.image[~case.truth]))
    fast, fast_decisions = intensity_gate(case.image, case.coarse, refined, liver, case.spacing_zyx)
    whole, whole_decisions = gate_lesions(case.image, case.coarse, refined, liver, case.spacing_zyx)
    assert np.array_equal(fast, whole) and fast_decisions == whole_decisions
    assert any(d.additions_refused + d.removals_refused for d in whole_decisions)  # the gate acted


def test_a_clicked_lesion_is_refined_with_the_refiners_gate(trained_model):
    """``clicks.refine_lesion`` (the hybrid's and the Slicer click jobs' refinement) refines in the
    seeded sources' two passes, the first in config.SEEDED_FIRST_TTA orientations and the second in
    config.SEEDED_LATER_TTA, with the intensity gate as the Refiner has it (on by default; off where
    the user switched it off)."""
    from LiverTumorRefineLib.coarse.clicknet import LesionMask
    from LiverTumorRefineLib.coarse.clicks import refine_lesion
    from LiverTumorRefineLib.config import SEEDED_FIRST_TTA, SEEDED_LATER_TTA, SEEDED_PASSES

    case = blob_case(3, coarse_shift_mm=3.0)
    whole = tuple(slice(0, n) for n in case.image.shape)
    results = {}
    for gate in (True, False):
        refiner = Refiner(trained_model, device="cpu", min_kept=0.0, intensity_gate=gate)
        got = refine_lesion(refiner, case.image, case.spacing_zyx, LesionMask(whole, case.coarse))
        expected = refiner.refine(case.image, case.coarse, case.spacing_zyx, passes=SEEDED_PASSES,
                                  first_tta=SEEDED_FIRST_TTA, later_tta=SEEDED_LATER_TTA)
        assert SEEDED_FIRST_TTA < refiner.tta and SEEDED_LATER_TTA < refiner.tta
        assert np.array_equal(got.mask, expected.mask)
        results[gate] = got.mask
    assert Refiner(trained_model).intensity_gate is True  # on by default
    assert not np.array_equal(results[True], results[False])  # the gate acts on this case


def test_label_medians_are_ndimages_bit_for_bit_on_the_labelled_voxels_only():
    rng = np.random.default_rng(7)
    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(2, 24, 3))
        n = int(rng.integers(1, 7))
        labels = rng.integers(0, n + 1, shape) * (rng.random(shape) < rng.random())  # some labels may be absent
        values = rng.normal(80, 30, shape).astype(np.float32)
        if trial % 2:
            values = np.round(values)  # CT-like integers: ties and even counts
        index = list(range(1, n + 1))
        medians, counts = label_medians(values, labels, index)
        expected = np.atleast_1d(ndimage.median(values, labels=labels, index=index))
        assert medians.dtype == np.float32
        for k, got, want in zip(index, medians, expected):
            assert counts[k] == np.count_nonzero(labels == k)
            if counts[k]:
                assert got.tobytes() == np.float32(want).tobytes()
            else:
                assert np.isnan(got)
