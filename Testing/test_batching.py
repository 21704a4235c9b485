"""``refine.batching``: network inputs per call chosen from the CPU's cache (issue 14)."""
from __future__ import annotations

import pytest
import torch

from LiverTumorRefineLib.config import NetConfig, PatchConfig
from LiverTumorRefineLib.refine import batching
from LiverTumorRefineLib.refine.network import build_model
from LiverTumorRefineLib.refine.runtime import CUDA_BATCH, TORCH_CPU_BATCH, TorchRuntime


def write_caches(root, sizes):
    for i, size in enumerate(sizes):
        (root / f"index{i}").mkdir()
        (root / f"index{i}" / "size").write_text(size + "\n")


def test_the_largest_cache_is_read_from_sysfs(tmp_path):
    write_caches(tmp_path, ["48K", "32K", "1024K", "32768K"])
    assert batching.last_level_cache_bytes(tmp_path) == 32 << 20
    assert batching.last_level_cache_bytes(tmp_path / "absent") is None


@pytest.mark.parametrize("bytes_per_input, cache, expected", [
    (589_824, 32 << 20, 16),   # today's BRNet in fp32 on this project's CPU
    (147_456, 32 << 20, 64),   # the same in int8
    (589_824, 8 << 20, 8),     # a small cache: never fewer than 8
    (1_000, 1 << 30, 256),     # a huge cache: never more than 256
    (None, 32 << 20, 32),      # unknown layer size: the measured default
])
def test_cache_batch_is_the_largest_power_of_two_that_fits(bytes_per_input, cache, expected):
    assert batching.cache_batch(bytes_per_input, default=32, cache=cache) == expected


def test_largest_layer_is_measured_without_changing_the_model():
    model = build_model(PatchConfig(), NetConfig(base_channels=8)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    elements = batching.largest_layer_elements(model)
    px = model.patch_config.patch_px
    assert elements is not None and elements >= 2 * 8 * px * px  # at least one full-resolution layer in and out
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules()), "a probe hook was left on the model"
    assert batching.largest_layer_elements(torch.nn.Conv2d(1, 1, 3)) is None  # no patch config


def test_runtimes_take_their_batch_from_the_cache(monkeypatch):
    model = build_model(PatchConfig(), NetConfig(base_channels=8))
    monkeypatch.setattr(batching, "last_level_cache_bytes", lambda root=None: None)
    assert TorchRuntime(model, torch.device("cpu")).batch_size == TORCH_CPU_BATCH
    monkeypatch.setattr(batching, "last_level_cache_bytes", lambda root=None: 1 << 30)
    assert TorchRuntime(model, torch.device("cpu")).batch_size == batching.BATCH_RANGE[1]
    if torch.cuda.is_available():
        assert TorchRuntime(model, torch.device("cuda")).batch_size == CUDA_BATCH


def test_the_shipped_export_is_recognised_as_int8():
    from LiverTumorRefineLib.refine.runtime import onnx_path_for
    from LiverTumorRefineLib.refine.weights import default_weights_path

    assert batching.is_int8_export(onnx_path_for(default_weights_path("brnet_default.pt")))
