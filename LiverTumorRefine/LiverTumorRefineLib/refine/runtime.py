"""Inference runtimes: how a batch of network inputs becomes logits.

A runtime is a callable ``(N, C, P, P) float32 -> (N, P, P) logits`` (what ``tta.predict``
calls), with ``predict`` for probabilities. It feeds the network ``batch_size`` inputs at a time:
the chunk size that ran fastest in ``bench/speed_runtime.py`` on that runtime.

* ``TorchRuntime``: plain PyTorch, always available. On CUDA it runs under fp16 autocast; on the
  CPU in fp32 (channels_last and bf16 autocast are options: the bench measures them).
* ``OnnxRuntime``: the BRNet exported to ONNX and run by ONNX Runtime (optional dependency,
  ``pip install livertumorrefine[onnx]``). The shipped export is hash-pinned and records the
  SHA-256 of the ``.pt`` it was made from, so it is only ever used in place of that model.

``select_runtime`` picks one: "auto" is ONNX Runtime on the CPU when it is installed and an
export of the model is present, otherwise PyTorch.
"""
from __future__ import annotations

import importlib
import os
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine.batching import cache_batch, input_px, is_int8_export, largest_layer_elements
from LiverTumorRefineLib.refine.network import BRNet
from LiverTumorRefineLib.refine.weights import MODELS_DIR, sha256_of

RUNTIMES = ("auto", "torch", "onnx")
# Exports shipped in Resources/Models, by file name, made from the .pt of the same stem by
# ``python -m LiverTumorRefineLib.refine.runtime --int8`` (the .pt's own hash is stored in the
# export's metadata and checked at load). brnet_default.onnx: int8 (7-bit weights, see ``_quantise``),
# calibrated on phantoms 1000-1001; clicknet_default.onnx: fp32 (``--click``).
SHIPPED_ONNX_SHA256: dict[str, str] = {
    "brnet_default.onnx": "d21da1bf2f0f81034ff33a4984da244eb6c4a32131e0914b08e842588e5e56d3",
    "clicknet_default.onnx": "1f019083159720a73b01725fbd0590415dcd4a76026a3e547308e7b4f354f6ae",
}
# Mean absolute probability difference of the shipped int8 export from its .pt on real network
# inputs that Testing/test_runtime.py allows: measured 0.0014 on an AVX2-only CPU, where the
# previous export (8-bit weights) was 0.011 off.
SHIPPED_ONNX_MEAN_ERROR = 0.005
ONNX_SUFFIX = ".onnx"
SOURCE_KEY = "source_sha256"  # ONNX metadata: SHA-256 of the .pt the export was made from
OPSET = 17
# Network inputs per call on the CPU are chosen from the cache (``batching.cache_batch``); these
# are the sizes that ran fastest on 2 CPU cores (bench/speed_runtime.py), used where the cache size
# cannot be read. On CUDA larger batches only help.
TORCH_CPU_BATCH = 32
ONNX_BATCH = 64
STREAMS = 2  # ONNX Runtime sessions run side by side (see OnnxRuntime)
CUDA_BATCH = 512


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic for oneDNN (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class TorchRuntime:
    """A network run by PyTorch on ``device``: fp16 autocast on CUDA; on the CPU fp32, or bf16
    autocast with ``bf16`` (where the CPU supports it). ``channels_last`` (default: on the CPU)
    runs the convolutions in NHWC layout, oneDNN's fast path on the CPU (same arithmetic)."""

    name = "torch"
    # oneDNN may choose other kernels for another batch size: a patch's logits then differ in their
    # last bits (4e-6 measured), so its prediction is not kept apart from its batch (``Refiner.keep_boxes``).
    batch_invariant = False

    def __init__(self, model: torch.nn.Module, device: torch.device, bf16: bool = False,
                 channels_last: bool | None = None) -> None:
        if bf16 and not bf16_supported():
            raise RefineError("bf16 inference was asked for but this CPU has no native bf16 support: use fp32.")
        self.device = torch.device(device)
        self.bf16 = bf16
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            self.batch_size = CUDA_BATCH
        else:
            elements = largest_layer_elements(self.model)
            self.batch_size = cache_batch(elements * (2 if bf16 else 4) if elements else None, TORCH_CPU_BATCH)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._run(chunk) for chunk in x.split(self.batch_size)])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    return self.model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                return self.model(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, P) probabilities."""
        return torch.sigmoid(self(x).float())


class OnnxRuntime:
    """An exported BRNet (``export_onnx``) run by ONNX Runtime on the CPU with ``threads`` threads
    (default: PyTorch's count, so ``torch.set_num_threads`` and OMP_NUM_THREADS apply to both).

    The threads are shared among ``streams`` sessions that run chunks side by side (default: 2
    where there are 2 threads or more): this small network's layers parallelise poorly inside
    one call, and on 2 cores two one-thread sessions ran 6-14% more inputs/s than one two-thread
    session (``bench/speed_runtime.py``). Sharing the cache, each takes half the chunk size."""

    name = "onnx"
    device = torch.device("cpu")

    def __init__(self, path: str | os.PathLike, threads: int | None = None, ort: ModuleType | None = None,
                 layer_elements: int | None = None, streams: int | None = None) -> None:
        """``layer_elements``: the network's largest layer per input (``largest_layer_elements``
        of its PyTorch model), which sets the inputs per call from the cache."""
        ort = ort or importlib.import_module("onnxruntime")
        self.path = Path(path)
        threads = max(1, threads or torch.get_num_threads())
        streams = min(streams or STREAMS, threads)
        self.sessions = [self._session(ort, threads // streams + (i < threads % streams)) for i in range(streams)]
        self.input = self.sessions[0].get_inputs()[0].name
        value_bytes = 1 if is_int8_export(self.path) else 4
        # An int8 export's convolutions sum integers, so an input's logits do not depend on the other
        # inputs of its call (tested): ``Refiner.keep_boxes`` may keep each patch's prediction.
        self.batch_invariant = value_bytes == 1
        self.batch_size = cache_batch(layer_elements * value_bytes * streams if layer_elements else None, ONNX_BATCH)
        self._helpers = ThreadPoolExecutor(streams - 1, thread_name_prefix="onnx-stream") if streams > 1 else None
        if self._helpers is not None:  # its idle thread ends with the runtime, not with the process
            weakref.finalize(self, self._helpers.shutdown, wait=False)

    def _session(self, ort: ModuleType, threads: int) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for damaged files
            raise RefineError(f"The ONNX model {self.path} could not be loaded ({type(exc).__name__}: {str(exc)[:160]}): "
                              "export it again from its .pt or use --runtime torch.") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.split(self.batch_size)
        # session i runs every n-th chunk, the first on this thread, the others on helpers
        n = min(len(self.sessions), len(chunks))
        others = [self._helpers.submit(self._run_all, self.sessions[i], chunks[i::n]) for i in range(1, n)]
        outputs = [self._run_all(self.sessions[0], chunks[0::n]), *(f.result() for f in others)]
        ordered: list[torch.Tensor] = [torch.empty(0)] * len(chunks)
        for i, outs in enumerate(outputs):
            ordered[i::n] = outs
        return torch.cat(ordered)

    def _run_all(self, session: Any, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self._run(session, chunk) for chunk in chunks]

    def _run(self, session: Any, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(session.run(None, {self.input: array})[0])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, P) probabilities."""
        return torch.sigmoid(self(x))


Runtime = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------ selection
def onnx_module(name: str = "onnxruntime") -> ModuleType | None:
    """The ONNX Runtime module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def onnx_path_for(weights: Path) -> Path:
    """Where the ONNX export of the model file ``weights`` lives: beside it, same stem."""
    return weights.with_suffix(ONNX_SUFFIX)


def expected_onnx_sha256(path: Path) -> str | None:
    """The pinned hash of a shipped export, else its ``.sha256`` sidecar's, else None."""
    if path.resolve().parent == MODELS_DIR.resolve():
        return SHIPPED_ONNX_SHA256.get(path.name)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text(errors="replace").split()
        if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
            return words[0].lower()
    return None


def export_matches(path: Path, weights: Path) -> bool:
    """Whether ``path`` is an intact export (its hash is pinned or in a sidecar, and matches)
    of the model file ``weights`` (its recorded source hash is that file's)."""
    expected = expected_onnx_sha256(path)
    if not path.is_file() or expected is None or sha256_of(path) != expected:
        return False
    return source_sha256(path) == sha256_of(weights)


def source_sha256(path: Path) -> str | None:
    """The source .pt's SHA-256 recorded in an export's metadata (None if absent or unreadable)."""
    onnx = onnx_module("onnx")
    if onnx is None:  # onnxruntime can run a model without the onnx package; read it with ORT then
        ort = onnx_module()
        if ort is None:
            return None
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        return meta.custom_metadata_map.get(SOURCE_KEY)
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == SOURCE_KEY), None)


def select_runtime(name: str, model: BRNet, device: torch.device, weights: Path | None,
                   ort: Optional[ModuleType] = None, find_ort: Callable[[], ModuleType | None] = onnx_module) -> Any:
    """The runtime ``name`` ("auto", "torch", "onnx") for ``model`` loaded from ``weights``
    (None: a model built in memory, which has no export) on ``device``.

    "auto": ONNX Runtime on the CPU when it is installed (``find_ort``) and a matching export of
    ``weights`` exists, else PyTorch. "onnx" without either is a RefineError saying what to do.
    """
    if name not in RUNTIMES:
        raise RefineError(f"Unknown runtime {name!r}: use {', '.join(RUNTIMES)}.")
    if name == "torch" or (name == "auto" and device.type != "cpu"):
        return TorchRuntime(model, device)
    if device.type != "cpu":
        raise RefineError("--runtime onnx runs on the CPU only: use --device cpu, or --runtime torch on the GPU.")
    ort = ort or find_ort()
    export = onnx_path_for(Path(weights)) if weights is not None else None
    usable = export is not None and export_matches(export, Path(weights))  # type: ignore[arg-type]
    if ort is not None and usable:
        return OnnxRuntime(export, ort=ort, layer_elements=largest_layer_elements(model))  # type: ignore[arg-type]
    if name == "auto":
        return TorchRuntime(model, device)
    if ort is None:
        raise RefineError("--runtime onnx needs ONNX Runtime: pip install onnxruntime (or livertumorrefine[onnx]), "
                          "or use --runtime torch.")
    raise RefineError(f"No ONNX export matching the model {weights} was found at {export}: make one with "
                      "`python -m LiverTumorRefineLib.refine.runtime MODEL.pt` (with --click for a click model), or use "
                      "--runtime torch.")


# --------------------------------------------------------------------------------------- export
def export_onnx(model: BRNet, weights: str | os.PathLike, out: str | os.PathLike | None = None,
                calibration: Iterable[torch.Tensor] | None = None) -> Path:
    """Export ``model`` (a boundary refiner or a click model, loaded from the model file
    ``weights``) to ONNX beside it (or at ``out``), with the file's SHA-256 in the metadata and a
    ``.sha256`` sidecar; returns the path. With ``calibration`` (batches of real network inputs)
    the export is quantised to int8 (static, per-channel weights), calibrated on those batches."""
    onnx = importlib.import_module("onnx")
    from LiverTumorRefineLib.volume.atomic import atomic_path, write_text

    weights = Path(weights)
    out = Path(out) if out is not None else onnx_path_for(weights)
    side = input_px(model)
    if side is None:
        raise ValueError("only a boundary refiner or a click model can be exported (its input size is unknown)")
    channels = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    example = torch.zeros((2, channels, side, side))
    model = model.cpu().eval()
    with atomic_path(out) as tmp:
        torch.onnx.export(model, (example,), str(tmp), input_names=["patches"], output_names=["logits"],
                          dynamic_axes={"patches": {0: "n"}, "logits": {0: "n"}}, opset_version=OPSET, dynamo=False)
        if calibration is not None:
            _quantise(Path(tmp), list(calibration))
        exported = onnx.load(str(tmp))
        entry = exported.metadata_props.add()
        entry.key, entry.value = SOURCE_KEY, sha256_of(weights)
        onnx.save(exported, str(tmp))
        digest = sha256_of(Path(tmp))
    write_text(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n")
    return out


def _quantise(path: Path, batches: list[torch.Tensor]) -> None:
    """Quantise the fp32 ONNX model at ``path`` in place to int8 (QDQ, per-channel weights of 7 bits:
    ``reduce_range``). On x86 CPUs without VNNI (AVX2 only, as many AMD EPYC and older Intel ones)
    ONNX Runtime multiplies uint8 by int8 with VPMADDUBSW, whose int16 sums saturate with 8-bit
    weights: there the previous export's probabilities were 0.011 off PyTorch's on average and its
    refined Dice 0.012-0.018 off per phantom; with 7-bit weights, 0.0014 and 0.002 (README)."""
    quant = importlib.import_module("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"patches": b.numpy().astype(np.float32)} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    fp32 = path.with_name(path.name + ".fp32")
    path.replace(fp32)
    try:
        quant.quantize_static(str(fp32), str(path), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                              activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
                              reduce_range=True)
    finally:
        fp32.unlink(missing_ok=True)


class Recorder:
    """A runtime that keeps a copy of the network inputs it runs (calibration data for int8)."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.inputs = inner, []
        self.name = getattr(inner, "name", "torch")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.inner(x)


# Training-range phantoms (training draws from 1000 up): int8 calibration never sees held-out cases.
CALIBRATION_SEEDS = (1000, 1001)
CALIBRATION_INPUTS = 512


def calibration_inputs(weights: Path, seeds: Iterable[int] = CALIBRATION_SEEDS, count: int = CALIBRATION_INPUTS) -> torch.Tensor:
    """``count`` network inputs (a fixed random pick) that the Refiner makes for phantoms
    ``seeds`` with their simulated coarse masks."""
    from LiverTumorRefineLib.refine.refiner import Refiner
    from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse
    from LiverTumorRefineLib.training.phantom import make_phantom

    refiner = Refiner(weights, device="cpu", runtime="torch")
    recorder = Recorder(refiner.runtime)
    refiner.runtime = recorder
    for seed in seeds:
        case = make_phantom(seed)
        truth = case.label.array == 2
        coarse = simulate_coarse(truth, case.image.spacing_zyx, np.random.default_rng(seed + 7), image=case.image.array)
        if coarse.any():
            refiner.refine(case.image.array, coarse, case.image.spacing_zyx)
    inputs = torch.cat(recorder.inputs)
    return inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:count]]


def main(argv: list[str] | None = None) -> None:
    """``python -m LiverTumorRefineLib.refine.runtime [MODEL.pt] [--int8 | --click] [--out FILE]``:
    export a model file (default: the shipped refiner, or with ``--click`` the shipped click
    model) to ONNX beside it and print the export's SHA-256."""
    import argparse

    from LiverTumorRefineLib.refine.weights import default_weights_path, load_model

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", nargs="?", help="model file (default: the shipped one)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--int8", action="store_true", help="quantise to int8, calibrated on training-range phantoms")
    kind.add_argument("--click", action="store_true", help="the model is a click model (exported in fp32)")
    parser.add_argument("--out", help="where to write (default: beside the model, .onnx)")
    args = parser.parse_args(argv)
    if args.click:
        from LiverTumorRefineLib.coarse import clicknet  # the click model's package builds on this one

        weights = Path(args.model or default_weights_path(clicknet.DEFAULT_MODEL))
        model, calibration = clicknet.load_click_model(weights), None
    else:
        weights = Path(args.model or default_weights_path())
        model = load_model(weights)
        calibration = calibration_inputs(weights).split(64) if args.int8 else None
    out = export_onnx(model, weights, args.out, calibration)
    print(f"{sha256_of(out)}  {out}")


if __name__ == "__main__":
    main()
