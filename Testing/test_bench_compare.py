"""bench/compare.py: the classical boundary-fixing methods it benchmarks, its case reader and its
outputs. No trained model is needed; everything runs on small synthetic blobs in a few seconds."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import blob_case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import compare  # noqa: E402
from LiverTumorRefineLib.evaluate.metrics import dice  # noqa: E402
from LiverTumorRefineLib.volume import io  # noqa: E402
from LiverTumorRefineLib.volume.geometry import Geometry, Volume  # noqa: E402

FIXERS = ["median-3mm", "opening-2mm", "closing-2mm", "grow-from-seeds", "geodesic-ac"]


@pytest.fixture(scope="module")
def case():
    return blob_case(3)


def _method(name):
    if name == "grow-from-seeds":
        try:
            compare.growcut_class()
        except compare.MethodUnavailable as exc:
            pytest.skip(str(exc))
    return compare.CLASSICAL[name]


@pytest.mark.parametrize("name", FIXERS)
def test_method_returns_changed_bool_mask_of_input_shape(case, name):
    coarse = case.coarse.copy()
    out = _method(name)(case.image, coarse, case.spacing_zyx)
    assert isinstance(out, np.ndarray) and out.dtype == bool and out.shape == case.coarse.shape
    assert np.array_equal(coarse, case.coarse), "the input mask was modified"
    assert (out != case.coarse).any(), f"{name} changed nothing"
    assert out.any(), f"{name} returned an empty mask"


@pytest.mark.parametrize("name", ["grow-from-seeds", "geodesic-ac"])
def test_image_driven_methods_move_towards_the_truth(case, name):
    """The coarse blob is the truth grown or shrunk by 1.5-3 mm on a clean step edge: both
    image-driven methods must end nearer the truth than they started."""
    out = _method(name)(case.image, case.coarse, case.spacing_zyx)
    assert dice(out, case.truth) > dice(case.coarse, case.truth) + 0.05


def test_opening_removes_a_speck_and_closing_fills_a_hole(case):
    mask = case.coarse.copy()
    idx = np.argwhere(mask)
    centre = tuple(int(v) for v in idx.mean(0).round())
    assert mask[centre]
    mask[centre] = False  # a 1-voxel hole inside the lesion
    speck = (centre[0], 2, 2)
    assert not mask[max(speck[0] - 1, 0):speck[0] + 2, 0:5, 0:5].any()
    mask[speck] = True  # a 1-voxel speck far from it
    opened = compare.opening_2mm(case.image, mask, case.spacing_zyx)
    closed = compare.closing_2mm(case.image, mask, case.spacing_zyx)
    assert not opened[speck], "opening kept a 1-voxel speck"
    assert closed[centre], "closing left a 1-voxel hole"
    assert closed[speck] and not opened[centre], "each filter should only do its own job here"


def test_kernel_sizes_follow_slicer():
    assert compare.kernel_size_vox(2.0, (2.5, 0.8, 0.8)) == (1, 3, 3)
    assert compare.kernel_size_vox(3.0, (1.0, 0.7, 0.7)) == (3, 5, 5)
    assert compare.kernel_size_vox(2.0, (5.0, 1.5, 1.5)) == (1, 1, 1)  # Slicer leaves the mask as is


def test_growcut_seeds(case):
    seeds = compare.growcut_seeds(case.coarse, case.spacing_zyx)
    assert set(np.unique(seeds)) == {0, 1, 2}
    assert case.coarse[seeds == 1].all() and not case.coarse[seeds == 2].any()
    # a lesion too thin for a 3 mm erosion still gets an inside seed
    thin = np.zeros((12, 40, 40), bool)
    thin[5:7, 18:22, 18:22] = True
    thin_seeds = compare.growcut_seeds(thin, (2.5, 0.8, 0.8))
    assert (thin_seeds[thin] == 1).any()


def test_demo_layout_triplet_is_read(tmp_path, case):
    geometry = Geometry(spacing=tuple(case.spacing_zyx[::-1]))
    label = case.truth.astype(np.uint8) * 2
    label[(label == 0) & (case.image > 60)] = 1  # liver
    (tmp_path / "demo").mkdir()
    for name, array in {"ct.nii.gz": np.rint(case.image).astype(np.int16), "truth.nii.gz": label,
                        "coarse.nii.gz": case.coarse.astype(np.uint8),
                        "refined.nii.gz": case.truth.astype(np.uint8)}.items():
        io.write_volume(Volume(array, geometry), tmp_path / "demo" / name, force=True)
    cases = list(compare.iter_cases([str(tmp_path)], 0, False))  # a folder of demo folders
    assert [(c.set, c.name) for c in cases] == [("given", "demo")]
    got = cases[0]
    assert np.array_equal(got.truth, case.truth) and np.array_equal(got.coarse, case.coarse)
    assert np.allclose(got.spacing_zyx, case.spacing_zyx)


def test_csv_and_numpy_plot(tmp_path):
    rows = [{"set": "phantoms", "case": f"c{i}", "method": m, "error": "", "dice": d, "voe": 1 - d, "assd": a,
             "mssd": 3 * a, "seconds": 0.1} for i in range(2) for m, d, a in (("coarse", 0.7, 2.0), ("x", 0.9, 1.0))]
    rows.append({"set": "phantoms", "case": "c2", "method": "x", "error": "RuntimeError: boom",
                 **{k: float("nan") for k in ("dice", "voe", "assd", "mssd", "seconds")}})
    summaries = compare.summarise(rows, ["coarse", "x"])
    assert [(s.method, s.n, s.failed, round(s.means["dice"], 3)) for s in summaries] == [("coarse", 2, 0, 0.7),
                                                                                         ("x", 2, 1, 0.9)]
    compare.write_csv(tmp_path / "compare.csv", rows, summaries)
    with open(tmp_path / "compare.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["case"] for r in written] == ["c0", "c0", "c1", "c1", "c2", "mean", "mean"]
    assert written[-1]["error"] == "1 failed" and float(written[-1]["dice"]) == pytest.approx(0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.csv"]  # no temporary file left
    compare.write_plot(tmp_path / "compare.png", summaries, ["coarse", "x"], use_matplotlib=False)
    assert (tmp_path / "compare.png").stat().st_size > 100
    table = compare.format_table(summaries).splitlines()
    assert table[0] == "phantoms (3 cases):" and table[-1].split()[0] == "x" and table[-1].endswith("(1 failed)")


def test_an_empty_result_is_counted_and_left_out_of_the_distances_only():
    rows = [{"set": "s", "case": f"c{i}", "method": "m", "error": "", "dice": d, "voe": 1 - d, "assd": a, "mssd": 2 * a,
             "seconds": 0.1} for i, (d, a) in enumerate(((0.8, 1.0), (0.6, 3.0), (0.0, float("inf"))))]
    summary, = compare.summarise(rows, ["m"])
    assert (summary.n, summary.failed, summary.empty) == (3, 0, 1)
    assert summary.means["dice"] == pytest.approx(1.4 / 3)  # the empty result counts in the overlap
    assert summary.means["assd"] == pytest.approx(2.0) and summary.means["mssd"] == pytest.approx(4.0)
    assert compare.format_table([summary]).splitlines()[-1].endswith("(1 empty: distances over 2)")
    only_empty = compare.summarise(rows[2:], ["m"])[0]
    assert only_empty.means["assd"] == float("inf") and only_empty.empty == 1
