"""The per-lesion gate, test-time augmentation and the parenchyma estimate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverTumorRefineLib.refine import sampling

from LiverTumorRefineLib.refine import tta
from LiverTumorRefineLib.config import PatchConfig
from LiverTumorRefineLib.refine.gate import KEPT_COARSE, REFINED, lesion_gate
from LiverTumorRefineLib.refine.reassembly import Canvas


def two_lesions() -> tuple[np.ndarray, np.ndarray]:
    coarse = np.zeros((3, 20, 20), bool)
    coarse[1, 2:6, 2:6] = True  # 16 voxels: refinement keeps 4 (25%)
    coarse[1, 10:16, 10:16] = True  # 36 voxels: refinement keeps 30 and grows 5
    refined = np.zeros_like(coarse)
    refined[1, 2:4, 2:4] = True
    refined[1, 10:16, 10:15] = True
    refined[1, 16, 10:15] = True
    return coarse, refined


def test_a_sure_refinement_that_erases_most_of_a_lesion_is_refused():
    coarse, refined = two_lesions()
    out, decisions = lesion_gate(coarse, refined, coarse != refined, 0.5, origin=(7, 0, 3))
    assert out[1, 2:6, 2:6].all()  # the mostly erased lesion is back as the coarse had it
    assert np.array_equal(out[1, 8:, 8:], refined[1, 8:, 8:])  # the refined one is left alone
    by_size = sorted(decisions, key=lambda d: d.coarse_voxels)
    assert [d.decision for d in by_size] == [KEPT_COARSE, REFINED]
    assert by_size[0].refined_voxels == 16 and by_size[0].proposed_voxels == 4 and "75%" in by_size[0].reason
    assert by_size[1].refined_voxels == 35 and by_size[1].slices == (8, 8) and by_size[1].confidence == 1.0
    assert by_size[1].box == (8, 8, 10, 16, 13, 18)
    assert np.array_equal(lesion_gate(coarse, refined, coarse != refined, 0.0)[0], refined)
    assert np.array_equal(lesion_gate(coarse, refined, coarse != refined, 0.2)[0], refined)  # 25% kept >= 20%


def test_less_confidence_allows_less_shrinking():
    coarse = np.zeros((1, 20, 20), bool)
    coarse[0, 2:12, 2:12] = True  # 100 voxels
    refined = coarse.copy()
    refined[0, 2:12, 2:4] = False  # loses 20%
    wanted = refined != coarse
    assert lesion_gate(coarse, refined, wanted, 0.5)[1][0].decision == REFINED  # sure: up to 50% may go
    unsure = wanted.copy()
    unsure[0, 12:16, 2:12] = True  # the net also wanted 40 more voxels that the voxel gate held back
    out, [decision] = lesion_gate(coarse, refined, unsure, 0.5)  # confidence 20/60: up to 17% may go
    assert decision.decision == KEPT_COARSE and decision.confidence == pytest.approx(1 / 3, abs=1e-3)
    assert np.array_equal(out, coarse)


def test_symmetries_invert_and_predictions_come_back_in_place():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert len({tta.forward(x, k).flatten().tolist().__str__() for k in tta.ORDER}) == 8  # all distinct
    for k in tta.ORDER:
        assert torch.equal(tta.inverse(tta.forward(x, k), k), x)
    # a pixel-wise "network" gives the same map in every orientation once it is turned back
    probs = tta.predict(lambda t: t[:, -1] * 4 - 2, x / x.max(), 8)
    assert probs.shape == (8, 2, 4, 4)
    assert torch.allclose(probs, probs[:1].expand_as(probs))
    with pytest.raises(ValueError):
        tta.check_count(9)


def test_canvas_counts_how_many_predictions_agree():
    cfg = PatchConfig(patch_mm=8.0, patch_px=8, normalise="none")
    canvas = Canvas((1, 8, 8), torch.device("cpu"))
    centre = torch.tensor([[0, 4, 4]])
    coarse = torch.zeros((1, 8, 8), dtype=torch.bool)
    canvas.add(torch.ones((1, 8, 8)), centre, (1.0, 1.0, 1.0), cfg)  # one view says tumour everywhere
    canvas.add(torch.full((1, 8, 8), 0.3), centre, (1.0, 1.0, 1.0), cfg)  # the other says no, weakly
    assert canvas.result(coarse).all()  # mean 0.65: tumour
    _, sure = canvas.proposal(coarse)
    assert torch.allclose(sure, torch.full_like(sure, 0.5))  # but only half the votes agree: below 0.75


def test_parenchyma_estimate_finds_the_liver_not_the_vessels_or_fat():
    rng = np.random.default_rng(0)
    shape, spacing = (6, 80, 80), (2.5, 0.8, 0.8)
    image = rng.normal(135, 10, shape).astype(np.float32)  # liver at 135 HU
    image[:, :, :12] = -100  # fat at one side
    image[:, 50:56, :] = 190  # a bright vessel across the shell
    mask = np.zeros(shape, bool)
    mask[:, 30:50, 30:50] = True
    image[mask] = 60
    hu = sampling.parenchyma_hu(torch.from_numpy(image), torch.from_numpy(mask), spacing)
    assert hu == pytest.approx(135, abs=3)
    normal = sampling.normalised(torch.from_numpy(image), hu, PatchConfig())
    assert float(normal[0, 5, 40]) == pytest.approx(float(image[0, 5, 40]) + 100 - hu)
    assert torch.equal(sampling.normalised(torch.from_numpy(image), None, PatchConfig()), torch.from_numpy(image))
    # no soft tissue around the lesion (all fat): no estimate, the image is left as it is
    fat = np.where(mask, 60, -100).astype(np.float32)
    assert sampling.parenchyma_hu(torch.from_numpy(fat), torch.from_numpy(mask), spacing) is None


def test_a_capped_shrink_gives_back_the_least_sure_voxels_first():
    coarse = np.zeros((1, 20, 20), bool)
    coarse[0, 2:12, 2:12] = True  # 100 voxels
    refined = coarse.copy()
    refined[0, 2:12, 2:8] = False  # loses 60%: more than the 50% a sure refinement may take
    probability = np.zeros(coarse.shape, np.float32)
    probability[0, 2:12, 7] = 0.4  # the removed column the network was least sure of
    probability[0, 2:12, 6] = 0.3
    out, [decision] = lesion_gate(coarse, refined, refined != coarse, 0.5, probability=probability)
    assert out.sum() == 50 and out[0, 2:12, 7:12].all() and not out[0, 2:12, 2:7].any()  # column 7 only
    assert decision.decision == REFINED and decision.refined_voxels == 50 and "capped at 50%" in decision.reason
