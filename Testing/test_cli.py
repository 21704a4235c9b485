"""The command line end to end on small generated cases, and geometry through files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob_case
from LiverTumorRefineLib import cli
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume
from LiverTumorRefineLib.refine.weights import save_model

ROTATED = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())
GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(-120.5, 33.0, 410.25), direction=ROTATED)


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, trained_model):
    folder = tmp_path_factory.mktemp("case")
    case = blob_case(11)
    labels = np.where(case.truth, 2, 1).astype(np.uint8)
    labels[:, :5] = 0  # some background, as in a LiTS label map
    coarse = np.where(case.coarse, 2, 1).astype(np.uint8)
    coarse[:, :5] = 0
    paths = {"ct": folder / "ct.nii.gz", "truth": folder / "truth.nii.gz", "coarse": folder / "coarse.nrrd",
             "weights": folder / "model.pt"}
    io.write_volume(Volume(case.image, GEOMETRY), paths["ct"])
    io.write_volume(Volume(labels, GEOMETRY), paths["truth"])
    io.write_volume(Volume(coarse, GEOMETRY), paths["coarse"])
    save_model(trained_model, paths["weights"])
    return paths


def run(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "LiverTumorRefineLib.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_geometry_round_trips_through_every_format(tmp_path, suffix):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    io.write_volume(Volume(array, GEOMETRY), tmp_path / f"v{suffix}")
    back = io.read_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(back.array, array)
    assert back.geometry.same_grid(GEOMETRY, tol=1e-5)
    assert back.spacing_zyx == pytest.approx((2.5, 0.8, 0.8))


def test_refine_label_map_end_to_end(case_files, tmp_path):
    out = tmp_path / "refined.nii.gz"
    code, stdout, stderr = run("refine", "--image", str(case_files["ct"]), "--mask", str(case_files["coarse"]),
                               "--out", str(out), "--weights", str(case_files["weights"]), "--device", "cpu")
    assert code == 0, stderr
    assert "patches" in stdout and "voxels changed" in stdout
    refined = io.read_volume(out)
    coarse = io.read_volume(case_files["coarse"]).array
    assert refined.geometry.same_grid(GEOMETRY, tol=1e-5) and refined.array.shape == coarse.shape
    assert set(np.unique(refined.array)) <= {0, 1, 2}
    assert np.array_equal(refined.array == 0, coarse == 0)  # only the tumour label moved
    assert (refined.array != coarse).any()
    before = json.loads(run("evaluate", "--truth", str(case_files["truth"]), "--pred", str(case_files["coarse"]), "--json")[1])
    after = json.loads(run("evaluate", "--truth", str(case_files["truth"]), "--pred", str(out), "--json")[1])
    assert set(after) == {"dice", "jaccard", "voe", "rvd", "assd", "mssd", "hd95"}
    assert after["dice"] > before["dice"]


def test_binary_mask_on_another_grid_is_resampled_and_stays_binary(case_files, tmp_path):
    coarse = sitk.ReadImage(str(case_files["coarse"])) == 2
    finer = sitk.Resample(coarse, [s * 2 for s in coarse.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                          coarse.GetOrigin(), [s / 2 for s in coarse.GetSpacing()], coarse.GetDirection())
    sitk.WriteImage(finer, str(tmp_path / "fine.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert cli.main(["refine", "--image", str(case_files["ct"]), "--mask", str(tmp_path / "fine.nii.gz"), "--out", str(out),
                     "--weights", str(case_files["weights"]), "--device", "cpu"]) == 0
    refined = io.read_volume(out)
    assert refined.geometry.same_grid(GEOMETRY, tol=1e-5) and set(np.unique(refined.array)) <= {0, 1}


def test_existing_output_needs_force(case_files, tmp_path):
    out = tmp_path / "refined.nii.gz"
    out.write_bytes(b"keep me")
    args = ["refine", "--image", str(case_files["ct"]), "--mask", str(case_files["coarse"]), "--out", str(out),
            "--weights", str(case_files["weights"]), "--device", "cpu"]
    code, _, stderr = run(*args)
    assert code == 2 and "already exists" in stderr and "--force" in stderr and "Traceback" not in stderr
    assert out.read_bytes() == b"keep me"
    assert cli.main(args + ["--force"]) == 0 and io.read_volume(out).array.any()


@pytest.mark.parametrize("change, message", [
    (lambda p, t: ["--mask", str(t / "missing.nii.gz")], "not found"),
    (lambda p, t: ["--out", str(p["ct"])], "is one of the inputs"),
    (lambda p, t: ["--out", str(t / "nofolder" / "x.nii.gz")], "does not exist"),
    (lambda p, t: ["--out", str(t / "x.png")], "unsupported file type"),
    (lambda p, t: ["--label", "7"], "Label 7 is not in the mask"),
    (lambda p, t: ["--weights", str(t / "none.pt")], "weights not found"),
])
def test_user_errors_are_one_line_without_traceback(case_files, tmp_path, change, message):
    args = {"--image": str(case_files["ct"]), "--mask": str(case_files["coarse"]), "--out": str(tmp_path / "o.nii.gz"),
            "--weights": str(case_files["weights"])}
    override = change(case_files, tmp_path)
    args[override[0]] = override[1]
    code, _, stderr = run("refine", "--device", "cpu", *[x for kv in args.items() for x in kv])
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_mask_that_does_not_overlap_the_ct_is_refused(case_files, tmp_path):
    mask = sitk.ReadImage(str(case_files["coarse"]))
    mask.SetOrigin([o + 5000 for o in mask.GetOrigin()])
    sitk.WriteImage(mask, str(tmp_path / "far.nii.gz"))
    code, _, stderr = run("refine", "--image", str(case_files["ct"]), "--mask", str(tmp_path / "far.nii.gz"),
                          "--out", str(tmp_path / "o.nii.gz"), "--weights", str(case_files["weights"]))
    assert code == 2 and "does not overlap" in stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_evaluate_table_and_overlay_png(case_files, tmp_path, capsys):
    assert cli.main(["evaluate", "--truth", str(case_files["truth"]), "--pred", str(case_files["coarse"])]) == 0
    table = capsys.readouterr().out
    assert "Dice" in table and "coarse.nrrd" in table
    png = tmp_path / "overlay.png"
    assert cli.main(["overlay", "--image", str(case_files["ct"]), "--truth", str(case_files["truth"]),
                     "--coarse", str(case_files["coarse"]), "--out", str(png)]) == 0
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
    yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
    assert red.sum() > 50 and yellow.sum() > 50


def test_progress_to_a_file_is_one_line_per_step():
    import io

    from LiverTumorRefineLib.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar("train", stream=stream, log_step=0.25)
    for i in range(101):
        assert bar(i / 100, f"step {i}") is True
    lines = stream.getvalue().splitlines()
    assert lines == ["train   0.0% step 0", "train  25.0% step 25", "train  50.0% step 50", "train  75.0% step 75",
                     "train 100.0% step 100"]


def test_label_selection_keeps_other_labels_and_values():
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.errors import RefineError

    lits = np.array([0, 1, 2, 2, 1])
    mask, used = api.select_label(lits)
    assert used == 2 and mask.tolist() == [False, False, True, True, False]
    assert api.merge_label(lits, np.array([0, 0, 1, 0, 0], bool), used).tolist() == [0, 1, 2, 1, 1]  # tumour -> liver
    binary = np.array([0, 255, 255, 0], np.uint8)
    mask, used = api.select_label(binary)
    assert used == 255 and api.merge_label(binary, np.array([1, 1, 0, 0], bool), used).tolist() == [255, 255, 0, 0]
    with pytest.raises(RefineError, match="several labels .* --label"):
        api.select_label(np.array([0, 1, 3]))
    assert api.select_label(np.array([0, 1, 3]), 3)[0].tolist() == [False, False, True]
    assert api.prediction_mask(np.array([0, 7, 7]), 2).tolist() == [False, True, True]
    assert not api.prediction_mask(np.array([0, 1, 3]), 2).any()
