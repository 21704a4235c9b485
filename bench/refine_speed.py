"""Refinement speed: seconds per stage, patches/s and peak RSS on synthetic CTs with tumours.

    python bench/refine_speed.py [--tumours 5] [--size 512 512 120] [--device cpu] [--repeats 3]
    python bench/refine_speed.py --sweep sizes     # the same tumours in 128x128x64 ... 512x512x300
    python bench/refine_speed.py --sweep tumours   # 1 ... 20 tumours in 512x512x120
    python bench/refine_speed.py --seeded          # coarse mask grown from one seed per tumour, then refined
    python bench/refine_speed.py --no-intensity-gate  # the same without the intensity gate (what it costs)
    python bench/refine_speed.py --quick           # under a minute: README's headline case once, against its figure
    python bench/refine_speed.py --cli [--tumours 5] [--runtimes torch auto]
                                                   # the whole `livertumorrefine refine` process on the case, and
                                                   # where its time goes (imports, reading, refining, writing)

Prints figures; asserts nothing (timings belong in benchmarks, not tests). Uses the shipped
model when present, else an untrained BRNet of the same architecture (same cost). A sweep runs
each configuration in its own process so that every peak RSS is that configuration's own; the
peak counter is reset after the case is built (Linux), so it covers refining with the inputs held.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.config import INTENSITY_GATE, PatchConfig  # noqa: E402
from LiverTumorRefineLib.refine.network import build_model  # noqa: E402
from LiverTumorRefineLib.refine.refiner import Refiner  # noqa: E402
from LiverTumorRefineLib.coarse.seeded import grow_from_seeds  # noqa: E402
from LiverTumorRefineLib.refine.weights import default_weights_path  # noqa: E402
from rss import peak_rss_mb, reset_peak_rss  # noqa: E402  (bench/rss.py)


def synthetic_case(size_xyz: tuple[int, int, int], n_tumours: int, spacing_zyx=(2.5, 0.75, 0.75), seed: int = 0):
    """CT-like noise volume with ``n_tumours`` lobulated lesions of 15-50 mm and a coarse mask
    that is each lesion grown or shrunk by 2 mm."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    image = rng.normal(100, 15, (nz, ny, nx)).astype(np.float32)
    coarse = np.zeros((nz, ny, nx), bool)
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    for _ in range(n_tumours):
        d = rng.uniform(15, 50)
        c = [rng.uniform(d, n * s - d) for n, s in zip((nz, ny, nx), spacing_zyx)]
        r = np.sqrt(((zz * spacing_zyx[0] - c[0]) ** 2) + ((yy * spacing_zyx[1] - c[1]) ** 2) + ((xx * spacing_zyx[2] - c[2]) ** 2))
        inside = r < d / 2
        image[inside] -= 40
        coarse |= r < d / 2 + rng.choice([-2.0, 2.0])
    return image, coarse, spacing_zyx


# README's headline figure for 512x512x120 with 5 tumours (2 idle CPU cores, shipped model), for --quick.
README_WALL_S = 2.21
SIZES = [(128, 128, 64), (256, 256, 120), (512, 512, 120), (512, 512, 240), (512, 512, 300)]
TUMOURS = [1, 2, 5, 10, 20]


def embedded_case(size_xyz: tuple[int, int, int], n_tumours: int, block_xyz=(128, 128, 64)):
    """The tumours of a ``block_xyz`` case placed at the centre of a larger noise volume, so that
    every size holds exactly the same tumours."""
    block, block_coarse, spacing = synthetic_case(block_xyz, n_tumours)
    rng = np.random.default_rng(1)
    nx, ny, nz = size_xyz
    image = rng.normal(100, 15, (nz, ny, nx)).astype(np.float32)
    coarse = np.zeros((nz, ny, nx), bool)
    at = tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip((nz, ny, nx), block.shape))
    image[at], coarse[at] = block, block_coarse
    return image, coarse, spacing


def tumour_centres(coarse: np.ndarray) -> list[tuple[float, float, float]]:
    """One seed per lesion: the centroid (voxels, z y x) of each coarse component."""
    labels = component_labels(coarse)
    return [tuple(np.argwhere(labels == i).mean(axis=0)) for i in range(1, int(labels.max()) + 1)]


def measure(size: tuple[int, int, int], tumours: int, device: str, batch_size: int, repeats: int, same_tumours: bool,
            seeded: bool = False, intensity_gate: bool = INTENSITY_GATE) -> dict:
    """Best-of-``repeats`` refinement stats (after one warm-up) and this process's peak RSS. With
    ``seeded`` each run first grows the coarse mask from one seed per tumour (``seconds["seed"]``)
    and refines it as ``refine --seeds`` does (``Refiner.refine_seeded``)."""
    weights = default_weights_path()
    model = weights if weights.is_file() else build_model(PatchConfig())
    refiner = Refiner(model, device=device, batch_size=batch_size, intensity_gate=intensity_gate)
    image, coarse, spacing = embedded_case(size, tumours) if same_tumours else synthetic_case(size, tumours)
    seeds = tumour_centres(coarse) if seeded else []
    reset_peak_rss()  # the peak from here on is the refinement's (plus the inputs it holds), not the case building
    refiner.refine(image, coarse, spacing)  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        mask = grow_from_seeds(image, seeds, spacing) if seeded else coarse
        grown = time.perf_counter() - t
        stats = (refiner.refine_seeded if seeded else refiner.refine)(image, mask, spacing).stats
        stats["wall"] = time.perf_counter() - t
        if seeded:
            stats["seconds"] = {"seed": grown, **stats["seconds"]}
        runs.append(stats)
    best = min(runs, key=lambda s: s["wall"])
    return {"size": list(size), "tumours": tumours, "device": str(refiner.device), "patches": best["patches"],
            "crops": [list(c) for c in best["crop_shapes"]], "wall": best["wall"], "seconds": best["seconds"],
            "peak_rss_mb": peak_rss_mb(),
            "model": "shipped" if weights.is_file() else "untrained (same cost)", "threads": torch.get_num_threads()}


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of a process and its stdout."""
    t = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, done.stdout


# Runs a module as ``python -m`` does and writes the process's own peak RSS (VmHWM, Linux: the
# high-water mark of its own memory, unlike ru_maxrss, which keeps the parent's size at fork) to
# the file in sys.argv[1].
PEAK_WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open('/proc/self/status') as status, open(out, 'w') as f:
        f.write(next((line.split()[1] for line in status if line.startswith('VmHWM')), 'nan'))
atexit.register(peak)
module = sys.argv.pop(1)
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def cli_process(args: argparse.Namespace) -> None:
    """The whole CLI process on the case written as NIfTI, per runtime, best of ``repeats``
    (interleaved), beside its parts: Python + package imports, reading, refining, writing."""
    import tempfile

    from LiverTumorRefineLib.volume.geometry import Geometry, Volume
    from LiverTumorRefineLib.volume.io import read_volume, write_volume

    image, coarse, spacing = synthetic_case(tuple(args.size), args.tumours)
    folder = Path(tempfile.mkdtemp(prefix="refine_speed_cli_"))
    geometry = Geometry(spacing=tuple(float(s) for s in spacing[::-1]))
    ct, mask = folder / "ct.nii.gz", folder / "coarse.nii.gz"
    write_volume(Volume(image.astype(np.int16), geometry), ct)
    write_volume(Volume(coarse.astype(np.uint8), geometry), mask)
    lib = str(Path(__file__).resolve().parents[1] / "LiverTumorRefine")
    env = {**os.environ, "PYTHONPATH": lib + os.pathsep + os.environ.get("PYTHONPATH", "")}
    python = [sys.executable]
    parts = {"python alone": python + ["-c", "pass"],
             "import cli": python + ["-c", "import LiverTumorRefineLib.cli"],
             "import cli + Refiner": python + ["-c", "import LiverTumorRefineLib.cli; "
                                               "from LiverTumorRefineLib.refine.refiner import Refiner"],
             "import onnxruntime": python + ["-c", "import onnxruntime"]}
    peak_file = folder / "peak_kb.txt"
    runs = {name: python + ["-c", PEAK_WRAPPER, str(peak_file), "LiverTumorRefineLib.cli", "refine", "--image", str(ct),
                            "--mask", str(mask), "--out", str(folder / f"refined_{name}.nii.gz"), "--force",
                            "--runtime", name]
            for name in args.runtimes}
    best: dict[str, float] = {}
    lines: dict[str, str] = {}
    peaks: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, command in {**parts, **runs}.items():
            try:
                seconds, out = timed(command, env)
            except subprocess.CalledProcessError as exc:
                print(f"{name}: failed ({exc.stderr.strip().splitlines()[-1] if exc.stderr else exc.returncode})")
                continue
            if name in runs:
                peaks[name] = max(peaks.get(name, 0.0), float(peak_file.read_text() or "nan") / 1024)
            if seconds < best.get(name, float("inf")):
                best[name], lines[name] = seconds, out.strip().splitlines()[-1] if out.strip() else ""
    t = time.perf_counter()
    volume = read_volume(ct)
    read_mask = read_volume(mask)
    reading = time.perf_counter() - t
    t = time.perf_counter()
    write_volume(Volume(read_mask.array.astype(np.uint8), volume.geometry), folder / "written.nii.gz")
    writing = time.perf_counter() - t
    print(f"case {tuple(args.size)} (x,y,z), {args.tumours} tumours, NIfTI in {folder}; best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, seconds in best.items():
        extra = f"peak RSS {peaks[name]:.0f} MiB  {lines[name]}" if name in runs else ""
        print(f"{name:>24}: {seconds:6.2f} s  {extra}")
    print(f"{'read CT + mask':>24}: {reading:6.2f} s (in process)")
    print(f"{'write refined mask':>24}: {writing:6.2f} s (in process, verified)")


def sweep(kind: str, args: argparse.Namespace) -> None:
    """Each configuration in a fresh process; one table row per configuration."""
    configs = [(size, args.tumours) for size in SIZES] if kind == "sizes" else [(tuple(args.size), n) for n in TUMOURS]
    print(f"sweep {kind}: device {args.device}, best of {args.repeats} after a warm-up, one process per row")
    print(f"{'size (x,y,z)':>16} {'tumours':>7} {'patches':>7} {'wall s':>7} {'peak RSS MB':>11}  stages")
    rows = []
    for size, n in configs:
        command = [sys.executable, __file__, "--size", *map(str, size), "--tumours", str(n), "--device", args.device,
                   "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--json"]
        if kind == "sizes":
            command.append("--same-tumours")
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append(row)
        stages = "  ".join(f"{k} {v:.2f}" for k, v in row["seconds"].items())
        print(f"{'x'.join(map(str, size)):>16} {n:>7} {row['patches']:>7} {row['wall']:>7.2f} {row['peak_rss_mb']:>11.0f}  {stages}",
              flush=True)
    if kind == "sizes":
        walls = {tuple(r["size"]): r["wall"] for r in rows}
        if (512, 512, 120) in walls and (512, 512, 240) in walls:
            print(f"512x512x240 / 512x512x120 wall ratio (same tumours, twice the volume): "
                  f"{walls[(512, 512, 240)] / walls[(512, 512, 120)]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 120), metavar=("X", "Y", "Z"))
    parser.add_argument("--tumours", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", choices=["sizes", "tumours"], help="run a series of configurations")
    parser.add_argument("--same-tumours", action="store_true", help="the tumours of a 128x128x64 case, centred")
    parser.add_argument("--json", action="store_true", help="print one JSON line (used by --sweep)")
    parser.add_argument("--seeded", action="store_true", help="grow the coarse mask from one seed per tumour first")
    parser.add_argument("--cli", action="store_true", help="time the whole `livertumorrefine refine` process")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "auto"], help="--runtime values for --cli")
    parser.add_argument("--no-intensity-gate", action="store_true", help="refine without the intensity gate (its cost)")
    parser.add_argument("--quick", action="store_true",
                        help="one run of the default case after a warm-up (under a minute), compared with README's figure")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if args.sweep:
        sweep(args.sweep, args)
        return
    if args.cli:
        cli_process(args)
        return
    row = measure(tuple(args.size), args.tumours, args.device, args.batch_size, args.repeats, args.same_tumours,
                  args.seeded, not args.no_intensity_gate)
    if args.json:
        print(json.dumps(row))
        return
    stages = "  ".join(f"{k} {v:.3f}s" for k, v in row["seconds"].items())
    print(f"case {tuple(args.size)} (x,y,z), {args.tumours} tumours{' from one seed each' if args.seeded else ''}; device {row['device']}, torch threads {row['threads']}, "
          f"model {row['model']}")
    print(f"patches {row['patches']}  crops {row['crops']}")
    print(f"best of {args.repeats}: wall {row['wall']:.3f}s  ({stages})")
    print(f"patches/s {row['patches'] / row['wall']:.0f} overall, "
          f"{row['patches'] / max(row['seconds']['infer'], 1e-9):.0f} in inference")
    print(f"peak RSS {row['peak_rss_mb']:.0f} MB")
    if args.quick:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"README: {README_WALL_S:.2f} s for this case on 2 otherwise idle CPU cores (best of 3); here "
              f"{row['wall']:.2f} s (one run) with {os.cpu_count()} CPUs and a load average of {load:.1f}. "
              "Other work on the machine (load above 0.5) slows inference in proportion.")


if __name__ == "__main__":
    main()
