"""Robustness of the file pipeline (issue 7): CT not in HU, 4D and vector images, grids and
orientations that differ, single-slice and edge-touching lesions, whole-volume masks and outputs
that must be refused before any work."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import blob_case
from LiverTumorRefineLib import api
from LiverTumorRefineLib.coarse import autoseg
from LiverTumorRefineLib.volume import checks
from LiverTumorRefineLib import cli
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.evaluate import overlay
from LiverTumorRefineLib.coarse import points
from LiverTumorRefineLib.refine import weights
from LiverTumorRefineLib.config import NetConfig, PatchConfig
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.evaluate.metrics import overlap_metrics
from LiverTumorRefineLib.refine.network import build_model
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.volume.geometry import Geometry, Volume
from LiverTumorRefineLib.refine.weights import save_model

AXIAL = Geometry(spacing=(0.8, 0.8, 2.5), origin=(-40.0, 20.0, 300.0))
ROTATED = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, trained_model):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(trained_model, path)
    return path


def write_case(folder, case, geometry=AXIAL, name="case"):
    """CT (float32 HU) and binary coarse mask (uint8) files of a blob case."""
    ct, mask = folder / f"{name}_ct.nii.gz", folder / f"{name}_mask.nii.gz"
    io.write_volume(Volume(case.image, geometry), ct)
    io.write_volume(Volume(case.coarse.astype(np.uint8), geometry), mask)
    return ct, mask


def write_sagittal(folder, ct, mask):
    """The same scan stored sagittally: array axis 0 runs left-right, and one axis flipped."""
    ct_sag, mask_sag = folder / "sag_ct.nii.gz", folder / "sag_mask.nii.gz"
    for source, target in ((ct, ct_sag), (mask, mask_sag)):
        sitk.WriteImage(sitk.Flip(sitk.PermuteAxes(sitk.ReadImage(str(source)), [1, 2, 0]), [False, True, False]), str(target))
    return ct_sag, mask_sag


def abdomen(shape=(12, 128, 128), seed=0) -> np.ndarray:
    """A crude axial CT in HU: air around a body of fat, muscle and liver, a spine, noise."""
    rng = np.random.default_rng(seed)
    _, y, x = np.indices(shape)
    r = np.sqrt(((y - 64) / 50.0) ** 2 + ((x - 64) / 60.0) ** 2)
    image = np.full(shape, -1000.0)
    image[r < 1.0] = -100.0
    image[r < 0.9] = 40.0
    image[(r < 0.8) & (x < 64)] = 60.0
    image[(np.abs(y - 95) < 6) & (np.abs(x - 64) < 6)] = 700.0
    return (image + rng.normal(0, 10, shape)).astype(np.int16)


# 1. CT not in Hounsfield units -------------------------------------------------------------------

@pytest.mark.parametrize("make, phrase", [
    (lambda ct: np.clip((ct.astype(float) + 160) * 255 / 400, 0, 255).astype(np.uint8), "8-bit"),
    (lambda ct: np.clip((ct.astype(float) + 160) * 255 / 400, 0, 255).astype(np.int16), "8-bit"),
    (lambda ct: np.clip(ct + 1024, 0, None).astype(np.uint16), "rescale intercept"),  # raw stored values
    (lambda ct: np.abs(np.interp(ct, [-1000, -100, 40, 60, 700], [0, 800, 200, 400, 100])  # MR-like
                       + np.random.default_rng(1).normal(0, 5, ct.shape)), "no voxel is below 0"),
    (lambda ct: (ct.astype(np.int32) + 32768).astype(np.uint16), "most voxels are above 500"),
    (lambda ct: ((ct + 1000) / 3000).astype(np.float32), "normalised"),
    (lambda ct: ((ct - ct.mean()) / ct.std()).astype(np.float32), "normalised"),
    (lambda ct: np.zeros_like(ct), "constant"),
])
def test_intensities_that_are_not_hu_are_flagged(make, phrase):
    message = checks.hu_plausibility(make(abdomen()))
    assert message is not None and phrase in message and "Hounsfield" in message


def test_ct_in_hu_and_a_tight_liver_crop_are_not_flagged():
    ct = abdomen()
    assert checks.hu_plausibility(ct) is None
    assert checks.hu_plausibility(ct.astype(np.float32)) is None
    assert checks.hu_plausibility(blob_case(0).image) is None  # no air at all, yet HU
    with_nan = ct.astype(np.float32)
    with_nan[0] = np.nan
    assert checks.hu_plausibility(with_nan) is None


def test_hu_check_looks_at_a_subsample_of_huge_volumes():
    huge = np.broadcast_to(np.int16(40), (1000, 1024, 1024))  # 2 GB if it were real
    assert checks.subsample(huge).size <= 1_100_000
    assert "constant" in checks.hu_plausibility(huge)


def test_load_pair_warns_once_about_a_ct_that_is_not_in_hu(tmp_path):
    case = blob_case(1)
    ct, mask = write_case(tmp_path, case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.load_pair(ct, mask)  # HU: no warning
    eight_bit = tmp_path / "ct8.nii.gz"
    io.write_volume(Volume(np.clip(case.image, 0, 255).astype(np.uint8), AXIAL), eight_bit)
    with pytest.warns(UserWarning) as record:
        api.load_pair(eight_bit, mask)
    record = [w for w in record if issubclass(w.category, UserWarning)]
    assert len(record) == 1 and str(eight_bit) in str(record[0].message) and "8-bit" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.load_pair(eight_bit, mask, image_is_ct=False)  # truth/prediction pairs are not CT


def test_cli_shows_the_hu_warning_as_one_line(tmp_path, model_file):
    case = blob_case(2)
    ct, mask = write_case(tmp_path, case)
    io.write_volume(Volume(np.clip(case.image, 0, 255).astype(np.uint8), AXIAL), ct, force=True)
    proc = subprocess.run([sys.executable, "-m", "LiverTumorRefineLib.cli", "refine", "--image", str(ct), "--mask", str(mask),
                           "--out", str(tmp_path / "out.nii.gz"), "--weights", str(model_file), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Hounsfield" in line]
    assert len(lines) == 1 and lines[0].startswith("livertumorrefine: warning:") and "8-bit" in lines[0], proc.stderr
    assert "warnings.warn" not in proc.stderr and "UserWarning" not in proc.stderr


# 2. 4D and vector images ---------------------------------------------------------------------------

def test_4d_and_vector_images_are_refused_with_what_to_do(tmp_path):
    ct, mask = write_case(tmp_path, blob_case(1))
    volume = sitk.ReadImage(str(ct))
    series = tmp_path / "series.nrrd"
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(series))
    with pytest.raises(RefineError, match=r"series\.nrrd is 4D \(96 x 96 x 24 x 2 voxels\).*extract one time point"):
        api.load_pair(series, mask)
    rgb = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Compose([sitk.ReadImage(str(mask))] * 3), str(rgb))
    with pytest.raises(RefineError, match=r"rgb\.mha has 3 components per voxel.*scalar"):
        api.load_pair(ct, rgb)
    single = tmp_path / "single.nrrd"  # a 4D file holding one volume is that volume
    sitk.WriteImage(sitk.JoinSeries([volume]), str(single))
    assert sitk.ReadImage(str(single)).GetDimension() == 4
    image, _ = api.load_pair(single, mask)
    assert np.array_equal(image.array, io.read_volume(ct).array) and image.geometry.same_grid(AXIAL, tol=1e-5)


# 3. Grids that differ -----------------------------------------------------------------------------

def rotated_grid_around(reference: sitk.Image, direction, spacing, size) -> sitk.Image:
    """An empty grid of ``size`` with ``direction`` and ``spacing`` centred on ``reference``'s centre."""
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()]))
    half = np.array(direction).reshape(3, 3) @ ((np.array(size) - 1) * np.array(spacing) / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction)
    grid.SetOrigin(tuple(centre - half))
    return grid


def test_mask_on_a_rotated_finer_grid_is_resampled_onto_the_ct(tmp_path):
    case = blob_case(3)
    ct, mask = write_case(tmp_path, case)
    grid = rotated_grid_around(sitk.ReadImage(str(ct)), ROTATED, (0.5, 0.6, 1.5), (150, 140, 50))
    moved = sitk.Resample(sitk.ReadImage(str(mask)), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert moved.GetSize() != sitk.ReadImage(str(mask)).GetSize() and np.any(sitk.GetArrayViewFromImage(moved))
    sitk.WriteImage(moved, str(tmp_path / "rotated.nrrd"))
    image, back = api.load_pair(ct, tmp_path / "rotated.nrrd")
    assert back.geometry == image.geometry and back.array.shape == case.coarse.shape
    assert set(np.unique(back.array)) == {0, 1}
    dice = 2 * (back.array.astype(bool) & case.coarse).sum() / (back.array.astype(bool).sum() + case.coarse.sum())
    assert dice > 0.9


def test_mask_flipped_away_from_the_ct_is_refused(tmp_path):
    ct, mask = write_case(tmp_path, blob_case(3))
    away = sitk.ReadImage(str(mask))
    away.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # grows towards -x, -y from 10 mm before the CT
    away.SetOrigin(tuple(np.array(AXIAL.origin) - (10.0, 10.0, 0.0)))
    sitk.WriteImage(away, str(tmp_path / "away.nii.gz"))
    with pytest.raises(RefineError, match="does not overlap the CT"):
        api.load_pair(ct, tmp_path / "away.nii.gz")


# 4. Orientation -----------------------------------------------------------------------------------

def test_non_axial_files_are_refined_in_axial_planes_and_written_on_their_own_grid(tmp_path, model_file):
    case = blob_case(4)
    ct, mask = write_case(tmp_path, case)
    ct_sag, mask_sag = write_sagittal(tmp_path, ct, mask)
    stored = sitk.ReadImage(str(ct_sag))
    assert io.orientation(stored.GetDirection()) not in ("LPS",) and sitk.GetArrayViewFromImage(stored).shape == (96, 24, 96)

    # min_kept=0: this test is about geometry, so the small test model's edits must not be undone by the guard
    api.refine_files(ct, mask, tmp_path / "out_axial.nii.gz", weights=str(model_file), device="cpu", min_kept=0.0)
    api.refine_files(ct_sag, mask_sag, tmp_path / "out_sag.nii.gz", weights=str(model_file), device="cpu", min_kept=0.0)
    axial = io.read_volume(tmp_path / "out_axial.nii.gz").array
    out = sitk.ReadImage(str(tmp_path / "out_sag.nii.gz"))
    assert out.GetSize() == stored.GetSize()
    assert np.allclose(out.GetSpacing(), stored.GetSpacing(), atol=1e-5)
    assert np.allclose(out.GetOrigin(), stored.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetDirection(), stored.GetDirection(), atol=1e-6)
    assert (axial != case.coarse).any()  # the refinement did something, so agreement means something
    assert np.array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(out, "LPS")), axial)


@pytest.mark.parametrize("store", [
    lambda image: sitk.PermuteAxes(image, [2, 0, 1]),
    lambda image: sitk.JoinSeries([sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])]),  # 4D, one volume
    lambda image: sitk.Flip(image[:, :, 1], [True, False]),  # 2D
])
def test_back_on_grid_inverts_to_lps(tmp_path, store):
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(store(io.to_sitk(Volume(array, AXIAL))), str(path))
    lps = io.from_sitk(io.to_lps(io.read_image(path)))
    assert io.orientation(lps.geometry.direction) == "LPS"
    back = io.back_on_grid(lps.with_array(lps.array * 2), path)
    original = io.read_volume(path)
    assert np.array_equal(back.array, original.array * 2) and back.geometry == original.geometry


# 5. Single slice and lesions touching the volume's faces ------------------------------------------

def test_single_slice_volume_is_refined_on_its_grid(tmp_path, model_file):
    case = blob_case(5)
    z = int(case.coarse.sum(axis=(1, 2)).argmax())
    case.image, case.coarse = case.image[z:z + 1], case.coarse[z:z + 1]
    ct, mask = write_case(tmp_path, case)
    stats = api.refine_files(ct, mask, tmp_path / "out.nii.gz", weights=str(model_file), device="cpu")
    out = io.read_volume(tmp_path / "out.nii.gz")
    assert stats["patches"] > 0 and out.array.shape == (1, 96, 96) and out.geometry.same_grid(AXIAL, tol=1e-5)
    assert set(np.unique(out.array)) == {0, 1}


def test_lesion_touching_first_last_slice_and_the_edges(tmp_path, model_file):
    case = blob_case(6)
    zs = np.flatnonzero(case.coarse.any(axis=(1, 2)))
    cy, cx = (int(np.mean(np.flatnonzero(case.coarse.any(axis=a)))) for a in ((0, 2), (0, 1)))
    crop = (slice(zs[1], zs[-2]), slice(cy, None), slice(None, cx))
    truth = case.truth[crop]
    case.image, case.coarse = np.ascontiguousarray(case.image[crop]), np.ascontiguousarray(case.coarse[crop])
    m = case.coarse
    assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, :, -1].any()
    ct, mask = write_case(tmp_path, case)
    stats = api.refine_files(ct, mask, tmp_path / "out.nii.gz", weights=str(model_file), device="cpu")
    out = io.read_volume(tmp_path / "out.nii.gz")
    assert stats["patches"] > 0 and out.array.shape == m.shape and out.geometry.same_grid(AXIAL, tol=1e-5)
    # the edge slices are refined like the others: the result moves towards the truth there too
    refined = out.array.astype(bool)
    assert overlap_metrics(truth, refined)["dice"] > overlap_metrics(truth, m)["dice"]
    assert refined[-1].any() and (refined[0] != m[0]).any()


# 6. A mask that is the whole volume -----------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 2, 255])
def test_mask_covering_the_whole_ct_is_refused(tmp_path, value):
    ct, _ = write_case(tmp_path, blob_case(1))
    full = tmp_path / "full.nii.gz"
    io.write_volume(Volume(np.full((24, 96, 96), value, np.uint8), AXIAL), full)
    with pytest.raises(RefineError, match=rf"every voxel of the CT as tumour \(value {value} everywhere\)") as error:
        api.refine_files(ct, full, tmp_path / "out.nii.gz", weights=str(tmp_path / "unused.pt"))
    assert "--label" in error.value.for_cli() and "--" not in str(error.value)  # flags only on the command line
    assert not (tmp_path / "out.nii.gz").exists()
    almost = np.ones((20, 256, 256), bool)
    almost[5, 51, 51] = False  # off the subsample's stride of 2: the full check must see it
    checks.check_not_whole_volume(almost)
    with pytest.raises(RefineError, match="every voxel"):
        checks.check_not_whole_volume(np.ones((4, 4, 4), bool))


# 7. Outputs refused before any work ----------------------------------------------------------------

def test_unwritable_output_folder_is_refused_before_reading_anything(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root (as CI runs) may write anywhere: the OS answers as for a user
            real = os.access
            monkeypatch.setattr(io.os, "access", lambda path, mode: (mode != os.W_OK or Path(path) != folder)
                                and real(path, mode))
        with pytest.raises(RefineError, match="is not writable"):
            api.refine_files(tmp_path / "no_ct.nii.gz", tmp_path / "no_mask.nii.gz", folder / "out.nii.gz")
    finally:
        folder.chmod(0o755)


def test_output_that_is_an_input_is_refused_even_with_force(tmp_path):
    ct, mask = write_case(tmp_path, blob_case(1))
    before = mask.read_bytes()
    os.link(mask, tmp_path / "hard.nii.gz")
    os.symlink(ct, tmp_path / "soft.nii.gz")
    for out in (mask, tmp_path / "hard.nii.gz", tmp_path / "soft.nii.gz"):
        with pytest.raises(RefineError, match="is one of the inputs"):
            api.refine_files(ct, mask, out, weights=str(tmp_path / "unused.pt"), force=True)
    assert mask.read_bytes() == before


def test_existing_output_or_folder_is_refused_before_reading_anything(tmp_path):
    (tmp_path / "out.nii.gz").write_bytes(b"keep")
    with pytest.raises(RefineError, match="already exists.*force=True"):
        api.refine_files(tmp_path / "no_ct.nii.gz", tmp_path / "no_mask.nii.gz", tmp_path / "out.nii.gz")
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(RefineError, match="is a folder"):
        api.refine_files(tmp_path / "no_ct.nii.gz", tmp_path / "no_mask.nii.gz", tmp_path / "dir.nii.gz", force=True)
    assert (tmp_path / "out.nii.gz").read_bytes() == b"keep"


def test_overlay_of_a_sagittal_file_shows_the_same_axial_slice(tmp_path):
    case = blob_case(4)
    ct, mask = write_case(tmp_path, case)
    ct_sag, mask_sag = write_sagittal(tmp_path, ct, mask)
    pictures = []
    for image, coarse, name in ((ct, mask, "axial.png"), (ct_sag, mask_sag, "sagittal.png")):
        assert cli.main(["overlay", "--image", str(image), "--coarse", str(coarse), "--out", str(tmp_path / name)]) == 0
        pictures.append(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))))
    yellow = np.all(pictures[0] == (255, 255, 0), axis=-1)
    assert yellow.any() and np.array_equal(pictures[0], pictures[1])


# 8. Round 2 (issue 15): every bad input and fault refused with a one-line RefineError ------------
#
# Each row: a kind of trial, how to set it up and run it (API or CLI), and the start of the message
# the user must get. ``run`` gets the test's folder and a ``Files`` of small inputs written there.

class Files:
    """A small blob case on disk: CT, binary coarse mask, LiTS 0/1/2 truth, a liver-only truth and a
    model file (untrained, width 4: loading and writing are real, refining is cheap)."""

    def __init__(self, folder):
        case = blob_case(1)
        self.folder = folder
        self.ct, self.mask = write_case(folder, case)
        lits = np.where(case.truth, 2, 1).astype(np.uint8)
        lits[:, :8] = 0
        self.truth, self.liver_only = folder / "truth.nii.gz", folder / "liver.nii.gz"
        io.write_volume(Volume(lits, AXIAL), self.truth)
        io.write_volume(Volume((lits > 0).astype(np.uint8), AXIAL), self.liver_only)
        self.model = folder / "small.pt"
        save_model(build_model(PatchConfig(), NetConfig(base_channels=4)), self.model)
        self.shape = case.image.shape

    def cli(self, capsys, *argv: str) -> str:
        """Run the CLI; it must exit 2 with one error line on stderr (after any progress lines) and no
        traceback. Returns the error line."""
        capsys.readouterr()
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("livertumorrefine:")]
        assert code == 2 and len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
        return errors[0]

    def refine(self, capsys, *argv: str) -> str:
        return self.cli(capsys, "refine", "--image", self.ct, "--out", self.folder / "out.nii.gz",
                        "--weights", self.model, "--device", "cpu", *argv)


def truncated(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def with_bad_crc(path):
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the gzip trailer's CRC-32
    path.write_bytes(bytes(data))
    return path


def payload_file(files, change):
    """A copy of the model file with ``change(payload)`` applied and a matching sidecar."""
    payload = torch.load(files.model, weights_only=True)
    change(payload)
    path = files.folder / "bad.pt"
    torch.save(payload, path)
    (files.folder / "bad.pt.sha256").write_text(f"{weights.sha256_of(path)}  bad.pt\n")
    return path


def nested(section, key, value):
    def change(payload):
        payload[section][key] = value
    return change


def flipped_mask(files):
    mask = sitk.ReadImage(str(files.mask))
    mask.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # mirrored about the CT's corner: the boxes touch, voxels miss
    mask.SetOrigin(tuple(np.array(AXIAL.origin) + (10.0, 10.0, 0.0)))
    path = files.folder / "flipped.nii.gz"
    sitk.WriteImage(mask, str(path))
    return path


def markups(files, position):
    path = files.folder / "seeds.mrk.json"
    path.write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"label": "F-1", "position": [0.0, 0.0, 0.0]}, {"label": "F-2", "position": position}]}]}))
    return path


def all_nan_ct(files, name):
    path = files.folder / name
    io.write_volume(Volume(np.full(files.shape, np.nan, np.float32), AXIAL), path)
    return path


TWENTY_FIVE_SEEDS = ";".join(f"{-40 - i * 0.5:.1f},{-20 - i:.1f},{300 + i:.1f}" for i in range(25))

TRIALS = [
    # 1. overlay never writes over an input, nor PNG bytes under another extension
    ("overlay out is the CT", lambda f, c: f.cli(c, "overlay", "--image", f.ct, "--out", f.ct, "--force"),
     r"unsupported file type for this output; give a name ending in \.png"),
    ("overlay out is the truth", lambda f, c: f.cli(c, "overlay", "--image", f.ct, "--truth", f.truth, "--out", f.truth,
                                                    "--force"), r"\.png"),
    ("overlay out is not .png", lambda f, c: f.cli(c, "overlay", "--image", f.ct, "--out", f.folder / "ov.nii.gz"),
     r"\.png"),
    ("overlay --force on an unrelated NIfTI", lambda f, c: f.cli(c, "overlay", "--image", f.ct, "--out", f.mask,
                                                                 "--force"), r"\.png"),
    ("write_png under another name", lambda f, c: overlay.write_png(np.zeros((4, 4, 3), np.uint8), f.folder / "o.nii.gz"),
     r"must end in \.png"),
    # 4. damaged inputs
    ("truncated .nii.gz CT", lambda f, c: api.load_ct(truncated(f.ct)), r"ct\.nii\.gz is damaged: .*cut short"),
    ("gzip CRC error", lambda f, c: api.load_ct(with_bad_crc(f.ct)), r"is damaged: .*CRC"),
    ("truncated mask", lambda f, c: api.load_pair(f.ct, truncated(f.mask, 0.8)), r"case_mask\.nii\.gz is damaged"),
    ("truncated uncompressed .nii", lambda f, c: api.load_ct(_short_nii(f)), r"raw\.nii is truncated"),
    # 5. evaluate against a reference without tumour
    ("evaluate: empty truth", lambda f, c: f.cli(c, "evaluate", "--truth", _empty(f), "--pred", f.truth),
     r"has no tumour voxels: .*no tumour in the reference"),
    ("evaluate: liver-only truth", lambda f, c: f.cli(c, "evaluate", "--truth", f.liver_only, "--pred", f.truth),
     r"looks like a liver with no tumour.*--label 1"),
    # 6. background as the tumour label
    ("--label 0", lambda f, c: f.refine(c, "--mask", f.truth, "--label", "0"), r"--label 0: label 0 is the background"),
    ("API label=0", lambda f, c: api.select_label(np.array([0, 1, 2]), 0), r"label 0 is the background"),
    # 7. and 8. seeds decided by syntax
    ("--seeds ''", lambda f, c: f.refine(c, "--seeds", ""), r"No seeds given"),
    ("25 inline seeds", lambda f, c: f.refine(c, "--seeds", TWENTY_FIVE_SEEDS), r"Seed 1 at RAS .* lies outside the CT"),
    ("seed file missing", lambda f, c: f.refine(c, "--seeds", f.folder / "none.mrk.json"), r"Seed file .*: file not found"),
    # 9. markups with a position that is not numbers
    ("non-numeric markups position", lambda f, c: f.refine(c, "--seeds", markups(f, ["a", None, 3])),
     r"point F-2 has position \['a', None, 3\], which is not three numbers"),
    # 10. malformed model files with a valid sidecar
    ("weights: format tag only", lambda f, c: f.refine(c, "--mask", f.mask, "--weights",
                                                       payload_file(f, lambda p: [p.pop(k) for k in list(p) if k != "format"])),
     r"are malformed: they hold no network weights"),
    ("weights: empty sidecar", lambda f, c: (f.folder.joinpath("small.pt.sha256").write_text(""),
                                             weights.load_model(f.model)), r"small\.pt\.sha256 is empty or malformed"),
    ("weights: patch_px 0", lambda f, c: weights.load_model(payload_file(f, nested("patch_config", "patch_px", 0))),
     r"patch_config\.patch_px = 0, expected a whole number from 16 to 256"),
    ("weights: base_channels 4096", lambda f, c: f.refine(c, "--mask", f.mask, "--weights",
                                                          payload_file(f, nested("net_config", "base_channels", 4096))),
     r"net_config\.base_channels = 4096"),
    ("weights: depth without path blocks", lambda f, c: weights.load_model(payload_file(f, nested("net_config", "depth", 4))),
     r"3 path_blocks for depth 4"),
    ("weights: patch_px not divisible", lambda f, c: weights.load_model(payload_file(f, nested("patch_config", "patch_px", 60))),
     r"patch_px 60 is not divisible by 2\*\*depth = 8"),
    ("weights: hu_window reversed", lambda f, c: weights.load_model(payload_file(f, nested("patch_config", "hu_window",
                                                                                           [250.0, -150.0]))),
     r"hu_window = .*low < high"),
    ("weights: context_mm far", lambda f, c: weights.load_model(payload_file(f, nested("patch_config", "context_mm",
                                                                                        [0.0, 90.0]))), r"within \+-20 mm"),
    ("segnet: net_config missing", lambda f, c: autoseg.load_segnet(_segnet_without(f, "net_config")),
     r"'net_config' is missing"),
    # 11. the CT given as the mask
    ("--mask is the CT", lambda f, c: f.refine(c, "--mask", _integer_ct(f)), r"this looks like an image .*not a label map"),
    # 12. API input errors are RefineError, without CLI flags
    ("API seeds=[(1, 2)]", lambda f, c: api.refine_without_mask(f.ct, f.folder / "o.nii.gz", seeds=[(1, 2)],
                                                                weights=str(f.model)), r"Seed 1 \(\(1, 2\)\) is not a point"),
    ("API malformed seed string", lambda f, c: api.refine_without_mask(f.ct, f.folder / "o.nii.gz", seeds="1,2",
                                                                       weights=str(f.model)), r"Seed 1 \('1,2'\)"),
    ("Refiner(batch_size=2.5)", lambda f, c: Refiner(str(f.model), device="cpu", batch_size=2.5),
     r"^The batch size must be a whole number of at least 1 \(got 2\.5\)"),
    ("API existing output", lambda f, c: api.refine_files(f.ct, f.mask, f.truth, weights=str(f.model)),
     r"already exists: choose another output, or pass force=True"),
    # 13. messages that named the wrong problem
    ("mask flipped off the CT", lambda f, c: api.load_pair(f.ct, flipped_mask(f)), r"labelled voxels all lie outside the CT"),
    ("a folder given as the model", lambda f, c: Refiner(str(_folder(f, "dir.pt"))), r"dir\.pt is a folder, not a file"),
    ("all-NaN NIfTI CT", lambda f, c: api.load_ct(all_nan_ct(f, "nan.nii.gz")), r"every voxel is NaN"),
    ("all-NaN NRRD CT", lambda f, c: _warning_of(api.load_ct, all_nan_ct(f, "nan.nrrd")), r"no finite intensities"),
    ("weights not found (API)", lambda f, c: Refiner(str(f.folder / "none.pt")), r"Check the path, or use the shipped model"),
    ("weights not found (CLI)", lambda f, c: f.refine(c, "--mask", f.mask, "--weights", f.folder / "none.pt"),
     r"leave out --weights to use the shipped model"),
    # 14. DICOM files that are not what the option wants
    ("an RT structure set as the CT", lambda f, c: f.cli(c, "refine", "--image", _rtstruct(f), "--mask", f.mask,
                                                         "--out", f.folder / "out.nii.gz", "--weights", f.model),
     r"contours\.dcm is an RT structure set, not a CT image: give it as the mask"),
    ("RT structure set contours between the CT's slices", lambda f, c: f.refine(c, "--mask", _rtstruct(f, 1.25)),
     r"contours\.dcm: its contours do not lie on the CT's slices .*Give the CT series the structure set was drawn on"),
    ("two RT structure sets evaluated without a CT",
     lambda f, c: f.cli(c, "evaluate", "--truth", _rtstruct(f, 0.0), "--pred", _rtstruct(f, 2.5, "other.dcm")),
     r"are both RT structure sets: contours have no voxel grid of their own, so give the CT .* with --image"),
    ("an RT structure set without contours as the mask", lambda f, c: f.refine(c, "--mask", _rtstruct(f)),
     r"contours.dcm: this RT structure set has no contoured structure \(ROI\), so there is no mask in it"),
]


def _rtstruct(files, z_mm=None, name="contours.dcm"):
    """A minimal RT structure set: no structure at all, or (``z_mm`` from the CT's first slice) one
    10 mm square contour in the middle of the CT."""
    from pydicom.uid import generate_uid
    from test_rtstruct import write_rtstruct

    structures = {}
    if z_mm is not None:
        x, y = (AXIAL.origin[i] + AXIAL.spacing[i] * files.shape[2 - i] / 2 for i in (0, 1))
        structures["GTV"] = [np.array([[x + dx, y + dy, AXIAL.origin[2] + z_mm]
                                       for dx, dy in ((-5, -5), (5, -5), (5, 5), (-5, 5))])]
    return write_rtstruct(files.folder / name, generate_uid(), structures)


def _empty(files):
    path = files.folder / "empty.nii.gz"
    io.write_volume(Volume(np.zeros(files.shape, np.uint8), AXIAL), path)
    return path


def _short_nii(files):
    path = files.folder / "raw.nii"
    io.write_volume(io.read_volume(files.ct), path)
    return truncated(path, 0.7)


def _integer_ct(files):
    path = files.folder / "ct_int.nii.gz"
    io.write_volume(Volume(np.round(io.read_volume(files.ct).array * 10).astype(np.int16), AXIAL), path)
    return path


def _folder(files, name):
    (files.folder / name).mkdir()
    return files.folder / name


def _segnet_without(files, key):
    model = autoseg.build_segnet(net=NetConfig(base_channels=4, depth=2, path_blocks=(1, 1), mask_prior=False))
    path = files.folder / "seg.pt"
    autoseg.save_segnet(model, path)
    payload = torch.load(path, weights_only=True)
    del payload[key]
    torch.save(payload, path)
    (files.folder / "seg.pt.sha256").write_text(weights.sha256_of(path))
    return path


def _warning_of(function, *args):
    """Turn the warning ``function`` gives into an error, so the table can match its text."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            function(*args)
        except UserWarning as warning:
            raise RefineError(str(warning)) from None


@pytest.mark.parametrize("kind, run, message", TRIALS, ids=[t[0] for t in TRIALS])
def test_bad_input_or_fault_is_a_clear_refine_error(tmp_path, capsys, kind, run, message):
    files = Files(tmp_path)
    before = {p.name: p.read_bytes() for p in (files.ct, files.mask, files.truth)}
    try:
        line = run(files, capsys)
    except RefineError as exc:
        line = exc.for_cli() if "--" in message else str(exc)
        assert "--" in message or "--" not in str(exc), f"API message names a CLI flag: {exc}"
    assert re.search(message, line or ""), line
    damaged = kind.startswith(("truncated", "gzip"))
    for name, data in before.items():  # inputs are never modified (bar the ones the trial damaged itself)
        assert damaged or (tmp_path / name).read_bytes() == data, name
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "o.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


# 8b. Round 2 faults that need more than one call: full disk, two-file formats, file modes ----------

def small_volume(seed=0) -> Volume:
    """Noise that gzip cannot shrink: 1.5 MB as float32, more than a 1 MiB disk holds."""
    return Volume(np.random.default_rng(seed).normal(0, 100, (24, 128, 128)).astype(np.float32), AXIAL)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs when this process may mount one (root on Linux); else None."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # lazy: a failed writer may still hold a file open


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd"])
def test_a_full_disk_is_a_clear_error_and_leaves_nothing(full_disk, suffix):
    if full_disk is None:
        pytest.skip("cannot mount a small tmpfs here (not root?): the simulated test below covers this")
    out = full_disk / f"o{suffix}"
    with pytest.raises(RefineError, match=r"Writing .* failed .*is the disk full\?"):
        io.write_volume(small_volume(), out)
    assert list(full_disk.iterdir()) == []  # no output, no temporary file, no orphaned data file


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr"])
def test_a_short_write_without_any_error_is_caught_by_the_read_back(tmp_path, monkeypatch, suffix):
    """ENOSPC simulated: the writer 'succeeds' but the file (or data file) is cut short, as NIfTI
    files are on a full disk."""
    real_write = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        written = sorted(p for p in Path(name).parent.iterdir() if p.name != Path(name).name and p.is_file()) \
            if suffix == ".nhdr" else [Path(name)]
        truncated(written[0], 0.5)

    monkeypatch.setattr(io.sitk, "WriteImage", short_write)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(RefineError, match=r"Writing .*o\..* failed"):
        io.write_volume(small_volume(), tmp_path / f"o{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_refine_on_a_full_disk_exits_2_without_output(tmp_path, monkeypatch, capsys):
    files = Files(tmp_path)
    real_write = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):  # what a full disk does to a NIfTI write: no error, half a file
        real_write(image, name, *args, **kwargs)
        truncated(Path(name), 0.5)

    monkeypatch.setattr(io.sitk, "WriteImage", short_write)
    err = files.refine(capsys, "--mask", files.mask)
    assert "out.nii.gz failed" in err and "is the disk full?" in err and "Refined" not in capsys.readouterr().out
    assert not (tmp_path / "out.nii.gz").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("suffix, data_name", [(".nhdr", "r.raw"), (".mhd", "r.raw")])
def test_two_file_formats_are_written_and_replaced_as_a_pair(tmp_path, suffix, data_name):
    out = tmp_path / f"r{suffix}"
    for seed in (0, 1, 2):  # the first write, then two --force reruns
        io.write_volume(small_volume(seed), out, force=seed > 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, data_name])  # no orphaned hidden data files
    header = out.read_text(errors="replace")
    assert re.search(rf"^(data file:|ElementDataFile =) {re.escape(data_name)}$", header, re.M), header
    assert np.array_equal(io.read_volume(out).array, small_volume(2).array)


def test_force_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    out = tmp_path / "o.nii.gz"
    io.write_volume(small_volume(0), out)
    out.chmod(0o444)
    io.write_volume(small_volume(1), out, force=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o444
    new = tmp_path / "new.nii.gz"
    io.write_volume(small_volume(0), new)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask


def test_an_unreadable_file_says_so_not_that_it_is_missing(tmp_path, monkeypatch):
    files = Files(tmp_path)
    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda path, mode: False if Path(path) == files.ct else real_access(path, mode))
    with pytest.raises(RefineError, match=r"case_ct\.nii\.gz exists but is not readable \(permissions\)"):
        api.load_ct(files.ct)
    with pytest.raises(RefineError, match=r"Seed file .* is a folder, not a file"):
        points.parse_seeds(str(tmp_path))


def test_seeds_are_told_apart_from_files_by_syntax():
    seeds = points.parse_seeds(TWENTY_FIVE_SEEDS)
    assert len(seeds) == 25 and seeds[0] == (-40.0, -20.0, 300.0)
    assert points.is_seed_file("x.mrk.json") and points.is_seed_file("seeds") and not points.is_seed_file("1,2,3")
    assert not points.is_seed_file("") and not points.is_seed_file("1,2,3;4,5,6" * 200)  # never stat()ed
    with pytest.raises(RefineError, match="No seeds given"):
        points.parse_seeds("")


def test_evaluate_scores_a_liver_only_truth_when_label_1_is_asked_for(tmp_path):
    files = Files(tmp_path)
    assert api.evaluate_files(files.liver_only, files.truth, label=1)["dice"] < 1.0
    metrics = api.evaluate_files(files.truth, files.truth)
    assert metrics["dice"] == 1.0 and metrics["hd95"] == 0.0


# 9. Round 2: a newcomer's rough edges (help, demo and coarse-stage progress) ----------------------

@pytest.mark.parametrize("command, option, default", [
    ("refine", "--batch-size", "128"), ("train", "--steps", "6000"), ("train", "--lr", "0.002"),
    ("train", "--seed", "0"), ("phantom", "--cases", "10"), ("train-coarse", "--batch-size", "8"),
    ("segment", "--device", "auto"),
])
def test_help_shows_defaults(capsys, command, option, default):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", text), text


@pytest.mark.parametrize("command, option", [("evaluate", "--truth"), ("evaluate", "--pred"), ("overlay", "--image")])
def test_every_option_has_help_text(capsys, command, option):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"{option} [A-Z]+ [a-zA-Z]", text), text


def test_demo_says_where_its_case_comes_from(monkeypatch, tmp_path):
    from LiverTumorRefineLib.training import datasets
    from LiverTumorRefineLib import demo

    lines: list[str] = []
    monkeypatch.setattr(demo, "lits117_source", lambda: ("the wheel downloaded from PyPI into X", True))
    monkeypatch.setattr(datasets, "load_lits117", lambda: "case")
    assert demo.get_demo_case(lines.append) == "case"
    assert lines == ["Downloading LiTS case 117: the wheel downloaded from PyPI into X ...",
                     "Case: LiTS 117 (a public liver CT with reference labels) from the wheel downloaded from PyPI into X."]

    def offline():
        raise RefineError("offline")

    lines.clear()
    monkeypatch.setattr(datasets, "load_lits117", offline)
    monkeypatch.setattr(demo, "make_phantom", lambda seed: f"phantom {seed}")
    assert demo.get_demo_case(lines.append) == "phantom 20260" and "using generated phantom 20260" in lines[-1]
    monkeypatch.undo()
    monkeypatch.setattr(datasets, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    assert demo.lits117_source()[1] is True
    (tmp_path / datasets.LITS117_WHEEL).write_bytes(b"")
    assert demo.lits117_source() == (f"the cached wheel {tmp_path / datasets.LITS117_WHEEL}", False)


def tiny_segnet(path):
    autoseg.save_segnet(autoseg.build_segnet(net=NetConfig(base_channels=4, depth=2, path_blocks=(1, 1),
                                                           mask_prior=False)), path)
    return path


def test_the_coarse_network_reports_progress_from_start_to_end_and_can_be_cancelled(tmp_path):
    segmenter = autoseg.Segmenter(str(tiny_segnet(tmp_path / "seg.pt")), device="cpu", slab=4)
    calls: list[tuple[float, str]] = []
    segmenter.segment(abdomen(shape=(32, 64, 64)).astype(np.float32), (2.5, 0.8, 0.8),
                      lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions) and len(calls) >= 5
    assert max(np.diff(fractions)) < 0.2  # no long silent stretch: one report per slab of 4 of 32 slices
    with pytest.raises(RefineCancelled):
        segmenter.segment(abdomen(shape=(12, 64, 64)).astype(np.float32), (2.5, 0.8, 0.8), lambda f, m: False)


def test_refine_auto_coarse_shows_the_coarse_stage(tmp_path, capsys):
    files = Files(tmp_path)
    capsys.readouterr()
    code = cli.main(["refine", "--image", str(files.ct), "--out", str(tmp_path / "out.nii.gz"), "--weights",
                     str(files.model), "--device", "cpu", "--auto-coarse", "--coarse-weights",
                     str(tiny_segnet(tmp_path / "seg.pt"))])
    lines = capsys.readouterr().err.splitlines()
    coarse = [line for line in lines if line.startswith("coarse ")]
    assert coarse[0].startswith("coarse   0.0% Preparing slices") and coarse[-1].startswith("coarse 100.0%")
    assert code == 2 and lines[-1].startswith("livertumorrefine: error:")  # an untrained network's labels are refused
