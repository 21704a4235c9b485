"""Dataset readers: LiTS, MSD Task03_Liver and phantom folders, the dispatcher, and LiTS 117."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib.training import datasets

from LiverTumorRefineLib.training import phantom
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

SHAPE = (6, 12, 10)  # (z, y, x)


def _write(path: Path, array: np.ndarray, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(0.8, 0.8, 2.5)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-100.0, 50.0, 7.0))
    image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[1:5, 2:10, 2:8] = 1
    label[2:4, 4:7, 3:6] = 2
    return ct, label


def test_lits_folder_pairs_by_number_and_skips_unlabelled_volumes(tmp_path):
    for n, suffix in ((0, ".nii"), (3, ".nii.gz"), (10, ".nii")):
        ct, label = _pair(n)
        _write(tmp_path / f"volume-{n}{suffix}", ct)
        _write(tmp_path / f"segmentation-{n}{suffix}", label)
    _write(tmp_path / "volume-7.nii", _pair(7)[0])  # test-set volume: no segmentation
    cases = list(datasets.iter_lits(tmp_path))
    assert [c.name for c in cases] == ["volume-0", "volume-3", "volume-10"]
    ct, label = _pair(3)
    np.testing.assert_array_equal(cases[1].image.array, ct)
    np.testing.assert_array_equal(cases[1].label.array, label)
    assert cases[1].image.array.dtype == np.float32 and cases[1].label.array.dtype == np.uint8
    assert cases[1].image.geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert cases[1].label.geometry == cases[1].image.geometry
    assert [c.name for c in datasets.iter_lits(tmp_path, ids=[10])] == ["volume-10"]
    with pytest.raises(RefineError, match="id"):
        datasets.iter_lits(tmp_path, ids=[7])


def test_msd_folder_ignores_macos_resource_forks(tmp_path):
    for n in (0, 2):
        ct, label = _pair(n)
        _write(tmp_path / "imagesTr" / f"liver_{n}.nii.gz", ct)
        _write(tmp_path / "labelsTr" / f"liver_{n}.nii.gz", label)
    (tmp_path / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # as in the MSD tarball
    _write(tmp_path / "imagesTs" / "liver_5.nii.gz", _pair(5)[0])
    cases = list(datasets.iter_msd(tmp_path))
    assert [c.name for c in cases] == ["liver_0", "liver_2"]
    np.testing.assert_array_equal(cases[1].label.array, _pair(2)[1])


def test_readers_reorient_to_lps_without_resampling(tmp_path):
    ct, label = _pair(1)
    _write(tmp_path / "volume-1.nii", ct, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-stored, as some LiTS files
    _write(tmp_path / "segmentation-1.nii", label, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    case = next(datasets.iter_lits(tmp_path))
    assert case.image.geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(case.image.array, ct[:, ::-1, ::-1])
    np.testing.assert_array_equal(case.label.array, label[:, ::-1, ::-1])
    corner = np.array([-100.0, 50.0, 7.0]) - np.array([0.8 * (SHAPE[2] - 1), 0.8 * (SHAPE[1] - 1), 0.0])
    assert case.image.geometry.origin == pytest.approx(tuple(corner))


def test_find_cases_detects_each_layout(tmp_path):
    lits, msd, ours = tmp_path / "lits", tmp_path / "msd", tmp_path / "ours"
    ct, label = _pair(4)
    _write(lits / "volume-4.nii.gz", ct)
    _write(lits / "segmentation-4.nii.gz", label)
    _write(msd / "imagesTr" / "liver_4.nii.gz", ct)
    _write(msd / "labelsTr" / "liver_4.nii.gz", label)
    geometry = Geometry(spacing=(0.8, 0.8, 2.5))
    for name in ("phantom_10", "phantom_9"):
        phantom.write_case(phantom.Case(name, Volume(ct.astype(np.float32), geometry), Volume(label, geometry)), ours)
    assert [c.name for c in datasets.find_cases(str(lits))] == ["volume-4"]
    assert [c.name for c in datasets.find_cases(str(msd))] == ["liver_4"]
    cases = list(datasets.find_cases(str(ours)))
    assert [c.name for c in cases] == ["phantom_9", "phantom_10"]
    np.testing.assert_array_equal(cases[0].image.array, ct)


def test_find_cases_names_the_folder_and_the_layouts_when_nothing_matches(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(RefineError) as error:
        datasets.find_cases(str(tmp_path))
    assert str(tmp_path) in str(error.value) and "LiTS" in str(error.value) and "MSD" in str(error.value)
    with pytest.raises(RefineError, match="not a folder"):
        datasets.find_cases(str(tmp_path / "missing"))


def test_labels_outside_0_1_2_are_refused(tmp_path):
    ct, label = _pair(6)
    label[0, 0, 0] = 5
    _write(tmp_path / "volume-6.nii", ct)
    _write(tmp_path / "segmentation-6.nii", label)
    with pytest.raises(RefineError, match="label values"):
        list(datasets.iter_lits(tmp_path))


# --- LiTS 117 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lits117() -> phantom.Case:
    """Obtained as the product does: installed package, else the cached or downloaded wheel."""
    return datasets.load_lits117()


def test_lits117_is_the_documented_case_in_lps(lits117):
    image, label = lits117.image.array, lits117.label.array
    assert lits117.name == "lits117"
    assert image.shape == label.shape == (128, 128, 128)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.bincount(label.ravel()).tolist() == [1481801, 485268, 130083]
    assert lits117.image.geometry.spacing == datasets.LITS117_SPACING
    assert 60 < np.median(image[label == 1]) < 160
    bone = np.argwhere(image > 300).mean(axis=0)
    liver = np.argwhere(label > 0).mean(axis=0)
    assert bone[1] > liver[1] + 15  # spine posterior of the liver (y grows posterior)
    assert bone[2] > liver[2] + 15  # and to the patient's left of it (x grows left in LPS)
    assert (image[-8:] < -500).mean() > 3 * (image[:8] < -500).mean()  # lung bases at the top (z grows superior)


def test_lits117_reads_the_same_from_the_wheel_and_unpacked_folders(lits117, tmp_path):
    wheel = datasets.fetch_lits117()
    assert wheel.name == datasets.LITS117_WHEEL and zipfile.is_zipfile(wheel)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path, [m for m in archive.namelist() if "/data/" in m])
    for source in (wheel, wheel.parent, tmp_path, tmp_path / datasets.LITS117_PACKAGE / "data"):
        case = datasets.load_lits117(str(source))
        np.testing.assert_array_equal(case.image.array, lits117.image.array)
        np.testing.assert_array_equal(case.label.array, lits117.label.array)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefineError, match="no LiTS 117 data"):
        datasets.load_lits117(str(tmp_path / "empty"))
    assert [c.name for c in datasets.find_cases("lits117")] == ["lits117"]


def test_lits117_without_mrcfile_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mrcfile", None)  # makes ``import mrcfile`` fail
    with pytest.raises(RefineError, match="pip install mrcfile"):
        datasets.load_lits117()


def test_fetch_lits117_offline_is_a_refine_error(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found (network unreachable)")

    monkeypatch.setattr(datasets.subprocess, "run", offline)
    with pytest.raises(RefineError, match="pip download --no-deps"):
        datasets.fetch_lits117()
