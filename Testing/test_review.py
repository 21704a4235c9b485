"""Lesion-by-lesion review (issue 13, engine side): rows against known ellipsoids, accept/reject,
flags, the Refiner's decisions, the refine --report file, the qa contact sheet and overlay's legend."""
from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib import api

from LiverTumorRefineLib import cli

from LiverTumorRefineLib.volume import io

from LiverTumorRefineLib.evaluate import overlay

from LiverTumorRefineLib.evaluate import qa

from LiverTumorRefineLib.evaluate import review
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Geometry, Volume
from LiverTumorRefineLib.refine.weights import save_model

SPACING = (2.5, 0.8, 0.8)
SHAPE = (24, 120, 160)
GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(-60.0, 20.0, 300.0))
RED, YELLOW, GREEN = overlay.TRUTH_RGB, overlay.COARSE_RGB, overlay.REFINED_RGB


def ellipsoid(centre_zyx, axes_mm, angle: float = 0.0, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """Voxels whose centres lie in the ellipsoid; ``axes_mm`` = (x, y, z) semi-axes, x turned by ``angle``."""
    z, y, x = (np.indices(shape, dtype=float) - np.reshape(centre_zyx, (3, 1, 1, 1))) * np.reshape(spacing, (3, 1, 1, 1))
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    return (u / axes_mm[0]) ** 2 + (v / axes_mm[1]) ** 2 + (z / axes_mm[2]) ** 2 <= 1


def two_lesions():
    """Coarse and refined of two lesions: A (x 20 -> 16 mm semi-axis) and B (unchanged)."""
    coarse = ellipsoid((10, 40, 45), (20, 12, 10)) | ellipsoid((12, 80, 120), (8, 6, 7.5))
    refined = ellipsoid((10, 40, 45), (16, 12, 10)) | ellipsoid((12, 80, 120), (8, 6, 7.5))
    return coarse, refined


def test_rows_match_known_ellipsoids():
    coarse, refined = two_lesions()
    before = (coarse.copy(), refined.copy())
    rows = review.review_lesions(coarse, refined, SPACING, geometry=GEOMETRY)
    assert [r.lesion for r in rows] == [1, 2]
    a, b = rows
    voxel = max(SPACING[1:]) + 1e-6  # discretisation: voxel centres lie on 0.8 mm steps
    # Longest diameter between voxel centres: 2 x semi-axis, within one voxel; perpendicular too.
    assert a.coarse_diameter_mm == pytest.approx(40, abs=voxel) and a.refined_diameter_mm == pytest.approx(32, abs=voxel)
    assert a.coarse_perpendicular_mm == pytest.approx(24, abs=voxel)
    assert a.refined_perpendicular_mm == pytest.approx(24, abs=voxel)
    assert b.coarse_diameter_mm == pytest.approx(16, abs=voxel) and b.coarse_perpendicular_mm == pytest.approx(12, abs=voxel)
    # Volumes within a few per cent of 4/3 pi abc.
    for row, axes in ((a, (20, 12, 10)), (b, (8, 6, 7.5))):
        assert row.coarse_ml == pytest.approx(4 / 3 * np.pi * np.prod(axes) / 1000, rel=0.05)
    assert a.refined_ml == pytest.approx(4 / 3 * np.pi * 16 * 12 * 10 / 1000, rel=0.05)
    # Slices, centre, status, no truth and no Refiner rows: no Dice and no confidence.
    assert (a.first_slice, a.last_slice, a.diameter_slice) == (6, 14, 10)
    assert a.centre_zyx == pytest.approx((10, 40, 45), abs=0.01)
    assert a.centre_lps == pytest.approx((-60 + 45 * 0.8, 20 + 40 * 0.8, 300 + 10 * 2.5), abs=0.01)
    assert (a.status, b.status) == (review.REFINED, review.UNCHANGED)
    assert a.coarse_dice is None and a.confidence is None
    assert np.array_equal(coarse, before[0]) and np.array_equal(refined, before[1])  # inputs untouched


def test_turned_ellipse_diameters_within_one_voxel():
    mask = ellipsoid((10, 60, 80), (25, 10, 10), angle=np.radians(30))
    d = review.axial_diameters(mask, SPACING)
    diagonal = np.hypot(*SPACING[1:]) + 1e-6
    assert d.longest_mm == pytest.approx(50, abs=diagonal) and d.perpendicular_mm == pytest.approx(20, abs=diagonal)
    (_, y0, x0), (_, y1, x1) = d.longest_ends
    assert abs(np.degrees(np.arctan2(y1 - y0, x1 - x0)) % 180 - 30) < 5  # along the long axis


def test_dice_against_reference_per_lesion():
    coarse, refined = two_lesions()
    truth = refined.copy()
    a, b = review.review_lesions(coarse, refined, SPACING, reference=truth)
    assert a.refined_dice == 1.0 and b.coarse_dice == 1.0 and b.refined_dice == 1.0
    n_truth, n_coarse = ellipsoid((10, 40, 45), (16, 12, 10)).sum(), ellipsoid((10, 40, 45), (20, 12, 10)).sum()
    assert a.coarse_dice == pytest.approx(2 * n_truth / (n_truth + n_coarse), abs=1e-4)
    # Truth the lesion missed at its edge counts against it; another lesion's truth does not.
    grown = truth | ellipsoid((10, 40, 45), (18, 12, 10))
    a2, b2 = review.review_lesions(coarse, refined, SPACING, reference=grown)
    assert a2.refined_dice < 1.0 and b2.refined_dice == 1.0


def test_reject_changes_exactly_the_lesion_and_accept_nothing():
    coarse, refined = two_lesions()
    refined_b = refined.copy()
    refined_b[12, 80, 120 + 9] = True  # lesion B's refinement adds a voxel too
    labels = review.lesion_labels(coarse, refined_b)
    saved = (coarse.copy(), refined_b.copy(), labels.copy())
    rejected = review.reject_lesion(coarse, refined_b, labels, 1)
    changed = rejected != refined_b
    assert np.array_equal(changed, (labels == 1) & (coarse != refined_b)) and changed.any()
    assert np.array_equal(rejected[labels == 1], coarse[labels == 1])
    assert np.array_equal(rejected[labels != 1], refined_b[labels != 1])
    assert np.array_equal(review.accept_lesion(coarse, refined_b, labels, 1), refined_b)
    both = review.apply_decisions(coarse, refined_b, labels, {1: review.REJECT, 2: review.REJECT})
    assert np.array_equal(both, coarse)
    assert np.array_equal(review.apply_decisions(coarse, refined_b, labels, {1: review.ACCEPT, 2: review.REJECT})[labels == 1],
                          refined_b[labels == 1])
    for array, original in zip((coarse, refined_b, labels), saved):
        assert np.array_equal(array, original)
    with pytest.raises(RefineError, match="numbered 1 to 2"):
        review.reject_lesion(coarse, refined_b, labels, 3)
    with pytest.raises(RefineError, match="unknown decision"):
        review.apply_decisions(coarse, refined_b, labels, {1: "maybe"})


def test_flags_for_diameter_change_and_the_10_mm_threshold():
    assert review.lesion_flags(20.0, 24.0) == [review.FLAG_DIAMETER]
    assert review.lesion_flags(20.0, 16.0) == [review.FLAG_DIAMETER]
    assert review.lesion_flags(20.0, 17.0) == []
    assert review.lesion_flags(11.0, 9.0) == [review.FLAG_MEASURABLE]
    assert review.lesion_flags(9.6, 10.4) == [review.FLAG_MEASURABLE]
    # On masks: a 20 -> 24 mm lesion and an 8.8 -> 11.6 mm one (diameters = 2 x semi-axis, within a voxel).
    coarse = ellipsoid((10, 40, 45), (10, 6, 5)) | ellipsoid((10, 90, 120), (4.4, 4.4, 5))
    refined = ellipsoid((10, 40, 45), (12, 6, 5)) | ellipsoid((10, 90, 120), (5.8, 4.4, 5))
    a, b = review.review_lesions(coarse, refined, SPACING)
    voxel = 0.8 + 1e-6
    assert (a.coarse_diameter_mm, a.refined_diameter_mm) == pytest.approx((20, 24), abs=voxel)
    assert a.refined_diameter_mm >= 1.2 * a.coarse_diameter_mm and a.flags == [review.FLAG_DIAMETER]
    assert (b.coarse_diameter_mm, b.refined_diameter_mm) == pytest.approx((8.8, 11.6), abs=voxel)
    assert b.flags == [review.FLAG_DIAMETER, review.FLAG_MEASURABLE]
    # A 5% change in a large lesion is not flagged.
    (c,) = review.review_lesions(ellipsoid((10, 60, 80), (20, 8, 5)), ellipsoid((10, 60, 80), (21, 8, 5)), SPACING)
    assert c.flags == [] and c.status == review.REFINED


def test_refiner_rows_give_confidence_and_decision():
    coarse, refined = two_lesions()
    refined_kept = refined | ellipsoid((12, 80, 120), (8, 6, 7.5))
    n_a, n_b = int(ellipsoid((10, 40, 45), (20, 12, 10)).sum()), int(ellipsoid((12, 80, 120), (8, 6, 7.5)).sum())
    stats_lesions = [  # the Refiner's order and slice ranges need not be ours
        {"lesion": 1, "slices": (9, 15), "coarse_voxels": n_b, "refined_voxels": n_b, "proposed_voxels": 10,
         "confidence": 0.31, "decision": "kept coarse", "reason": "would shrink by 99% at confidence 0.31"},
        {"lesion": 2, "slices": (6, 14), "coarse_voxels": n_a, "refined_voxels": 100, "proposed_voxels": 100,
         "confidence": 0.87, "decision": "refined", "reason": ""},
    ]
    a, b = review.review_lesions(coarse, refined_kept, SPACING, refiner_lesions=stats_lesions)
    assert (a.confidence, a.status) == (0.87, review.REFINED)
    assert (b.confidence, b.status, b.reason) == (0.31, review.KEPT_COARSE, "would shrink by 99% at confidence 0.31")


def test_an_80_ml_lesion_is_reviewed_well_under_a_second():
    shape, spacing = (60, 200, 200), (1.0, 0.6, 0.6)
    coarse = ellipsoid((30, 100, 100), (27, 27, 27), shape=shape, spacing=spacing)
    refined = ellipsoid((30, 100, 102), (26, 27, 27), shape=shape, spacing=spacing)
    assert coarse.sum() * np.prod(spacing) / 1000 > 80
    t0 = time.perf_counter()
    (row,) = review.review_lesions(coarse, refined, spacing, reference=coarse)
    assert time.perf_counter() - t0 < 1.0
    assert row.coarse_diameter_mm == pytest.approx(54, abs=0.6)


def test_report_csv_and_json(tmp_path):
    coarse, refined = two_lesions()
    rows = review.review_lesions(coarse, refined, SPACING, reference=refined, geometry=GEOMETRY)
    review.write_report(rows, tmp_path / "lesions.csv")
    review.write_report(rows, tmp_path / "lesions.json")
    with open(tmp_path / "lesions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["lesion"]) for r in table] == [1, 2]
    assert float(table[0]["coarse_diameter_mm"]) == rows[0].coarse_diameter_mm
    assert table[0]["confidence"] == "" and table[1]["status"] == "unchanged"
    data = json.loads((tmp_path / "lesions.json").read_text())
    assert data["lesions"][0]["refined_dice"] == 1.0 and data["lesions"][0]["centre_lps"] == list(rows[0].centre_lps)
    with pytest.raises(RefineError, match="already exists") as error:
        review.write_report(rows, tmp_path / "lesions.csv")
    assert "--" not in str(error.value)
    with pytest.raises(RefineError, match=".csv or .json"):
        review.write_report(rows, tmp_path / "lesions.txt")


@pytest.fixture(scope="module")
def refine_files(tmp_path_factory, trained_model):
    from conftest import blob_case

    folder = tmp_path_factory.mktemp("review_case")
    case = blob_case(11)
    geometry = Geometry(spacing=(0.8, 0.8, 2.5))
    paths = {"ct": folder / "ct.nii.gz", "coarse": folder / "coarse.nii.gz", "weights": folder / "model.pt"}
    io.write_volume(Volume(case.image, geometry), paths["ct"])
    io.write_volume(Volume(case.coarse.astype(np.uint8), geometry), paths["coarse"])
    save_model(trained_model, paths["weights"])
    return paths


def test_refine_writes_the_report_and_refuses_an_existing_one(refine_files, tmp_path, capsys):
    out, report = tmp_path / "refined.nii.gz", tmp_path / "lesions.csv"
    args = ["refine", "--image", str(refine_files["ct"]), "--mask", str(refine_files["coarse"]), "--out", str(out),
            "--weights", str(refine_files["weights"]), "--device", "cpu", "--min-kept", "0"]
    assert cli.main(args + ["--report", str(report)]) == 0
    assert "Wrote" in capsys.readouterr().out
    with open(report, newline="") as f:
        (row,) = list(csv.DictReader(f))  # one blob, one lesion
    refined = io.read_volume(out).array > 0
    assert float(row["refined_ml"]) == pytest.approx(refined.sum() * 0.8 * 0.8 * 2.5 / 1000, abs=1e-3)
    assert row["confidence"] != "" and row["status"] in ("refined", "kept coarse")
    # Checked before any work: an existing report is refused and nothing is written.
    out2 = tmp_path / "again.nii.gz"
    code = cli.main(["refine", "--image", str(refine_files["ct"]), "--mask", str(refine_files["coarse"]), "--out", str(out2),
                     "--weights", str(refine_files["weights"]), "--report", str(report)])
    assert code == 2 and not out2.exists()
    stderr = capsys.readouterr().err
    assert "already exists" in stderr and "--force" in stderr
    # A report that is an input (a point list .mrk.json) or not .csv/.json is refused.
    seeds = tmp_path / "lesions.mrk.json"
    seeds.write_text("{}")
    with pytest.raises(RefineError, match="one of the inputs"):
        api.check_report_output(seeds, [refine_files["ct"], seeds], force=True)
    with pytest.raises(RefineError, match=".csv or .json"):
        api.check_report_output(tmp_path / "lesions.nii.gz", [], force=False)


def write_qa_case(folder, prefix: str = "") -> tuple[np.ndarray, ...]:
    """Three lesions of different sizes: truth, coarse grown by 2 mm, refined between."""
    folder.mkdir(parents=True, exist_ok=True)
    centres, axes = [(10, 30, 40), (12, 80, 60), (9, 60, 130)], [(12, 9, 8), (6, 5, 6), (18, 14, 10)]
    truth = np.zeros(SHAPE, bool)
    coarse, refined = truth.copy(), truth.copy()
    for c, a in zip(centres, axes):
        truth |= ellipsoid(c, a)
        coarse |= ellipsoid(c, tuple(v + 2.5 for v in a))
        refined |= ellipsoid(c, tuple(v + 1.0 for v in a))
    image = np.where(truth, 40.0, 100.0)
    geometry = Geometry(spacing=(0.8, 0.8, 2.5))
    for name, array in (("ct", image.astype(np.int16)), ("truth", truth), ("coarse", coarse), ("refined", refined)):
        io.write_volume(Volume(array.astype(np.int16 if name == "ct" else np.uint8), geometry),
                        folder / f"{prefix}{name}.nii.gz")
    return truth, coarse, refined


def pixels_of(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.array(colour, np.uint8), axis=2)


def test_qa_sheet_has_one_tile_per_lesion_with_three_outlines(tmp_path, capsys):
    write_qa_case(tmp_path / "case")
    out = tmp_path / "sheet.png"
    files = [f"--{n}={tmp_path / 'case' / (n if n != 'image' else 'ct')}.nii.gz" for n in ("image", "truth", "coarse", "refined")]
    assert cli.main(["qa", *files, "--out", str(out)]) == 0
    assert "3 lesion(s)" in capsys.readouterr().out
    sheet = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    image, truth, coarse, refined = qa.load_case(*(tmp_path / "case" / f"{n}.nii.gz" for n in ("ct", "coarse", "refined", "truth")))
    expected, tiles = qa.render_qa_sheet(image.array, image.spacing_zyx, coarse, refined, truth, title="refined.nii.gz")
    np.testing.assert_array_equal(sheet, expected)
    assert len(tiles) == 3
    for rows, cols in tiles:
        tile = sheet[rows, cols]
        assert tile.shape == (qa.TILE_PX, qa.TILE_PX, 3)
        for colour in (RED, YELLOW, GREEN):
            assert pixels_of(tile, colour).sum() > 100, colour
    # The legend in the header, the captions under the tiles.
    header = sheet[: tiles[0][0].start]
    assert all(pixels_of(header, c).any() for c in (RED, YELLOW, GREEN))
    caption = sheet[tiles[0][0].stop: tiles[0][0].stop + 40, tiles[0][1]]
    assert pixels_of(caption, overlay.TEXT_RGB).sum() > 100
    # An existing sheet is refused without --force.
    assert cli.main(["qa", *files, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["qa", *files, "--out", str(out), "--force"]) == 0


def test_qa_batch_writes_a_sheet_per_case(tmp_path, capsys):
    write_qa_case(tmp_path / "cases" / "demo_a")  # the demo's layout: ct.nii.gz, truth.nii.gz, ... in a folder
    write_qa_case(tmp_path / "cases", prefix="case7_")  # NAME_role.nii.gz
    assert [c.name for c in qa.find_cases(tmp_path / "cases")] == ["case7", "demo_a"]
    out = tmp_path / "sheets"
    assert cli.main(["qa", "--batch", str(tmp_path / "cases"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["case7.png", "demo_a.png"]
    assert cli.main(["qa", "--batch", str(tmp_path / "cases"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(RefineError, match="No cases found"):
        qa.find_cases(out)


def test_overlay_command_has_legend_and_slice_number(tmp_path):
    truth, coarse, refined = write_qa_case(tmp_path)
    out = tmp_path / "overlay.png"
    assert cli.main(["overlay", "--image", str(tmp_path / "ct.nii.gz"), "--truth", str(tmp_path / "truth.nii.gz"),
                     "--coarse", str(tmp_path / "coarse.nii.gz"), "--refined", str(tmp_path / "refined.nii.gz"),
                     "--slice", "10", "--out", str(out)]) == 0
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    height = overlay.MIN_SHORT_SIDE_PX  # 120 x 160 slice at 0.8 mm: rows are the short side
    picture, strip = rgb[:height], rgb[height:]
    assert strip.shape[0] > 30
    for colour in (RED, YELLOW, GREEN):
        assert pixels_of(picture, colour).sum() > 100 and pixels_of(strip, colour).sum() > 40
    from LiverTumorRefineLib.evaluate.bitmapfont import LINE, text_mask

    ink = text_mask(f"SLICE 10 OF {SHAPE[0]}", overlay.CAPTION_SCALE)
    top, left = overlay.CAPTION_PAD_PX + LINE * overlay.CAPTION_SCALE, overlay.CAPTION_PAD_PX
    np.testing.assert_array_equal(pixels_of(strip[top:top + ink.shape[0], left:left + ink.shape[1]], overlay.TEXT_RGB), ink)
