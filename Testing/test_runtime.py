"""Inference runtimes: the same probabilities as plain PyTorch, ONNX export round trip, and the
fallback to PyTorch when ONNX Runtime is missing."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from conftest import blob_case
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine import runtime as rt
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.refine.tta import predict
from LiverTumorRefineLib.refine.weights import default_weights_path, save_model, sha256_of


def network_inputs(model, n: int = 40, seed: int = 0) -> torch.Tensor:
    """Inputs shaped like the Refiner's: HU-scaled image channels and a 0/1 mask channel."""
    cfg = model.patch_config
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, cfg.in_channels, cfg.patch_px, cfg.patch_px), generator=g) * 2 - 1
    x[:, -1] = (x[:, -1] > 0).float()
    return x


def plain_probabilities(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model.eval()(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_runtime_matches_plain_pytorch_in_any_chunk_size(trained_model, channels_last):
    x = network_inputs(trained_model)
    expected = plain_probabilities(trained_model, x)
    runtime = rt.TorchRuntime(trained_model, torch.device("cpu"), channels_last=channels_last)
    runtime.batch_size = 7  # 40 inputs: five full chunks and a short one
    assert torch.allclose(runtime.predict(x), expected, atol=1e-5)


@pytest.mark.skipif(not rt.bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_runtime_stays_close_to_fp32(trained_model):
    x = network_inputs(trained_model)
    got = rt.TorchRuntime(trained_model, torch.device("cpu"), bf16=True).predict(x)
    expected = plain_probabilities(trained_model, x)
    assert (got - expected).abs().max() < 0.05
    assert ((got > 0.5) == (expected > 0.5)).float().mean() > 0.99


def test_without_onnxruntime_auto_falls_back_to_torch_and_onnx_says_what_to_install(trained_model, tmp_path):
    weights = tmp_path / "model.pt"
    save_model(trained_model, weights)
    missing = lambda: None  # noqa: E731  (what onnx_module returns when the import fails)
    chosen = rt.select_runtime("auto", trained_model, torch.device("cpu"), weights, find_ort=missing)
    assert isinstance(chosen, rt.TorchRuntime)
    with pytest.raises(RefineError, match="pip install onnxruntime"):
        rt.select_runtime("onnx", trained_model, torch.device("cpu"), weights, find_ort=missing)
    assert rt.onnx_module("no_such_module_for_this_test") is None


def test_unknown_runtime_and_onnx_on_cuda_are_user_errors(trained_model):
    with pytest.raises(RefineError, match="Unknown runtime"):
        Refiner(trained_model, device="cpu", runtime="tensorrt")
    with pytest.raises(RefineError, match="CPU only"):
        rt.select_runtime("onnx", trained_model, torch.device("cuda"), None)


def test_auto_uses_torch_for_a_model_built_in_memory(trained_model):
    refiner = Refiner(trained_model, device="cpu")
    assert isinstance(refiner.runtime, rt.TorchRuntime) and refiner.runtime.device.type == "cpu"


# ------------------------------------------------------------------------------ ONNX (optional extra)
def needs_onnx() -> types.ModuleType:
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def test_onnx_export_round_trip_gives_plain_pytorch_probabilities(trained_model, tmp_path):
    ort = needs_onnx()
    weights = tmp_path / "model.pt"
    save_model(trained_model, weights)
    path = rt.export_onnx(trained_model, weights)
    assert path == tmp_path / "model.onnx" and (tmp_path / "model.onnx.sha256").is_file()
    assert rt.source_sha256(path) == sha256_of(weights) and rt.export_matches(path, weights)
    runtime = rt.select_runtime("onnx", trained_model, torch.device("cpu"), weights, ort=ort)
    assert isinstance(runtime, rt.OnnxRuntime)
    runtime.batch_size = 16
    x = network_inputs(trained_model)
    assert torch.allclose(runtime.predict(x), plain_probabilities(trained_model, x), atol=1e-4)
    # test-time augmentation goes through the runtime the same way
    assert torch.allclose(predict(runtime, x[:5], 4), predict(trained_model, x[:5], 4), atol=1e-4)


def test_onnx_refinement_gives_the_torch_mask(trained_model, tmp_path):
    needs_onnx()
    weights = tmp_path / "model.pt"
    save_model(trained_model, weights)
    rt.export_onnx(trained_model, weights)
    case = blob_case(5)
    onnx = Refiner(weights, device="cpu", runtime="onnx").refine(case.image, case.coarse, case.spacing_zyx)
    plain = Refiner(weights, device="cpu", runtime="torch").refine(case.image, case.coarse, case.spacing_zyx)
    assert onnx.stats["runtime"] == "onnx" and plain.stats["runtime"] == "torch"
    assert np.array_equal(onnx.mask, plain.mask)


@pytest.mark.parametrize("streams, threads", [(2, 2), (3, 4)])
def test_onnx_sessions_side_by_side_give_one_sessions_outputs_in_order(trained_model, tmp_path, streams, threads):
    """Chunks shared round robin among sessions on helper threads come back in input order,
    each exactly what a single session computes for it; the threads are split among them."""
    ort = needs_onnx()
    weights = tmp_path / "model.pt"
    save_model(trained_model, weights)
    path = rt.export_onnx(trained_model, weights)
    x = network_inputs(trained_model)
    single = rt.OnnxRuntime(path, threads=1, ort=ort)
    shared = rt.OnnxRuntime(path, threads=threads, ort=ort, streams=streams)
    assert len(single.sessions) == 1 and len(shared.sessions) == streams
    assert sum(s.get_session_options().intra_op_num_threads for s in shared.sessions) == threads
    single.batch_size = shared.batch_size = 7  # 40 inputs: six chunks, the last one short
    assert torch.allclose(shared(x), single(x), atol=1e-5)  # (order of sums may differ with threads)
    assert torch.allclose(shared(x[:5]), single(x[:5]), atol=1e-5)  # one chunk: no helper


def test_an_export_of_another_model_or_a_changed_file_is_not_used(trained_model, tmp_path):
    ort = needs_onnx()
    weights = tmp_path / "model.pt"
    save_model(trained_model, weights)
    path = rt.export_onnx(trained_model, weights)
    other = tmp_path / "other.pt"
    save_model(trained_model, other, meta={"note": "another file"})
    assert not rt.export_matches(path, other)  # recorded source hash is model.pt's
    path.write_bytes(path.read_bytes() + b"\0")  # damaged: no longer its sidecar's hash
    assert not rt.export_matches(path, weights)
    chosen = rt.select_runtime("auto", trained_model, torch.device("cpu"), weights, ort=ort)
    assert isinstance(chosen, rt.TorchRuntime)
    with pytest.raises(RefineError, match="No ONNX export matching"):
        rt.select_runtime("onnx", trained_model, torch.device("cpu"), weights, ort=ort)


def test_shipped_onnx_export_is_pinned_and_refines_like_the_shipped_model():
    needs_onnx()
    weights = default_weights_path()
    path = rt.onnx_path_for(weights)
    assert path.name in rt.SHIPPED_ONNX_SHA256, "the shipped export's hash must be pinned in runtime.py"
    assert rt.export_matches(path, weights)
    case = blob_case(5)
    plain = Refiner(weights, device="cpu", runtime="torch")
    recorder = rt.Recorder(plain.runtime)
    plain.runtime = recorder
    expected = plain.refine(case.image, case.coarse, case.spacing_zyx).mask
    onnx = Refiner(weights, device="cpu", runtime="onnx")
    assert isinstance(onnx.runtime, rt.OnnxRuntime) and onnx.runtime.path == path
    got = onnx.refine(case.image, case.coarse, case.spacing_zyx).mask
    x = torch.cat(recorder.inputs)  # the real network inputs of this case
    diff = (onnx.runtime.predict(x) - plain_probabilities(plain.model, x)).abs()
    assert diff.mean() < rt.SHIPPED_ONNX_MEAN_ERROR, float(diff.mean())
    dice = 2 * np.count_nonzero(got & expected) / (np.count_nonzero(got) + np.count_nonzero(expected))
    assert dice > 0.99, dice
