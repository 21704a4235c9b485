"""Model files: hash-checked, safe loading, and a clear error for every way a file can be wrong."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from LiverTumorRefineLib.refine import weights
from LiverTumorRefineLib.config import NetConfig, PatchConfig
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine.network import build_model

SMALL = NetConfig(base_channels=4)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.pt"
    digest = weights.save_model(build_model(PatchConfig(), SMALL), path, {"note": "test"})
    assert (tmp_path / "m.pt.sha256").read_text().split()[0] == digest == weights.sha256_of(path)
    return path


def test_round_trip_keeps_weights_configs_and_metadata(model_file):
    model = build_model(PatchConfig(), SMALL)
    model.load_state_dict(weights.load_model(model_file).state_dict())
    loaded = weights.load_model(model_file)
    assert loaded.meta == {"note": "test"} and loaded.net_config == SMALL and loaded.patch_config == PatchConfig()
    assert not loaded.training


def test_tampered_file_fails_the_hash_check(model_file):
    data = bytearray(model_file.read_bytes())
    data[-10] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(RefineError, match="SHA-256"):
        weights.load_model(model_file)


def test_truncated_file_with_matching_hash_is_a_clear_error(model_file):
    model_file.write_bytes(model_file.read_bytes()[:200])
    (model_file.parent / "m.pt.sha256").write_text(weights.sha256_of(model_file))
    with pytest.raises(RefineError, match="truncated"):
        weights.load_model(model_file)


def test_file_without_a_hash_is_refused(model_file):
    os.unlink(model_file.parent / "m.pt.sha256")
    with pytest.raises(RefineError, match="no SHA-256"):
        weights.load_model(model_file)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    model = build_model(PatchConfig(), SMALL)
    weights.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["net_config"]["base_channels"] = 8  # configs and tensors disagree
    torch.save(payload, path)
    (tmp_path / "other.pt.sha256").write_text(weights.sha256_of(path))
    with pytest.raises(RefineError, match="another network architecture"):
        weights.load_model(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": weights.FORMAT, "x": _Exploit()}, f)
    (tmp_path / "evil.pt.sha256").write_text(weights.sha256_of(path))
    with pytest.raises(RefineError, match="not a LiverTumorRefine model|truncated"):
        weights.load_model(path)


def test_shipped_model_is_pinned_and_small():
    path = weights.default_weights_path()
    assert path.is_file(), "the default model must ship in Resources/Models"
    assert weights.SHIPPED_SHA256[path.name] == weights.sha256_of(path)
    assert path.stat().st_size < 20 * 2**20
    assert (path.parent / "README.md").is_file(), "the model card"
