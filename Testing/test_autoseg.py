"""Automatic coarse segmentation: slab inputs, clean-up, training, the shipped network, the CLI,
and TotalSegmentator as a coarse source."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from LiverTumorRefineLib import api

from LiverTumorRefineLib.volume import io

from LiverTumorRefineLib.coarse import totalseg
from LiverTumorRefineLib.coarse.autoseg import Segmenter, clean_labels, context_stack, load_segnet
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.training.phantom import make_phantom, write_case
from LiverTumorRefineLib.training.segtrain import SegTrainConfig, evaluate_segmentation, train_segnet
from LiverTumorRefineLib.volume.geometry import Volume
from LiverTumorRefineLib.refine.weights import SHIPPED_SHA256, default_weights_path, sha256_of


def small_phantoms(seeds):
    return [make_phantom(s, size_xy=96, n_slices=20) for s in seeds]


def test_context_channels_interpolate_between_slices():
    plane = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 4, 4).contiguous()  # value = slice index
    x = context_stack(plane, [0, 2, 5], slice_mm=2.0, context_mm=(-3.0, 0.0, 1.0))
    assert x.shape == (3, 3, 4, 4)
    assert torch.allclose(x[:, :, 0, 0], torch.tensor([[0.0, 0.0, 0.5], [0.5, 2.0, 2.5], [3.5, 5.0, 5.0]]))


def test_clean_up_keeps_the_largest_liver_and_its_tumours():
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[2:8, 5:30, 5:30] = 1  # liver
    labels[4:6, 10:16, 10:16] = 2  # tumour in it (72 voxels)
    labels[4, 20, 20] = 2  # one-voxel speck in it: noise
    labels[2:4, 35:39, 35:39] = 1  # a second, smaller "liver"
    labels[3, 36:38, 36:38] = 2
    out = clean_labels(labels, (1.0, 1.0, 1.0), min_tumour_ml=0.01)
    assert (out[2:4, 35:39, 35:39] == 0).all()
    assert (out[4:6, 10:16, 10:16] == 2).all() and out[4, 20, 20] == 1
    assert set(np.unique(out)) == {0, 1, 2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = SegTrainConfig(steps=4, batch_size=2, crop_px=64, slices_per_case=4, warmup_steps=2)
    folder = tmp_path_factory.mktemp("segrun")
    path = train_segnet(cfg, small_phantoms([1000, 1001]), small_phantoms([50000]), folder, device="cpu",
                        log=lambda _: None)
    return cfg, path


@pytest.mark.slow
def test_training_is_deterministic_and_writes_a_checked_model(tiny_run, tmp_path):
    cfg, path = tiny_run
    again = train_segnet(cfg, small_phantoms([1000, 1001]), [], tmp_path, device="cpu", log=lambda _: None)
    first, second = load_segnet(path).state_dict(), load_segnet(again).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert path.with_name("segnet.pt.sha256").read_text().split()[0] == sha256_of(path)
    meta = load_segnet(path).meta
    assert meta["train_cases"] == ["phantom_1000", "phantom_1001"] and meta["validation"][0]["case"] == "phantom_50000"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RefineError, match="SHA-256"):
        load_segnet(path)


def test_segment_cli_writes_labels_on_the_ct_grid(tmp_path):
    cfg = SegTrainConfig(steps=2, batch_size=2, crop_px=64, slices_per_case=2, warmup_steps=1)
    weights = train_segnet(cfg, small_phantoms([1002]), [], tmp_path / "run", device="cpu", log=lambda _: None)
    ct, _ = write_case(small_phantoms([1003])[0], tmp_path)
    out = tmp_path / "coarse.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "LiverTumorRefineLib.cli", "segment", "--image", str(ct), "--out",
                           str(out), "--weights", str(weights), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    labels, image = io.read_volume(out), io.read_volume(ct)
    assert labels.array.shape == image.array.shape and labels.geometry.same_grid(image.geometry)
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert "liver" in proc.stdout


@pytest.mark.slow
def test_shipped_coarse_network_finds_the_liver():
    path = default_weights_path("segnet_default.pt")
    assert SHIPPED_SHA256["segnet_default.pt"] == sha256_of(path)
    case = make_phantom(50010)  # validation range: neither training nor evaluation
    labels = Segmenter(device="cpu").segment(case.image.array, case.image.spacing_zyx)
    scores = evaluate_segmentation(labels, case.label.array, case.image.spacing_zyx)
    assert scores["liver_dice"] > 0.85


def test_totalsegmentator_absent_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(totalseg, "find_executable", lambda: None)
    volume = Volume(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(RefineError, match="pip install TotalSegmentator.*--seeds.*--auto-coarse"):
        totalseg.tumour_mask(tmp_path / "ct.nii.gz", volume)


def _stand_in_tool(folder, body: str):
    """An executable named TotalSegmentator on PATH that stands in for the real tool's file I/O."""
    tool = folder / "TotalSegmentator"
    tool.write_text(f"#!{sys.executable}\n{body}")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return tool


def test_totalsegmentator_output_becomes_the_coarse_mask(tmp_path, monkeypatch):
    case = small_phantoms([1004])[0]
    ct, _ = write_case(case, tmp_path)
    # writes liver_tumor.nii.gz = the phantom's tumour, as TotalSegmentator's liver_vessels task would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in_tool(bin_dir, (
        "import sys, SimpleITK as sitk\n"
        "args = sys.argv[1:]\n"
        "assert args[args.index('--task') + 1] == 'liver_vessels' and args[args.index('--device') + 1] == 'cpu'\n"
        f"lab = sitk.ReadImage({str(tmp_path / (case.name + '_label.nii.gz'))!r})\n"
        "sitk.WriteImage(sitk.Cast(lab == 2, sitk.sitkUInt8), args[args.index('-o') + 1] + '/liver_tumor.nii.gz')\n"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    image = api.load_ct(ct)
    coarse = api.coarse_for(ct, image, "totalsegmentator", device="cpu")
    assert np.array_equal(coarse.array > 0, case.label.array == 2)
    _stand_in_tool(bin_dir, "import sys\nprint('model download failed', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(RefineError, match="TotalSegmentator failed .exit 3.: model download failed"):
        api.coarse_for(ct, image, "totalsegmentator", device="cpu")
