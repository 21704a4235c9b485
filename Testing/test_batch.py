"""``refine --batch``: manifests and folders, resuming, shards, worker processes, failures and bad input.

The cases are small generated CTs refined by the shared test model; the command runs in this
process (``cli.main``) so that ``api.refine_files`` can be counted or made to crash, and once as
a subprocess with two worker processes.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import blob_case
from LiverTumorRefineLib import api, batch, cli
from LiverTumorRefineLib.config import TTA
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine.weights import save_model
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(-40.0, 12.0, 300.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
NAMES = ("alpha", "bravo", "charlie")


@pytest.fixture(scope="module")
def data(tmp_path_factory, trained_model) -> Path:
    """NAME_ct, NAME_coarse and NAME_truth files of three small cases, and the test model."""
    folder = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(NAMES, start=21):
        case = blob_case(seed, shape=(16, 72, 72))
        io.write_volume(Volume(case.image, GEOMETRY), folder / f"{name}_ct.nii.gz")
        io.write_volume(Volume(case.coarse.astype(np.uint8), GEOMETRY), folder / f"{name}_coarse.nii.gz")
        io.write_volume(Volume(case.truth.astype(np.uint8), GEOMETRY), folder / f"{name}_truth.nii.gz")
    save_model(trained_model, folder / "model.pt")
    return folder


def manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plain_rows() -> list[dict[str, str]]:
    return [{"image": f"{n}_ct.nii.gz", "mask": f"{n}_coarse.nii.gz"} for n in NAMES]


def refine_batch(data: Path, source: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(["refine", "--batch", str(source), "--out-dir", str(out_dir), "--weights", str(data / "model.pt"),
                     "--device", "cpu", *extra])


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The cases ``api.refine_files`` is called for (by CT file name)."""
    seen: list[str] = []
    real = api.refine_files

    def counting(image, *args, **kwargs):
        seen.append(Path(image).name)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(api, "refine_files", counting)
    return seen


def summary(out_dir: Path, stem: str = "batch_summary") -> list[dict[str, str]]:
    with open(out_dir / f"{stem}.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_manifest_batch_refines_every_case_then_skips_finished_ones(data, tmp_path, calls, capsys):
    rows = plain_rows()
    rows[2].update(out="sub/charlie.nii.gz", truth="charlie_truth.nii.gz")
    source = manifest(data / "batch_a.csv", rows)  # beside the data: relative paths are read from there
    out = tmp_path / "out"
    assert refine_batch(data, source, out) == 0
    printed = capsys.readouterr().out
    assert "3 to refine" in printed and "[3/3]" in printed and "Dice" in printed
    outputs = [out / "alpha_refined.nii.gz", out / "bravo_refined.nii.gz", out / "sub" / "charlie.nii.gz"]
    assert all(p.is_file() for p in outputs) and len(calls) == 3
    single = tmp_path / "single.nii.gz"  # the same engine as a plain refine
    api.refine_files(data / "bravo_ct.nii.gz", data / "bravo_coarse.nii.gz", single, weights=str(data / "model.pt"),
                     device="cpu")
    calls.clear()
    assert np.array_equal(io.read_volume(single).array, io.read_volume(outputs[1]).array)
    coarse = io.read_volume(data / "alpha_coarse.nii.gz").array
    assert (io.read_volume(outputs[0]).array != coarse).any()
    table = summary(out)
    assert [r["status"] for r in table] == ["refined"] * 3 and all(int(r["patches"]) > 0 for r in table)
    assert float(table[2]["dice_refined"]) > float(table[2]["dice_coarse"]) and table[0]["dice_refined"] == ""

    mtimes = [p.stat().st_mtime_ns for p in outputs]
    assert refine_batch(data, source, out) == 0
    assert calls == [], "a finished case was refined again"
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes
    assert "3 already finished, 0 to refine" in capsys.readouterr().out
    again = summary(out)
    assert [r["status"] for r in again] == ["skipped"] * 3
    assert [r["patches"] for r in again] == [r["patches"] for r in table]  # the first run's figures, from the records


def test_folder_batch_matches_files_by_role_in_the_folder_and_its_sub_folders(data, tmp_path):
    folder = tmp_path / "cases"
    (folder / "delta").mkdir(parents=True)
    for name in NAMES[:2]:
        shutil.copy(data / f"{name}_ct.nii.gz", folder / f"{name}_ct.nii.gz")
        shutil.copy(data / f"{name}_coarse.nii.gz", folder / f"{name}_mask.nii.gz")
    shutil.copy(data / "charlie_ct.nii.gz", folder / "delta" / "ct.nii.gz")
    shutil.copy(data / "charlie_coarse.nii.gz", folder / "delta" / "coarse.nii.gz")
    shutil.copy(data / "charlie_truth.nii.gz", folder / "delta" / "truth.nii.gz")
    out = tmp_path / "out"
    assert refine_batch(data, folder, out) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["alpha_refined.nii.gz", "bravo_refined.nii.gz",
                                                           "delta_refined.nii.gz"]
    assert summary(out)[2]["dice_refined"] != ""  # delta's truth was found


def test_crash_mid_batch_is_redone_on_resume(data, tmp_path, monkeypatch, capsys):
    absolute = [{key: str(data / value) for key, value in row.items()} for row in plain_rows()]
    source, out = manifest(tmp_path / "m.csv", absolute), tmp_path / "out"
    real = api.refine_files

    def crash_after_writing_bravo(image, mask, out_path, **kwargs):
        stats = real(image, mask, out_path, **kwargs)
        if "bravo" in str(image):
            raise KeyboardInterrupt  # the process stops after the output, before its record says "done"
        return stats

    monkeypatch.setattr(api, "refine_files", crash_after_writing_bravo)
    assert refine_batch(data, source, out) == 130
    assert (out / "bravo_refined.nii.gz").is_file() and not (out / "charlie_refined.nii.gz").exists()
    assert [r["status"] for r in summary(out)] == ["refined", "pending", "pending"]
    alpha_mtime = (out / "alpha_refined.nii.gz").stat().st_mtime_ns

    redone: list[str] = []
    monkeypatch.setattr(api, "refine_files",
                        lambda image, *a, **k: redone.append(Path(image).name) or real(image, *a, **k))
    assert refine_batch(data, source, out) == 0
    assert redone == ["bravo_ct.nii.gz", "charlie_ct.nii.gz"]
    assert (out / "alpha_refined.nii.gz").stat().st_mtime_ns == alpha_mtime
    assert [r["status"] for r in summary(out)] == ["skipped", "refined", "refined"]

    (out / "alpha_refined.nii.gz").write_bytes(b"damaged")  # an output changed since its record: redone
    redone.clear()
    assert refine_batch(data, source, out) == 0
    assert redone == ["alpha_ct.nii.gz"] and io.read_volume(out / "alpha_refined.nii.gz").array.any()
    capsys.readouterr()


def test_outputs_the_batch_did_not_write_or_other_settings_need_force(data, tmp_path, capsys):
    source, out = manifest(data / "batch_b.csv", plain_rows()[:1]), tmp_path / "out"
    out.mkdir()
    (out / "alpha_refined.nii.gz").write_bytes(b"someone else's file")
    assert refine_batch(data, source, out) == 2
    err = capsys.readouterr().err
    assert "alpha_refined.nii.gz exists and no record of a batch run claims it" in err and "--force" in err
    assert (out / "alpha_refined.nii.gz").read_bytes() == b"someone else's file"
    assert refine_batch(data, source, out, "--force") == 0
    assert io.read_volume(out / "alpha_refined.nii.gz").array.any()
    other = 1 if TTA != 1 else 2
    assert refine_batch(data, source, out, "--tta", str(other)) == 2
    assert f"other inputs or settings (tta {TTA} -> {other})" in capsys.readouterr().err
    assert refine_batch(data, source, out, "--tta", str(other), "--force") == 0
    assert "1 to refine" in capsys.readouterr().out


def test_shards_partition_the_cases_in_a_stable_order(data, tmp_path):
    rows = [{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz", "out": f"case{i}.nii.gz"} for i in range(10)]
    cases = batch.load_cases(manifest(data / "batch_c.csv", rows), tmp_path)
    shards = [[c.name for c in batch.shard_cases(cases, i, 3)] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(c.name for c in cases)  # every case once
    assert shards[0] == ["case0", "case3", "case6", "case9"]
    longer = batch.load_cases(manifest(data / "batch_c2.csv", rows + [dict(rows[0], out="case10.nii.gz")]), tmp_path)
    assert [c.name for c in batch.shard_cases(longer, 0, 3)][:4] == shards[0]  # an appended row moves no case


def test_shards_together_refine_each_case_exactly_once(data, tmp_path, calls):
    source, out = manifest(data / "batch_d.csv", plain_rows()), tmp_path / "out"
    assert refine_batch(data, source, out, "--shard", "0/2") == 0
    assert refine_batch(data, source, out, "--shard", "1/2") == 0
    assert sorted(calls) == sorted(f"{n}_ct.nii.gz" for n in NAMES)
    assert [r["out"] for r in summary(out, "batch_summary.shard-0-of-2")] == [str(out / "alpha_refined.nii.gz"),
                                                                            str(out / "charlie_refined.nii.gz")]
    assert len(summary(out, "batch_summary.shard-1-of-2")) == 1


def test_two_workers_give_the_same_outputs_as_one(data, tmp_path):
    source = manifest(data / "batch_e.csv", plain_rows())
    assert refine_batch(data, source, tmp_path / "one") == 0
    proc = subprocess.run([sys.executable, "-m", "LiverTumorRefineLib.cli", "refine", "--batch", str(source),
                           "--out-dir", str(tmp_path / "two"), "--workers", "2", "--weights", str(data / "model.pt"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert "with 2 worker(s) x" in proc.stdout and "[3/3]" in proc.stdout
    for name in NAMES:
        one = io.read_volume(tmp_path / "one" / f"{name}_refined.nii.gz").array
        two = io.read_volume(tmp_path / "two" / f"{name}_refined.nii.gz").array
        assert np.array_equal(one, two), name


def test_a_failed_case_is_reported_and_the_others_finish(data, tmp_path, capsys):
    rows = plain_rows()
    rows[1]["mask"] = "bravo_ct.nii.gz"  # a (float) CT given as the mask: refused by the engine
    source, out = manifest(data / "batch_f.csv", rows), tmp_path / "out"
    assert refine_batch(data, source, out) == cli.BATCH_FAILED
    printed = capsys.readouterr().out
    assert "bravo: FAILED" in printed and "non-integer values" in printed and "1 failed" in printed
    assert (out / "alpha_refined.nii.gz").is_file() and (out / "charlie_refined.nii.gz").is_file()
    assert not (out / "bravo_refined.nii.gz").exists() and not batch.record_path(out / "bravo_refined.nii.gz").exists()
    report = json.loads((out / "batch_summary.json").read_text())
    assert (report["refined"], report["failed"]) == (2, 1)
    assert "non-integer values" in report["cases"][1]["error"]


@pytest.mark.parametrize("rows, args, message", [
    ([{"image": "alpha_ct.nii.gz", "coarse_mask": "alpha_coarse.nii.gz"}], [], "has no mask column"),
    ([{"image": "alpha_ct.nii.gz", "mask": "nowhere.nii.gz"}], [], "line 2: mask nowhere.nii.gz not found"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz", "out": "x.nii.gz"},
      {"image": "bravo_ct.nii.gz", "mask": "bravo_coarse.nii.gz", "out": "x.nii.gz"}], [], "both write"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz", "out": "x.png"}], [], "unsupported file type"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz"}], ["--shard", "3/2"], "0 <= I < N"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz"}], ["--shard", "1"], "0 <= I < N"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz"}], ["--workers", "0"], "at least 1"),
    ([{"image": "alpha_ct.nii.gz", "mask": "alpha_coarse.nii.gz"}], ["--image", "x.nii.gz"], "leave out --image"),
])
def test_bad_batches_are_refused_before_any_work(data, tmp_path, capsys, rows, args, message):
    source = manifest(data / "batch_bad.csv", rows)
    assert refine_batch(data, source, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_batch_flags_need_their_partners(data, capsys):
    assert cli.main(["refine", "--batch", str(data)]) == 2
    assert "--batch needs --out-dir" in capsys.readouterr().err
    single = ["refine", "--image", "ct.nii.gz", "--mask", "m.nii.gz", "--out", "o.nii.gz"]
    assert cli.main(single + ["--shard", "0/2"]) == 2
    assert "--shard go with --batch" in capsys.readouterr().err
    assert cli.main(["refine", "--mask", "m.nii.gz", "--out", "o.nii.gz"]) == 2
    assert "refine needs --image" in capsys.readouterr().err


def test_an_empty_folder_is_refused_with_the_names_it_expects(tmp_path):
    with pytest.raises(RefineError, match="No cases found .* NAME_ct.nii.gz and NAME_coarse.nii.gz"):
        batch.load_cases(tmp_path, tmp_path / "out")


def test_runtime_reaches_every_case_and_does_not_redo_finished_ones(data, tmp_path, monkeypatch):
    """--runtime goes to each case's refinement; like --device it changes speed, not the output's
    identity, so a finished case is not redone under another runtime."""
    seen: list[str] = []
    real = api.refine_files

    def recording(image, *args, **kwargs):
        seen.append(kwargs["runtime"])
        return real(image, *args, **kwargs)

    monkeypatch.setattr(api, "refine_files", recording)
    source = manifest(data / "runtime.csv", plain_rows()[:1])
    assert refine_batch(data, source, tmp_path / "out", "--runtime", "torch") == 0
    assert seen == ["torch"]
    assert refine_batch(data, source, tmp_path / "out", "--runtime", "auto") == 0
    assert seen == ["torch"], "a finished case was redone because only the runtime changed"


def test_case_names_come_from_the_file_or_its_dicom_folder(tmp_path):
    data = Path(__file__).resolve().parent / "data" / "ct_jpeg_lossless"
    assert batch.case_name(tmp_path / "case7_ct.nii.gz") == "case7"
    assert batch.case_name(data) == "ct_jpeg_lossless"  # a DICOM folder
    assert batch.case_name(data / "IM0041") == "ct_jpeg_lossless"  # one file standing for its series


def test_a_folder_batch_takes_dicom_cases_beside_volume_files(data, tmp_path):
    """A case folder holding its CT as a DICOM series (ct/) and its coarse mask as a DICOM SEG, or a
    Slicer .seg.nrrd, is a case like one of volume files."""
    from test_dicom import truth_labels, write_series, write_two_segment_seg

    root = tmp_path / "cases"
    slices = write_series(root / "p1" / "ct")
    write_two_segment_seg(slices, truth_labels(), root / "p1" / "coarse.dcm")
    (root / "p2").mkdir()
    for suffix in ("ct.nii.gz", "coarse.nii.gz"):
        shutil.copy(data / f"alpha_{suffix}", root / "p2" / suffix)
    cases = batch.load_cases(root, tmp_path / "out")
    assert [(c.name, c.image.name, c.mask.name) for c in cases] == [("p1", "ct", "coarse.dcm"),
                                                                  ("p2", "ct.nii.gz", "coarse.nii.gz")]
    assert refine_batch(data, root, tmp_path / "out") == 0  # p1: the SEG's segment named as a tumour
    # one --segment for a batch mixing a SEG and plain files: it picks in the SEG, the plain case ignores it
    assert refine_batch(data, root, tmp_path / "out2", "--segment", "Liver") == 0
    p1 = io.read_volume(tmp_path / "out2" / "p1_refined.nii.gz").array > 0
    assert p1.sum() > 2 * (truth_labels() == 2).sum()  # the liver segment was refined, not the tumour
    assert [row["status"] for row in summary(tmp_path / "out")] == ["refined", "refined"]
    assert io.read_volume(tmp_path / "out" / "p1_refined.nii.gz").array.shape == truth_labels().shape
