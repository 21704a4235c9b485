"""Shared fixtures: small synthetic CT cases and a BRNet trained for a few hundred steps.

Tests that need a model that really refines use ``trained_model`` (trained on simple generated
cases, never a stub returning its input; cached in pytest's cache folder, keyed by the training
code, so only the first run on a machine pays for the training); the shipped default weights are
tested separately. Tests marked ``slow`` (real training runs) are left out of the default run:
``pytest -m slow`` runs them.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
# The Slicer scene test support (shared with the in-Slicer self-test) lives in the module's test folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine" / "Testing" / "Python"))

from LiverTumorRefineLib.config import NetConfig  # noqa: E402
from LiverTumorRefineLib.training.case import RefineCase  # noqa: E402
from LiverTumorRefineLib.training.train import TrainConfig, build_bank, patch_loss  # noqa: E402
from LiverTumorRefineLib.refine.network import build_model  # noqa: E402
from LiverTumorRefineLib.training.augment import augment  # noqa: E402
from LiverTumorRefineLib.refine import sampling  # noqa: E402


def ball_mask(shape, centre, radius_mm: float, spacing_zyx) -> np.ndarray:
    """Voxels of a grid of ``shape`` within ``radius_mm`` of voxel ``centre`` (z, y, x), at ``spacing_zyx``."""
    scale = np.array(spacing_zyx, np.float32)[:, None, None, None]
    grid = np.indices(shape).astype(np.float32) * scale
    return ((grid - np.array(centre, np.float32)[:, None, None, None] * scale) ** 2).sum(0) <= radius_mm ** 2


def blob_case(seed: int, shape=(24, 96, 96), spacing_zyx=(2.5, 0.8, 0.8), coarse_shift_mm: float | None = None) -> RefineCase:
    """A hypodense lobulated lesion in liver-like tissue with noise, plus a coarse mask that is
    the truth grown or shrunk by 1.5-3 mm (what a coarse network's bias looks like)."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.indices(shape).astype(np.float32) * np.array(spacing_zyx, np.float32)[:, None, None, None])
    centre = np.array(shape) * np.array(spacing_zyx) / 2 + rng.uniform(-4, 4, 3)
    radius = rng.uniform(9, 16)
    angle = np.arctan2(y - centre[1], x - centre[2])
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    lobes = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.cos(5 * angle)
    signed = r - radius * lobes  # negative inside, in mm
    truth = signed < 0
    liver_hu, contrast = rng.uniform(80, 120), rng.uniform(35, 70)
    image = np.where(truth, liver_hu - contrast, liver_hu) + rng.normal(0, 12, shape)
    shift = coarse_shift_mm if coarse_shift_mm is not None else rng.choice([-1, 1]) * rng.uniform(1.5, 3.0)
    coarse = signed < shift
    return RefineCase(f"blob{seed}", image.astype(np.float32), truth, coarse, tuple(spacing_zyx))


@pytest.fixture(scope="session")
def blob_cases() -> list[RefineCase]:
    return [blob_case(s) for s in range(8)]


def _training_key(cfg: TrainConfig) -> str:
    """What the test model's weights depend on: its config, the training code and torch."""
    digest = hashlib.sha256(repr(cfg).encode() + torch.__version__.encode())
    library = Path(__file__).resolve().parents[1] / "LiverTumorRefine" / "LiverTumorRefineLib"
    for source in [Path(__file__)] + [library / f"{name}.py" for name in
                                    ("training/augment", "refine/boxes", "config", "refine/network", "refine/sampling", "training/train",
                                     "training/case")]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_model(blob_cases, request):
    """BRNet trained for 250 steps on blob cases (about half a minute on two free CPU cores), or
    the same weights from pytest's cache when the training code has not changed."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=250, batch_size=24, lr=3e-3, warmup_steps=20, net=NetConfig(base_channels=8))
    cache = getattr(request.config, "cache", None)
    cached = cache.mkdir("trained_model") / f"{_training_key(cfg)}.pt" if cache is not None else None
    if cached is not None and cached.is_file():
        model = build_model(cfg.patch, cfg.net)
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # shown even with -q: the first tests wait for this
        reporter.write_line(f"\nconftest: training the shared test model ({cfg.steps} steps: about 30 s on two free CPU "
                            "cores, minutes on a busy machine; cached for later runs)")
    inputs, truths, _ = build_bank(blob_cases, cfg.patch, 1.0, 0, log=lambda _: None)
    model = build_model(cfg.patch, cfg.net)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(cfg.steps):
        index = torch.randint(len(inputs), (cfg.batch_size,), generator=generator)
        batch, truth = augment(inputs[index], truths[index], cfg.patch.image_channels, generator)
        loss = patch_loss(model(sampling.network_input(batch, cfg.patch)), truth)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    if cached is not None:
        partial = cached.with_name(f".{cached.name}.{os.getpid()}")
        torch.save(model.state_dict(), partial)
        os.replace(partial, cached)
    return model.eval()


@pytest.fixture()
def tiny_weights(tmp_path):
    """An untrained 4-channel BRNet saved as a weights file: for tests of file handling, not quality."""
    from LiverTumorRefineLib.config import PatchConfig
    from LiverTumorRefineLib.refine.weights import save_model

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(build_model(PatchConfig(), NetConfig(base_channels=4)).eval(), path)
    return path
