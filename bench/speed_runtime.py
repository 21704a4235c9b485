"""Inference runtimes side by side in one run: throughput against the CPU's measured peak, and
the refined masks' Dice on held-out phantoms against plain PyTorch.

    python bench/speed_runtime.py                 # everything (about 10 min on 2 idle cores)
    python bench/speed_runtime.py --no-compile    # without torch.compile (its compile is the slow part)
    python bench/speed_runtime.py --cases 2 --iou 0.35 0.2 0.1

Prints, in this order:

* peak: the better of a 4096x4096 fp32 matrix product (sgemm) and a large 128-channel 3x3
  convolution in channels_last, with torch on all its threads, in GFLOP/s; and the int8 peak:
  a 1024x1024 uint8 x int8 integer matrix product in ONNX Runtime, in GOP/s;
* the shipped BRNet's FLOPs per network input, counted by ``torch.utils.flop_counter`` (a
  multiply-add counts 2);
* for each runtime and batch size: network inputs/s, achieved GFLOP/s and its % of the peak
  (and, for int8, of the int8 peak),
  on real network inputs cut from a held-out phantom;
* quality: each runtime's refined masks on held-out phantoms (seeds 90000+, their
  ``simulate_coarse`` coarse masks), Dice against the truth and the difference from plain
  PyTorch fp32, per case;
* placement: patches, patches per boundary voxel and FLOPs per boundary voxel at today's NMS
  IoU and at lower ones, with their Dice, per case.

int8 is calibrated on network inputs from training-range phantoms (seeds 1000+), never on the
held-out ones. Asserts nothing (timings belong in benchmarks).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LiverTumorRefineLib.evaluate.metrics import dice  # noqa: E402
from LiverTumorRefineLib.refine import runtime as rt  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.refine.sampling import boundary_band  # noqa: E402
from LiverTumorRefineLib.refine.weights import default_weights_path, load_model  # noqa: E402
from cases import simulated_cases  # noqa: E402  (bench/cases.py)

def sgemm_pass(n: int = 4096) -> Callable[[], float]:
    """One n x n fp32 matrix product (2 n^3 FLOP), GFLOP/s per call."""
    a, b = torch.randn(n, n), torch.randn(n, n)

    def run() -> float:
        t = time.perf_counter()
        a @ b
        return 2 * n**3 / (time.perf_counter() - t) / 1e9
    return run


def conv_pass(batch: int = 16, channels: int = 128, px: int = 48) -> Callable[[], float]:
    """One large 3x3 convolution in channels_last (oneDNN's best case: many channels), GFLOP/s
    per call: the convolution peak, which on some CPUs beats the sgemm library's."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, px, px).contiguous(memory_format=torch.channels_last)
    flop = 2 * 9 * channels * channels * px * px * batch

    def run() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            conv(x)
            return flop / (time.perf_counter() - t) / 1e9
    return run


def int8_pass(n: int = 1024) -> Callable[[], float]:
    """One n x n uint8 x int8 -> int32 matrix product in ONNX Runtime (MatMulInteger, the integer
    kernels the int8 export's convolutions run on), on torch's thread count: the int8 peak, in
    GOP/s (a multiply-add counts 2). 1024 ran fastest of 1024, 2048 and 4096 on the project's CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8_peak",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    session.run(None, feeds)

    def run() -> float:  # several products per timing: one takes about a millisecond
        t = time.perf_counter()
        for _ in range(INT8_REPEATS):
            session.run(None, feeds)
        return INT8_REPEATS * 2 * n**3 / (time.perf_counter() - t) / 1e9
    return run


INT8_REPEATS = 16


def flops_per_input(model: torch.nn.Module, cfg: Any) -> int:
    x = torch.zeros(1, cfg.in_channels, cfg.patch_px, cfg.patch_px)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


REFINER_CALL = 128  # network inputs per Refiner call (its default batch_size)


def throughput_pass(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch: int) -> Callable[[], float]:
    """One pass of ``fn`` over ``inputs`` in calls of ``batch`` inputs (after a warm-up now),
    network inputs/s. A runtime (which cuts its calls into chunks of its own batch size) gets
    calls of at least the Refiner's 128, as in a refinement, so its sessions can run side by side."""
    if isinstance(fn, (rt.TorchRuntime, rt.OnnxRuntime)):
        batch = max(batch, REFINER_CALL)
    chunks = list(inputs.split(batch))[:max(1, len(inputs) // batch)]
    fn(chunks[0])

    def run() -> float:
        t = time.perf_counter()
        for chunk in chunks:
            fn(chunk)
        return sum(len(c) for c in chunks) / (time.perf_counter() - t)
    return run


def best_of_rounds(passes: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Every pass once per round, round after round, and each one's best: on a shared machine
    the load changes over minutes, and interleaving gives every row the same chances."""
    best = {name: 0.0 for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            best[name] = max(best[name], run())
    return best


def recorded_inputs(refiner: Refiner, cases: list[tuple[np.ndarray, np.ndarray, tuple]]) -> torch.Tensor:
    """The network inputs the Refiner makes for ``cases``."""
    inner = refiner.runtime
    refiner.runtime = rt.Recorder(inner)
    try:
        for image, coarse, spacing in cases:
            refiner.refine(image, coarse, spacing)
        return torch.cat(refiner.runtime.inputs)
    finally:
        refiner.runtime = inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2, help="held-out phantoms for the quality check")
    parser.add_argument("--iou", type=float, nargs="+", default=[0.35, 0.2, 0.1], help="NMS IoUs for the placement")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--no-throughput", action="store_true", help="only the quality and placement checks")
    parser.add_argument("--quality", nargs="+", help="runtimes in the quality check (default: all; 'torch fp32' first)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best of them is kept)")
    args = parser.parse_args()

    weights = default_weights_path()
    model = load_model(weights).eval()
    cfg = model.patch_config
    print(f"CPU: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, bf16 {'yes' if rt.bf16_supported() else 'no'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    flops = flops_per_input(model, cfg)
    print(f"BRNet: {flops / 1e9:.3f} GFLOP per {cfg.patch_px}x{cfg.patch_px} network input "
          f"(x{4} orientations per patch with the default TTA)")

    held = [(case.name, case.image.array, coarse, case.image.spacing_zyx, truth)
            for case, _seed, truth, coarse in simulated_cases(args.cases, False)]
    plain = Refiner(weights, device="cpu", runtime="torch")
    plain.runtime = rt.TorchRuntime(plain.model, torch.device("cpu"), channels_last=False)  # the path before this work
    inputs = recorded_inputs(plain, [(image, coarse, spacing) for _n, image, coarse, spacing, _t in held[:1]])
    print(f"throughput inputs: {len(inputs)} network inputs recorded on {held[0][0]}")

    tmp = Path(tempfile.mkdtemp(prefix="speed_runtime_"))
    fp32_path = rt.export_onnx(model, weights, tmp / "brnet_fp32.onnx")
    calibration = rt.calibration_inputs(weights)
    int8_path = rt.export_onnx(model, weights, tmp / "brnet_int8.onnx", calibration=calibration.split(64))
    print(f"int8 calibrated on {len(calibration)} inputs from training-range phantoms {rt.CALIBRATION_SEEDS}")

    runtimes: dict[str, Any] = {"torch fp32": rt.TorchRuntime(model, torch.device("cpu"), channels_last=False),
                                "torch fp32 channels_last": rt.TorchRuntime(load_model(weights), torch.device("cpu"),
                                                                            channels_last=True)}
    if rt.bf16_supported():
        runtimes["torch bf16 channels_last"] = rt.TorchRuntime(load_model(weights), torch.device("cpu"), bf16=True,
                                                               channels_last=True)
        runtimes["torch bf16"] = rt.TorchRuntime(load_model(weights), torch.device("cpu"), bf16=True, channels_last=False)
    runtimes["onnx fp32"] = rt.OnnxRuntime(fp32_path)
    runtimes["onnx int8"] = rt.OnnxRuntime(int8_path)  # what auto runs: sessions side by side (rt.STREAMS)
    runtimes["onnx int8, 1 session"] = rt.OnnxRuntime(int8_path, streams=1)

    if not args.no_throughput:
        measure_throughput(args, runtimes, inputs, flops, weights, fp32_path)
    quality_and_placement(args, runtimes, held, flops, weights)


def measure_throughput(args: argparse.Namespace, runtimes: dict[str, Any], inputs: torch.Tensor, flops: int,
                       weights: Path, fp32_path: Path) -> None:
    """Every runtime at several batch sizes, interleaved, against the measured peak."""
    passes: dict[str, Callable[[], float]] = {"peak sgemm": sgemm_pass(), "peak conv": conv_pass(), "peak int8": int8_pass()}
    for name, runtime in runtimes.items():
        for batch in (16, 32, 64, 128, 256) if name in ("torch fp32", "onnx fp32", "onnx int8") else (32, 128):
            chunked = rt.TorchRuntime(runtime.model, runtime.device, runtime.bf16, runtime.channels_last) \
                if isinstance(runtime, rt.TorchRuntime) else rt.OnnxRuntime(runtime.path, streams=len(runtime.sessions))
            chunked.batch_size = batch
            passes[f"{name}|{batch}"] = throughput_pass(chunked, inputs, batch)
    if not args.no_compile:
        compiled = torch.compile(load_model(weights).eval())
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(inputs[:32])
            print(f"torch.compile: compiled in {time.perf_counter() - t:.0f} s")

            def run_compiled(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return compiled(x)
            passes["torch.compile fp32|32"] = throughput_pass(run_compiled, inputs, 32)
        except Exception as exc:  # inductor needs a C++ compiler; report, do not stop the bench
            print(f"torch.compile failed after {time.perf_counter() - t:.0f} s: {type(exc).__name__}: {str(exc)[:200]}")
    best = best_of_rounds(passes, args.rounds)
    threads = torch.get_num_threads()
    if threads > 1:  # the same inputs on one thread (after the interleaved rounds: a thread count is process-wide)
        torch.set_num_threads(1)
        one = {"torch fp32, 1 thread|32": throughput_pass(rt.TorchRuntime(load_model(weights), torch.device("cpu"), channels_last=False),
                                                          inputs, 32),
               "torch fp32 channels_last, 1 thread|32": throughput_pass(
                   rt.TorchRuntime(load_model(weights), torch.device("cpu"), channels_last=True), inputs, 32),
               "onnx fp32, 1 thread|64": throughput_pass(rt.OnnxRuntime(fp32_path, threads=1), inputs, 64)}
        best.update(best_of_rounds(one, max(1, args.rounds // 2)))
        torch.set_num_threads(threads)
    peak = max(best["peak sgemm"], best["peak conv"])
    print(f"\npeak: {peak:.0f} GFLOP/s fp32 = the better of a 4096x4096 sgemm ({best['peak sgemm']:.0f}) and a "
          f"128->128 channel 3x3 conv, channels_last, 16x48x48 ({best['peak conv']:.0f}), torch, {threads} threads, "
          f"best of {args.rounds} interleaved rounds")
    print(f"int8 peak: {best['peak int8']:.0f} GOP/s = a 1024x1024 uint8 x int8 MatMulInteger in ONNX Runtime, "
          f"{threads} threads (for the int8 rows: the same work in int8 arithmetic)")
    print(f"\n{'runtime':>28} {'batch':>5} {'inputs/s':>9} {'patches/s':>9} {'GFLOP/s':>8} {'% peak':>7} {'% int8 peak':>11}  "
          f"(patches/s: 4 orientations each)")
    for key, rate in best.items():
        if key.startswith("peak"):
            continue
        name, batch = key.split("|")
        int8 = f"{100 * rate * flops / 1e9 / best['peak int8']:>10.0f}%" if "int8" in name else ""
        print(f"{name:>28} {batch:>5} {rate:>9.0f} {rate / 4:>9.0f} {rate * flops / 1e9:>8.0f} "
              f"{100 * rate * flops / 1e9 / peak:>6.0f}% {int8}")
    print(f"load average now {os.getloadavg()[0]:.2f}", flush=True)


def quality_and_placement(args: argparse.Namespace, runtimes: dict[str, Any], held: list, flops: int,
                          weights: Path) -> None:
    """Refined Dice per runtime and per NMS IoU on the held-out phantoms, against torch fp32."""
    names = args.quality or list(runtimes)

    print("\nquality: refined Dice against the truth; difference from torch fp32 per case (limit 0.005)")
    reference: dict[str, np.ndarray] = {}
    refiners = {name: Refiner(weights, device="cpu", runtime="torch") for name in names}
    for name, refiner in refiners.items():
        refiner.runtime = runtimes[name]
        for case, image, coarse, spacing, truth in held:
            t = time.perf_counter()
            result = refiner.refine(image, coarse, spacing)
            seconds = time.perf_counter() - t
            if name == "torch fp32":
                reference[case] = result.mask
            base = dice(reference[case], truth)
            got = dice(result.mask, truth)
            print(f"{name:>28} {case:>14}: coarse {dice(coarse, truth):.4f} refined {got:.4f}  "
                  f"diff {got - base:+.4f}  agreement with fp32 mask {dice(result.mask, reference[case]):.4f}  "
                  f"{result.stats['patches']} patches, infer {result.stats['seconds']['infer']:.2f} s, "
                  f"total {seconds:.2f} s", flush=True)

    print(f"\nplacement: NMS IoU between patch squares (today 0.35), runtime auto; FLOPs per boundary voxel = "
          f"patches x 4 x FLOPs; Dice difference from the first IoU ({args.iou[0]})")
    first: dict[str, float] = {}
    for iou in args.iou:
        refiner = Refiner(weights, device="cpu", runtime="auto")
        refiner.cfg = dataclasses.replace(refiner.cfg, nms_iou=iou)
        for case, image, coarse, spacing, truth in held:
            band = int(boundary_band(torch.from_numpy(coarse)).sum())
            result = refiner.refine(image, coarse, spacing)
            got = dice(result.mask, truth)
            first.setdefault(case, got)
            n = result.stats["patches"]
            print(f"  iou {iou:.2f} {case:>14}: {n:>5} patches, {n / band:.4f} patches per boundary voxel, "
                  f"{n * refiner.tta * flops / band / 1e6:.2f} MFLOP per boundary voxel, refined Dice {got:.4f} "
                  f"diff {got - first[case]:+.4f}  infer {result.stats['seconds']['infer']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
