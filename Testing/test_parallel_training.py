"""Phantom training data made by worker processes: the same data for any number of workers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from LiverTumorRefineLib.config import NetConfig
from LiverTumorRefineLib.training import parallel
from LiverTumorRefineLib.training.clicktrain import ClickTrainConfig
from LiverTumorRefineLib.training.train import CutCase, TrainConfig, cut_training_patches, train
from LiverTumorRefineLib.refine.weights import load_model

SEEDS = [1000, 1001]


def test_refiner_patches_do_not_depend_on_the_number_of_workers():
    cfg = TrainConfig(extra_centres=0.5)
    here = parallel.refiner_cases(SEEDS, 2, cfg, workers=1)
    pooled = parallel.refiner_cases(SEEDS, 2, cfg, workers=2)
    assert [c.name for c in here] == [c.name for c in pooled] == ["phantom_1000#0", "phantom_1000#1", "phantom_1001#0", "phantom_1001#1"]
    for a, b in zip(here, pooled):
        assert len(a.inputs) > 0 and a.inputs.dtype == torch.float16 and a.truth.dtype == torch.bool
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.truth, b.truth)
    assert not torch.equal(here[0].truth[:10], here[1].truth[:10])  # the two coarse variants differ


def test_click_crops_do_not_depend_on_the_number_of_workers():
    cfg = ClickTrainConfig()
    here, pooled = parallel.click_crops(SEEDS, cfg, 1), parallel.click_crops(SEEDS, cfg, 2)
    assert len(here) == len(pooled) > 2
    for a, b in zip(here, pooled):
        assert a.name == b.name and isinstance(b.image, torch.Tensor) and torch.equal(a.image, b.image)
        assert (a.truth == b.truth).all() and a.scenarios == b.scenarios and a.scenarios[0][0] == (0.0, 0.0, 0.0, True)


@pytest.mark.slow
def test_a_refiner_trains_on_cut_cases(blob_cases, tmp_path):
    """``train`` takes patches cut elsewhere (``CutCase``) as it takes cases."""
    cfg = TrainConfig(steps=3, epoch_steps=3, batch_size=4, warmup_steps=1, extra_centres=0.5, net=NetConfig(base_channels=4))
    cut = [CutCase(f"cut{i}", *cut_training_patches(case, cfg.patch, cfg.extra_centres, np.random.default_rng(i)))
           for i, case in enumerate(blob_cases[:2])]
    model = load_model(train(replace(cfg), cut, [], tmp_path / "run", device="cpu", log=lambda _: None), "cpu")
    assert model.meta["train_cases"] == ["cut0", "cut1"] and model.meta["train_config"]["steps"] == 3
