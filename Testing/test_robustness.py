"""Robustness of the file pipeline (issue 7): CT not in HU, 4D and vector images, grids and
orientations that differ, single-slice and edge-touching lesions, whole-volume masks and outputs
that must be refused before any work."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob_case
from LiverTumorRefineLib import api, checks, cli, io
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume import Geometry, Volume
from LiverTumorRefineLib.weights import save_model

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
    case.image, case.coarse = np.ascontiguousarray(case.image[crop]), np.ascontiguousarray(case.coarse[crop])
    m = case.coarse
    assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, :, -1].any()
    ct, mask = write_case(tmp_path, case)
    stats = api.refine_files(ct, mask, tmp_path / "out.nii.gz", weights=str(model_file), device="cpu")
    out = io.read_volume(tmp_path / "out.nii.gz")
    assert stats["patches"] > 0 and out.array.shape == m.shape and out.geometry.same_grid(AXIAL, tol=1e-5)
    assert out.array[0].any() and out.array[-1].any()


# 6. A mask that is the whole volume -----------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 2, 255])
def test_mask_covering_the_whole_ct_is_refused(tmp_path, value):
    ct, _ = write_case(tmp_path, blob_case(1))
    full = tmp_path / "full.nii.gz"
    io.write_volume(Volume(np.full((24, 96, 96), value, np.uint8), AXIAL), full)
    with pytest.raises(RefineError, match=rf"every voxel of the CT as tumour \(value {value} everywhere\).*--label"):
        api.refine_files(ct, full, tmp_path / "out.nii.gz", weights=str(tmp_path / "unused.pt"))
    assert not (tmp_path / "out.nii.gz").exists()
    almost = np.ones((20, 256, 256), bool)
    almost[5, 51, 51] = False  # off the subsample's stride of 2: the full check must see it
    checks.check_not_whole_volume(almost)
    with pytest.raises(RefineError, match="every voxel"):
        checks.check_not_whole_volume(np.ones((4, 4, 4), bool))


# 7. Outputs refused before any work ----------------------------------------------------------------

def test_unwritable_output_folder_is_refused_before_reading_anything(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
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
    with pytest.raises(RefineError, match="already exists.*--force"):
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
