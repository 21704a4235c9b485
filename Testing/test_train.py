"""Training runs: deterministic on the CPU, resumable to the same weights, resume guarded."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from LiverTumorRefineLib.config import NetConfig
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.training.train import TrainConfig, train
from LiverTumorRefineLib.refine.weights import load_model

pytestmark = pytest.mark.slow  # real training runs: pytest -m slow

CFG = TrainConfig(steps=4, epoch_steps=2, batch_size=4, warmup_steps=1, extra_centres=0.5, net=NetConfig(base_channels=4))


def quiet(_: str) -> None:
    pass


def weights(path) -> dict[str, torch.Tensor]:
    return load_model(path, "cpu").state_dict()


def interrupted_run(cases, out):
    """Train until step 3 starts, then stop as Ctrl-C would: checkpoint.pt holds step 2."""
    def stop_at_step_3(fraction: float, message: str) -> None:
        if fraction >= 3 / CFG.steps:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CFG, cases, [], out, device="cpu", log=quiet, progress=stop_at_step_3)
    assert (out / "checkpoint.pt").is_file() and not (out / "model.pt").exists()


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(blob_cases, tmp_path):
    cases = blob_cases[:2]
    whole = train(CFG, cases, [], tmp_path / "whole", device="cpu", log=quiet)
    again = train(CFG, cases, [], tmp_path / "again", device="cpu", log=quiet)
    interrupted_run(cases, tmp_path / "resumed")
    steps_run: list[float] = []
    resumed = train(CFG, cases, [], tmp_path / "resumed", device="cpu", resume=True, log=quiet,
                    progress=lambda fraction, message: steps_run.append(fraction * CFG.steps))
    assert steps_run == [3, 4]  # it went on from the checkpoint, it did not start again
    a, b, c = weights(whole), weights(again), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, same weights"
    assert all(torch.equal(a[k], c[k]) for k in a), "resume continues exactly"
    fresh = weights(train(replace(CFG, steps=2), cases, [], tmp_path / "short", device="cpu", log=quiet))
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # training moved the weights at all


def test_resume_with_other_options_or_data_is_refused(blob_cases, tmp_path):
    out = tmp_path / "run"
    interrupted_run(blob_cases[:2], out)
    with pytest.raises(RefineError, match=r"other options \(lr 0.002 -> 0.001\)"):
        train(replace(CFG, lr=1e-3), blob_cases[:2], [], out, device="cpu", resume=True, log=quiet)
    with pytest.raises(RefineError, match="trained on other cases"):
        train(CFG, blob_cases[:3], [], out, device="cpu", resume=True, log=quiet)
    with pytest.raises(RefineError, match="no checkpoint"):
        train(CFG, blob_cases[:2], [], tmp_path / "empty", device="cpu", resume=True, log=quiet)


def test_fine_tuning_starts_from_the_given_weights(blob_cases, tmp_path):
    cases = blob_cases[:2]
    start = load_model(train(CFG, cases, [], tmp_path / "start", device="cpu", log=quiet), "cpu")
    tuned = weights(train(replace(CFG, steps=1, lr=1e-6, warmup_steps=1), cases, [], tmp_path / "tuned", device="cpu",
                          log=quiet, init=start))
    fresh = weights(train(replace(CFG, steps=1, lr=1e-6, warmup_steps=1), cases, [], tmp_path / "fresh", device="cpu", log=quiet))
    base = start.state_dict()
    conv = next(k for k in base if k.endswith("weight") and base[k].dim() == 4)
    # one tiny step from the given weights stays next to them; a fresh run is elsewhere
    assert torch.allclose(tuned[conv], base[conv], atol=1e-4) and not torch.allclose(fresh[conv], base[conv], atol=1e-3)


def test_a_time_budget_fits_the_schedule_and_a_resumed_run_keeps_it(blob_cases, tmp_path):
    lines: list[str] = []
    budget = replace(CFG, steps=80, epoch_steps=40, minutes=1e-6)  # far too short: the schedule ends at step 51
    path = train(budget, blob_cases[:2], [], tmp_path / "timed", device="cpu", log=lines.append)
    assert load_model(path, "cpu").meta["train_config"]["steps"] == 51
    assert any("51 steps fit in" in line for line in lines)
    # A run stopped after its schedule was fitted resumes with that schedule, not with --steps
    checkpoint = torch.load(tmp_path / "timed" / "checkpoint.pt", weights_only=True)
    assert (checkpoint["step"], checkpoint["steps_total"]) == (51, 51)
    checkpoint["step"] = 40
    torch.save(checkpoint, tmp_path / "timed" / "checkpoint.pt")
    steps_run: list[float] = []
    train(replace(CFG, steps=80, epoch_steps=40, minutes=1e-6), blob_cases[:2], [], tmp_path / "timed", device="cpu",
          resume=True, log=quiet, progress=lambda fraction, message: steps_run.append(round(fraction * 51)))
    assert steps_run == list(range(41, 52))
