"""The training loss: BCE + soft Dice, and the keep weight that makes a change cost more."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from LiverTumorRefineLib.cli import main
from LiverTumorRefineLib.training.train import patch_loss


def test_keep_weight_weighs_the_bce_of_voxels_the_coarse_mask_has_right():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((3, 8, 8), generator=generator)
    truth = (torch.rand((3, 8, 8), generator=generator) > 0.5).float()
    coarse = torch.rand((3, 8, 8), generator=generator) > 0.5
    plain = patch_loss(logits, truth)
    dice = plain - F.binary_cross_entropy_with_logits(logits, truth)
    assert torch.allclose(patch_loss(logits, truth, coarse, 1.0), plain)
    weight = torch.where(coarse == (truth > 0.5), 3.0, 1.0)
    assert torch.allclose(patch_loss(logits, truth, coarse, 3.0),
                          F.binary_cross_entropy_with_logits(logits, truth, weight=weight) + dice)
    # where the coarse mask is right everywhere, the weight scales the whole BCE
    right = truth > 0.5
    assert torch.allclose(patch_loss(logits, truth, right, 3.0) - dice, 3 * (plain - dice))


def test_keep_weight_is_checked_before_any_work(tmp_path, capsys):
    assert main(["train", "--data", "phantom:1", "--out", str(tmp_path / "run"), "--keep-weight", "0"]) == 2
    assert "--keep-weight must be above 0 (got 0.0)" in capsys.readouterr().err
    assert main(["train", "--data", "phantom:1", "--out", str(tmp_path / "run"), "--keep-weight", "2",
                 "--no-mask-patch"]) == 2
    assert "which --no-mask-patch leaves out" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_time_budget_is_checked_before_any_work(tmp_path, capsys):
    assert main(["train", "--data", "phantom:1", "--out", str(tmp_path / "run"), "--minutes", "0"]) == 2
    assert "--minutes must be above 0 (got 0.0)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
