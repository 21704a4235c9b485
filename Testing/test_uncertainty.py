"""Where the refinement is unsure (issue 13 §2): ``Canvas.disagreement`` and ``RefineResult.uncertain``.

A voxel is unsure when some of the predictions that cover it (test-time augmentations, overlapping
patches) put it inside the tumour and others outside; only the editable band counts, since voxels
outside it keep their coarse label whatever the network says.
"""
from __future__ import annotations

import torch

from LiverTumorRefineLib.refine.reassembly import Canvas


def _canvas_with_votes(votes_inside: dict, count: int, shape=(1, 1, 6)) -> Canvas:
    """A canvas whose voxel x got ``count`` predictions, ``votes_inside[x]`` of them >= 0.5."""
    canvas = Canvas(shape, torch.device("cpu"))
    for x, inside in votes_inside.items():
        canvas.count[x] = count
        canvas.votes[x] = inside
        canvas.total[x] = inside * 0.9 + (count - inside) * 0.1
    return canvas


def test_disagreement_is_where_predictions_split():
    canvas = _canvas_with_votes({0: 0, 1: 4, 2: 1, 3: 3, 4: 2}, count=4)  # voxel 5: never predicted
    assert canvas.disagreement().reshape(-1).tolist() == [False, False, True, True, True, False]


def test_disagreement_only_in_the_editable_band():
    canvas = _canvas_with_votes({0: 2, 1: 2, 2: 2}, count=4)
    editable = torch.tensor([True, False, True, True, True, True]).reshape(1, 1, 6)
    assert canvas.disagreement(editable).reshape(-1).tolist() == [True, False, True, False, False, False]


def test_refine_result_marks_unsure_voxels_in_the_band(blob_cases, trained_model):
    from LiverTumorRefineLib.refine import sampling
    from LiverTumorRefineLib.refine.refiner import Refiner

    case = blob_cases[0]
    refiner = Refiner(trained_model, device="cpu", min_kept=0.0)
    result = refiner.refine(case.image, case.coarse, case.spacing_zyx)
    assert result.uncertain is not None and result.uncertain.shape == case.coarse.shape
    assert result.uncertain.dtype == bool and result.uncertain.any(), "the refinement is sure everywhere?"
    band = sampling.editable_band(torch.from_numpy(case.coarse), case.spacing_zyx, refiner.cfg.band_mm).numpy()
    assert not (result.uncertain & ~band).any(), "unsure voxels outside the editable band"
    assert result.uncertain.sum() < band.sum(), "every voxel of the band is unsure"
