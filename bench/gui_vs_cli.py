"""The Slicer module's path (Logic + worker process) against the command line on the same case.

    .venv/bin/python bench/gui_vs_cli.py [--seed 90000] [--repeat 1]

Writes a phantom CT and its simulated coarse mask to a temporary folder, then times, in one run
and alternately: ``livertumorrefine refine`` as a subprocess, the Logic's ``startRefine`` (worker
process, polled every 100 ms as the module's timer does) on the same CT and mask in a headless
scene, and the bare process start (``python -m LiverTumorRefineLib.worker --help``). All use the
shipped model on the CPU.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine" / "Testing" / "Python"))

from LiverTumorRefineLib.volume import io  # noqa: E402
from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
import slicer_testing as st  # noqa: E402
from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse  # noqa: E402
from LiverTumorRefineLib.training.phantom import make_phantom  # noqa: E402
from LiverTumorRefineLib.scene.workerprocess import LIB_PARENT  # noqa: E402


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=LIB_PARENT)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=90000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    phantom = make_phantom(args.seed)
    truth = phantom.label.array == 2
    coarse = simulate_coarse(truth, phantom.image.spacing_zyx, np.random.default_rng(args.seed))
    print(f"phantom {args.seed}: {phantom.image.array.shape} voxels, {int(truth.sum())} tumour voxels")
    with tempfile.TemporaryDirectory() as work:
        ct_path, mask_path = Path(work) / "ct.nii.gz", Path(work) / "coarse.nii.gz"
        io.write_volume(phantom.image, ct_path)
        io.write_volume(phantom.image.with_array(coarse.astype(np.uint8)), mask_path)
        app = st.make_app()
        volume = app.Volumes.AddArchetypeVolume(str(ct_path), "CT")
        segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coarse")
        labelmap = app.Volumes.AddArchetypeVolume(str(mask_path), "coarse", 1)
        app.Segmentations.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        coarseId = segmentation.GetSegmentation().GetNthSegmentID(0)
        logic = ltr.LiverTumorRefineLogic()
        cli = [sys.executable, "-m", "LiverTumorRefineLib.cli", "refine", "--image", str(ct_path), "--mask",
               str(mask_path), "--out", str(Path(work) / "refined.nii.gz"), "--device", "cpu", "--force"]
        for _ in range(args.repeat):
            start = timed([sys.executable, "-m", "LiverTumorRefineLib.worker", "--help"])
            imports = timed([sys.executable, "-c", "import LiverTumorRefineLib.worker, LiverTumorRefineLib.api"])
            cli_s = timed(cli)
            t0 = time.perf_counter()
            job = logic.startRefine(volume, segmentation, coarseId, device="cpu")
            while not job.done:
                time.sleep(0.1)
                job.state()
            worker_s = time.perf_counter() - t0
            result = job.finish()
            gui_s = time.perf_counter() - t0
            print(f"CLI refine {cli_s:.2f} s | Logic+worker {gui_s:.2f} s (worker done after {worker_s:.2f} s, "
                  f"engine {result.stats['seconds'].get('total', float('nan')):.2f} s, {result.patches} patches) | "
                  f"process start: python -m worker --help {start:.2f} s, importing the engine {imports:.2f} s")


if __name__ == "__main__":
    main()
