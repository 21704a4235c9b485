"""RT structure sets (DICOM RTSTRUCT) as masks: contours filled on the CT's slices, through the
same entry points as every other mask (refine, evaluate, load_pair)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid  # noqa: E402
from test_dicom import (ORIGIN, PIXEL, SHAPE, STEP, truth_labels, write_multiframe, write_series,  # noqa: E402
                        write_two_segment_seg)

from LiverTumorRefineLib import api  # noqa: E402
from LiverTumorRefineLib.cli import main  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402
from LiverTumorRefineLib.volume import dicom, io, polygons, rtstruct  # noqa: E402

TUMOUR_CENTRE = (4, 14, 17)  # z, y, x voxel of the tumour ball of test_dicom.truth_labels (radius 4.5 mm)


def brute_force_fill(xy: np.ndarray, shape) -> np.ndarray:
    """Even-odd test of every pixel centre against every edge (the classic crossing-number loop)."""
    inside = np.zeros(shape, bool)
    n = len(xy)
    for row in range(shape[0]):
        for col in range(shape[1]):
            odd = False
            for i in range(n):
                (xa, ya), (xb, yb) = xy[i], xy[(i + 1) % n]
                if (ya > row) != (yb > row) and col < xa + (row - ya) * (xb - xa) / (yb - ya):
                    odd = not odd
            inside[row, col] = odd
    return inside


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 14), st.floats(-3, 12)), min_size=3, max_size=9))
def test_fill_matches_the_point_by_point_even_odd_test(points):
    """Any polygon, self-intersecting or reaching past the image, vertices on pixel centres too."""
    xy = np.round(np.array(points), 1)  # rounding puts vertices and edges exactly on centres often
    assert np.array_equal(polygons.fill_polygon(xy, (10, 12)), brute_force_fill(xy, (10, 12)))


def test_a_rectangle_takes_exactly_the_centres_inside():
    xy = np.array([[2.5, 3.5], [7.5, 3.5], [7.5, 9.5], [2.5, 9.5]])
    expected = np.zeros((12, 10), bool)
    expected[4:10, 3:8] = True
    assert np.array_equal(polygons.fill_polygon(xy, (12, 10)), expected)
    assert np.array_equal(polygons.fill_polygon(xy[::-1], (12, 10)), expected)  # either winding


def circle(centre_mm, radius_mm: float, n: int = 360) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y, z = centre_mm
    return np.stack([x + radius_mm * np.cos(angle), y + radius_mm * np.sin(angle), np.full(n, z)], axis=1)


def square(centre_mm, half_mm: float) -> np.ndarray:
    x, y, z = centre_mm
    return np.array([[x - half_mm, y - half_mm, z], [x + half_mm, y - half_mm, z], [x + half_mm, y + half_mm, z],
                     [x - half_mm, y + half_mm, z]])


def voxel_mm(z: float, y: float, x: float) -> tuple[float, float, float]:
    """LPS mm of a voxel of test_dicom's axial series (x along a row, y down a column)."""
    return ORIGIN[0] + x * PIXEL[1], ORIGIN[1] + y * PIXEL[0], ORIGIN[2] + z * STEP


def tumour_contours(shift_z: float = 0.0) -> list[np.ndarray]:
    """The tumour ball of truth_labels as one circle per slice it cuts."""
    z0, y0, x0 = TUMOUR_CENTRE
    contours = []
    for k in range(SHAPE[0]):
        dz = (k - z0) * STEP
        if abs(dz) < 4.5:
            contours.append(circle(voxel_mm(k + shift_z, y0, x0), np.sqrt(4.5 ** 2 - dz ** 2)))
    return contours


def write_rtstruct(path: Path, frame_uid: str, structures: dict[str, list[np.ndarray]],
                   kind: str = "CLOSED_PLANAR") -> Path:
    """An RT structure set with one ROI per entry of ``structures`` (ROI numbers 1, 2, ...)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid(), generate_uid()
    ds.StructureSetLabel, ds.PatientID = "test", "p1"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = [frame]
    rois, roi_contours = [], []
    for number, (name, contours) in enumerate(structures.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        items = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = kind
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in np.asarray(points).ravel()]
            items.append(contour)
        item.ContourSequence = items
        roi_contours.append(item)
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, roi_contours
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def ct_and_contours(tmp_path):
    """test_dicom's CT series, and a structure set holding its liver box and its tumour ball."""
    folder = tmp_path / "ct"
    slices = write_series(folder)
    frame = str(slices[0].FrameOfReferenceUID)
    liver = [square(voxel_mm(k, 15.5, 15.5), 2.0) for k in range(1, 7)]
    path = write_rtstruct(tmp_path / "contours.dcm", frame, {"Liver": liver, "GTV tumour": tumour_contours()})
    return folder, path, frame


def test_a_structure_by_name_or_number_fills_the_lesion_on_the_ct_grid(ct_and_contours):
    folder, path, _ = ct_and_contours
    expected = truth_labels() == 2
    for choice in ("gtv TUMOUR", "2", 2):
        _, mask = api.load_pair(folder, path, segment=choice)
        assert np.array_equal(mask.array.astype(bool), expected), choice
    with pytest.warns(UserWarning, match=r"using 2 'GTV tumour', the one named as a tumour"):
        _, mask = api.load_pair(folder, path)
    assert np.array_equal(mask.array.astype(bool), expected)
    with pytest.raises(RefineError, match=r"has no segment 'GTV'; segments there: 1 'Liver', 2 'GTV tumour'"):
        api.load_pair(folder, path, segment="GTV")


def test_the_same_contours_land_on_the_same_voxels_of_a_flipped_nifti_ct(ct_and_contours, tmp_path):
    """Contours are placed by patient position: a CT stored in another axis order gets the same voxels."""
    folder, path, _ = ct_and_contours
    flipped = sitk.Flip(io.read_image(folder), [True, False, True])  # RAS-like storage order, other direction
    sitk.WriteImage(flipped, str(tmp_path / "ct.nii.gz"))
    _, from_series = api.load_pair(folder, path, segment="GTV tumour")
    _, from_nifti = api.load_pair(tmp_path / "ct.nii.gz", path, segment="GTV tumour")
    assert from_nifti.array.any() and np.array_equal(from_nifti.array, from_series.array)


def test_a_contour_inside_another_is_a_hole(tmp_path):
    folder = tmp_path / "ct"
    slices = write_series(folder)
    ring = [square(voxel_mm(3, 16, 16), 6.0), square(voxel_mm(3, 16, 16), 2.5)]
    path = write_rtstruct(tmp_path / "ring.dcm", str(slices[0].FrameOfReferenceUID), {"ring": ring})
    _, mask = api.load_pair(folder, path)
    z, y, x = np.indices(SHAPE)
    dy, dx = np.abs(y - 16) * PIXEL[0], np.abs(x - 16) * PIXEL[1]
    outer, inner = (dy < 6.0) & (dx < 6.0), (dy < 2.5) & (dx < 2.5)
    assert np.array_equal(mask.array.astype(bool), (z == 3) & outer & ~inner)


def test_contours_of_another_scan_are_refused(ct_and_contours, tmp_path):
    folder, _, frame = ct_and_contours
    other = write_rtstruct(tmp_path / "other.dcm", generate_uid(), {"GTV": tumour_contours()})
    with pytest.raises(RefineError, match=r"another frame of reference .* than the CT .*Give the CT series"):
        api.load_pair(folder, other)
    between = write_rtstruct(tmp_path / "between.dcm", frame, {"GTV": tumour_contours(shift_z=0.5)})
    with pytest.raises(RefineError, match=r"do not lie on the CT's slices \(one lies 3.50 slices"):
        api.load_pair(folder, between)
    beyond = write_rtstruct(tmp_path / "beyond.dcm", frame, {"GTV": tumour_contours(shift_z=20)})
    with pytest.raises(RefineError, match=r"every contour lies outside the CT's slices"):
        api.load_pair(folder, beyond)
    partly = write_rtstruct(tmp_path / "partly.dcm", frame, {"GTV": tumour_contours(shift_z=3)})  # slices 6, 7, 8
    with pytest.warns(UserWarning, match=r"1 of 3 contours lie beyond the CT's first or last slice"):
        _, mask = api.load_pair(folder, partly)
    assert sorted(set(np.nonzero(mask.array)[0])) == [6, 7]


def test_a_structure_set_as_planning_systems_write_it(tmp_path):
    """pydicom's sample: no DICOM preamble, closing points repeated, point ROIs beside the contours."""
    from pydicom.data import get_testdata_file

    path = tmp_path / "sample.dcm"
    path.write_bytes(Path(get_testdata_file("rtstruct.dcm", download=False)).read_bytes())
    assert rtstruct.is_rtstruct(path)
    grid = sitk.Image(51, 41, 4, sitk.sitkInt16)  # 10 mm voxels, slices at z -210, -200, -190, -180
    grid.SetSpacing((10.0, 10.0, 10.0))
    grid.SetOrigin((-250.0, -200.0, -210.0))
    mask = sitk.GetArrayFromImage(rtstruct.read_rtstruct_on(path, grid, "patient"))
    # the 400 x 300 mm rectangle: centres x -200..190 and y -150..140 (an edge's centres count on one side only)
    assert mask.sum(axis=(1, 2)).tolist() == [0, 40 * 30, 40 * 30, 40 * 30]
    assert mask[1, 5, 5] == 1 and mask[1, 5, 4] == 0 and mask[1, 4, 5] == 0
    with pytest.raises(RefineError, match=r"holds 3 segments \(1 'patient', 2 'Isocenter 1', 3 'Isocenter 2'\)"):
        rtstruct.read_rtstruct_on(path, grid)
    with pytest.raises(RefineError, match=r"structure 2 has no closed planar contour \(it holds POINT\)"):
        rtstruct.read_rtstruct_on(path, grid, "isocenter 1")
    with pytest.raises(RefineError, match=r"another frame of reference"):
        rtstruct.read_rtstruct_on(path, grid, "patient", frame_of_reference="1.2.3")


def test_structures_without_an_area_are_refused_with_what_to_do(ct_and_contours, tmp_path):
    folder, _, frame = ct_and_contours
    points = write_rtstruct(tmp_path / "points.dcm", frame, {"marker": [np.array([voxel_mm(4, 14, 17)])]}, kind="POINT")
    with pytest.raises(RefineError, match=r"structure 1 has no closed planar contour \(it holds POINT\)"):
        api.load_pair(folder, points)
    damaged = write_rtstruct(tmp_path / "damaged.dcm", frame, {"GTV": tumour_contours()})
    ds = pydicom.dcmread(damaged)
    ds.ROIContourSequence[0].ContourSequence[1].ContourData = ds.ROIContourSequence[0].ContourSequence[1].ContourData[:-1]
    ds.save_as(damaged)
    with pytest.raises(RefineError, match=r"a contour of structure 1 has 1079 coordinates, not x, y, z triples"):
        api.load_pair(folder, damaged)
    empty = write_rtstruct(tmp_path / "empty.dcm", frame, {"GTV": []})
    with pytest.raises(RefineError, match=r"has no contoured structure \(ROI\)"):
        api.load_pair(folder, empty)


def test_refine_and_evaluate_take_a_structure_set(ct_and_contours, tmp_path, tiny_weights, capsys):
    folder, path, _ = ct_and_contours
    common = ["--image", str(folder), "--mask", str(path), "--segment", "GTV tumour", "--weights", str(tiny_weights),
              "--device", "cpu"]
    before = path.read_bytes()
    assert main(["refine", *common, "--out", str(tmp_path / "refined.nii.gz")]) == 0
    assert main(["refine", *common, "--out", str(tmp_path / "refined.dcm")]) == 0
    assert path.read_bytes() == before  # the input is not modified
    capsys.readouterr()
    # The structure set as the reference, filled on the prediction's grid: its own lesion scores 1.
    io.write_volume(io.read_volume(folder).with_array((truth_labels() == 2).astype(np.uint8)), tmp_path / "truth.nii.gz")
    assert main(["evaluate", "--truth", str(path), "--pred", str(tmp_path / "truth.nii.gz"),
                 "--segment", "gtv tumour", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a well-formed structure set
        api.load_pair(folder, path, segment=1)


def test_training_cases_take_structure_sets_beside_the_series(tmp_path, monkeypatch):
    """dicomseg:<folder> (the fine-tuning path for a site's own data) reads contours as it reads SEGs,
    each structure set file once for its names and all its structures."""
    from LiverTumorRefineLib.training import datasets
    from LiverTumorRefineLib.volume import rtstruct

    reads: list[str] = []
    read_structure_set = rtstruct.read_structure_set
    monkeypatch.setattr(rtstruct, "read_structure_set", lambda path: reads.append(str(path)) or read_structure_set(path))

    root = tmp_path / "cases"
    slices = write_series(root / "case1")
    liver = [square(voxel_mm(k, 15.5, 15.5), 8.0) for k in range(1, 7)]
    # radiotherapy names: the tumour as "GTV_Liver", the liver without it as "Liver-GTV" (AAPM TG-263)
    write_rtstruct(root / "case1_contours.dcm", str(slices[0].FrameOfReferenceUID),
                   {"Liver-GTV": liver, "GTV_Liver": tumour_contours(), "Spinal cord": [square(voxel_mm(3, 2, 2), 1.0)]})
    cases = list(datasets.find_cases(f"dicomseg:{root}"))
    assert [c.name for c in cases] == ["case1"]
    label = cases[0].label.array
    assert np.array_equal(label == 2, truth_labels() == 2)
    assert (label == 1).sum() > 0 and not label[:, 2, 2].any()  # the liver, and nothing of the unrelated structure
    assert reads == [str(root / "case1_contours.dcm")]


# ------------------------------------------------------------------------------------------
# RT structure sets out


def crossings(outlines: list[np.ndarray]) -> int:
    """How many pairs of non-adjacent polygon sides, over all outlines, touch or cross."""
    sides = [(a, b, i, j, len(o)) for i, o in enumerate(outlines) for j, (a, b) in enumerate(zip(o, np.roll(o, -1, 0)))]

    def orient(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    def on(p, q, r):  # r on segment pq, given collinear
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    count = 0
    for m, (a, b, i, j, n) in enumerate(sides):
        for c, d, k, l, _ in sides[m + 1:]:
            if i == k and (abs(j - l) == 1 or abs(j - l) == n - 1):
                continue  # neighbouring sides share their vertex
            o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
            if (o1 != o2 and o3 != o4) or (o1 == 0 and on(a, b, c)) or (o2 == 0 and on(a, b, d)) \
                    or (o3 == 0 and on(c, d, a)) or (o4 == 0 and on(c, d, b)):
                count += 1
    return count


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.floats(0.1, 0.9), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_outlines_fill_back_to_the_mask_and_are_simple_polygons(rows, cols, density, seed, cut):
    mask = np.random.default_rng(seed).random((rows, cols)) < density
    outlines = polygons.mask_outlines(mask, cut_corners=cut)
    filled = np.zeros_like(mask)
    for outline in outlines:
        filled ^= polygons.fill_polygon(outline, mask.shape)
        assert len({tuple(p) for p in outline.tolist()}) == len(outline) >= 4  # no vertex twice
        if not cut:
            assert np.all(outline % 1 == 0.5)  # along pixel edges
    assert np.array_equal(filled, mask)
    if cut:  # outlines that meet at a corner uncut stay apart when cut
        assert crossings(outlines) == 0


def test_cut_corners_make_a_diagonal_edge_straight():
    """A staircase of pixels is outlined by a straight diagonal side, and a pixel by a diamond
    through its edges' midpoints, each with its centre inside."""
    pixel = np.zeros((3, 3), bool)
    pixel[1, 1] = True
    (diamond,) = polygons.mask_outlines(pixel, cut_corners=True)
    assert sorted(map(tuple, diamond.tolist())) == [(0.5, 1.0), (1.0, 0.5), (1.0, 1.5), (1.5, 1.0)]
    stairs = np.tril(np.ones((6, 6), bool))  # pixels on and below the diagonal
    (square,) = polygons.mask_outlines(stairs)
    (cut,) = polygons.mask_outlines(stairs, cut_corners=True)
    assert len(square) == 2 * 6 + 2 and len(cut) < 8  # 14 staircase corners; a few straight sides
    assert np.array_equal(polygons.fill_polygon(cut, stairs.shape), stairs)


def test_outlines_of_a_ring_and_of_pixels_touching_at_a_corner():
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert sorted(len(o) for o in polygons.mask_outlines(ring)) == [4, 4]  # outer square, hole
    corner = np.zeros((4, 4), bool)
    corner[1, 1] = corner[2, 2] = True  # one outline each, meeting at the corner (1.5, 1.5)
    squares = sorted(sorted(map(tuple, o.tolist())) for o in polygons.mask_outlines(corner))
    assert squares == [[(0.5, 0.5), (0.5, 1.5), (1.5, 0.5), (1.5, 1.5)], [(1.5, 1.5), (1.5, 2.5), (2.5, 1.5), (2.5, 2.5)]]
    assert polygons.mask_outlines(np.zeros((3, 3), bool)) == []


# Type 1 attributes of the RT Structure Set IOD's modules (PS3.3 A.19) that this writer fills.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "StructureSetLabel",
            "StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence")


def test_refined_contours_come_back_as_a_structure_set_of_the_series(ct_and_contours, tmp_path, tiny_weights):
    """An RT structure set in, an RT structure set out (by default): it references the CT's
    study, series, frame of reference and slices, and fills exactly the refined voxels."""
    folder, path, frame = ct_and_contours
    common = ["refine", "--image", str(folder), "--mask", str(path), "--segment", "GTV tumour", "--weights",
              str(tiny_weights), "--device", "cpu", "--min-kept", "0"]
    assert main([*common, "--out", str(tmp_path / "refined.dcm")]) == 0
    assert main([*common, "--out", str(tmp_path / "refined.nii.gz")]) == 0
    ds = pydicom.dcmread(tmp_path / "refined.dcm")
    assert ds.Modality == "RTSTRUCT" and all(ds.get(k) not in (None, "") for k in REQUIRED)
    series = dicom.read_series(folder, pixels=False)
    reference = ds.ReferencedFrameOfReferenceSequence[0]
    assert reference.FrameOfReferenceUID == frame
    study = reference.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == series.datasets[0].StudyInstanceUID
    images = {i.ReferencedSOPInstanceUID for i in study.RTReferencedSeriesSequence[0].ContourImageSequence}
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert images == {d.SOPInstanceUID for d in series.datasets}
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Tumor"]
    nifti = io.read_volume(tmp_path / "refined.nii.gz")
    _, back = api.load_pair(folder, tmp_path / "refined.dcm")
    assert nifti.array.any() and np.array_equal(back.array.astype(bool), nifti.array > 0)
    for contour in ds.ROIContourSequence[0].ContourSequence:  # each on the slice it names
        k = next(i for i, d in enumerate(series.datasets) if d.SOPInstanceUID
                 == contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
        assert np.allclose(np.array(contour.ContourData, float).reshape(-1, 3)[:, 2], ORIGIN[2] + STEP * k)
    # asked for, a DICOM SEG instead; and a SEG mask gives an RT structure set when asked
    assert main([*common, "--out", str(tmp_path / "as_seg.dcm"), "--dicom-output", "seg"]) == 0
    assert pydicom.dcmread(tmp_path / "as_seg.dcm").Modality == "SEG"
    slices = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    write_two_segment_seg(slices, truth_labels(), tmp_path / "labels.dcm")
    assert main(["refine", "--image", str(folder), "--mask", str(tmp_path / "labels.dcm"), "--segment", "Tumor",
                 "--weights", str(tiny_weights), "--device", "cpu", "--out", str(tmp_path / "from_seg.dcm"),
                 "--dicom-output", "rtstruct"]) == 0
    assert pydicom.dcmread(tmp_path / "from_seg.dcm").Modality == "RTSTRUCT"


def test_a_label_map_gives_one_structure_per_label_and_a_multiframe_ct_its_frames(tmp_path):
    folder = tmp_path / "ct"
    slices = write_series(folder)
    enhanced = write_multiframe(slices, tmp_path / "enhanced")
    for source in (folder, tmp_path / "enhanced"):
        series = dicom.read_series(source)  # slices along the normal, whatever the frames' order
        labels = series.volume.with_array(truth_labels())
        out = rtstruct.write_rtstruct(labels, series, tmp_path / f"{source.name}.dcm")
        ds = pydicom.dcmread(out)
        assert [r.ROIName for r in ds.StructureSetROISequence] == ["Liver", "Tumor"]
        assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "GTV"]
        grid = io.to_sitk(labels)
        for number, value in ((1, 1), (2, 2)):
            back = sitk.GetArrayFromImage(rtstruct.read_rtstruct_on(out, grid, number))
            assert np.array_equal(back.astype(bool), labels.array == value), (source.name, number)
    for item in (c for roi in ds.ROIContourSequence for c in roi.ContourSequence):  # the frame of its plane
        frame = enhanced.PerFrameFunctionalGroupsSequence[item.ContourImageSequence[0].ReferencedFrameNumber - 1]
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert np.allclose(np.array(item.ContourData, float).reshape(-1, 3)[:, 2], z)
    assert {i.ReferencedSOPInstanceUID for c in ds.ROIContourSequence for item in c.ContourSequence
            for i in item.ContourImageSequence} == {enhanced.SOPInstanceUID}


def test_dicom_output_needs_a_dcm_out_and_not_a_batch(ct_and_contours, tmp_path, tiny_weights, capsys):
    folder, path, _ = ct_and_contours
    assert main(["refine", "--image", str(folder), "--mask", str(path), "--segment", "1", "--weights", str(tiny_weights),
                 "--out", str(tmp_path / "o.nii.gz"), "--dicom-output", "rtstruct"]) == 2
    assert "--dicom-output applies to a .dcm --out, not" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    assert main(["refine", "--batch", str(tmp_path), "--out-dir", str(tmp_path / "b"), "--dicom-output", "seg"]) == 2
    assert "leave out --dicom-output" in capsys.readouterr().err


def test_overlay_and_qa_show_dicom_masks(ct_and_contours, tmp_path, tiny_weights, capsys):
    """After refine --out x.dcm, the pictures read the SEG or structure set, not only volume files:
    a file's only segment, else its one segment named as a tumour, else --segment."""
    folder, path, frame = ct_and_contours
    slices = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    write_two_segment_seg(slices, truth_labels(), tmp_path / "truth.dcm")  # "Liver" and "Tumor"
    assert main(["refine", "--image", str(folder), "--mask", str(path), "--segment", "GTV tumour", "--weights",
                 str(tiny_weights), "--device", "cpu", "--out", str(tmp_path / "refined.dcm")]) == 0
    masks = ["--truth", str(tmp_path / "truth.dcm"), "--coarse", str(path), "--refined", str(tmp_path / "refined.dcm")]
    capsys.readouterr()
    assert main(["overlay", "--image", str(folder), *masks, "--out", str(tmp_path / "o.png")]) == 0
    assert (tmp_path / "o.png").stat().st_size > 0
    assert "truth.dcm holds 2 segments (1 'Liver', 2 'Tumor'): using 2 'Tumor', the one named as a tumour" \
        in capsys.readouterr().err  # the CLI's one-line warning
    assert main(["qa", "--image", str(folder), *masks, "--out", str(tmp_path / "qa.png")]) == 0
    said = capsys.readouterr()
    assert "1 lesion(s)" in said.out and "using 2 'GTV tumour'" in said.err
    from LiverTumorRefineLib.evaluate import qa

    with pytest.warns(UserWarning, match="the one named as a tumour"):
        image, truth, coarse, refined = qa.load_case(folder, path, tmp_path / "refined.dcm", tmp_path / "truth.dcm")
    assert np.array_equal(truth, truth_labels() == 2) and np.array_equal(coarse, truth_labels() == 2) and refined.any()
    organs = write_rtstruct(tmp_path / "organs.dcm", frame, {"Liver": tumour_contours(), "Spleen": tumour_contours()})
    assert main(["overlay", "--image", str(folder), "--truth", str(organs), "--out", str(tmp_path / "p.png")]) == 2
    assert "holds 2 segments (1 'Liver', 2 'Spleen'): choose one with --segment" in capsys.readouterr().err
    assert main(["overlay", "--image", str(folder), "--truth", str(organs), "--refined", str(tmp_path / "refined.dcm"),
                 "--segment", "spleen", "--out", str(tmp_path / "p.png")]) == 0


def test_an_empty_result_is_one_empty_tumour_segment_in_either_dicom_output(tmp_path):
    """A refinement that removed every voxel is still written, as a "Tumor" segment (it was named
    "Liver" in a SEG before) and as a structure without contours."""
    folder = tmp_path / "ct"
    write_series(folder)
    series = dicom.read_series(folder)
    empty = series.volume.with_array(np.zeros(SHAPE, np.uint8))
    seg = hd.seg.segread(str(dicom.write_seg(empty, series, tmp_path / "empty_seg.dcm")))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Tumor"]
    ds = pydicom.dcmread(rtstruct.write_rtstruct(empty, series, tmp_path / "empty_rt.dcm"))
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Tumor"] and "ContourSequence" not in ds.ROIContourSequence[0]


def test_a_contour_truth_is_scored_on_every_slice_of_a_cropped_seg_prediction(ct_and_contours, tmp_path):
    """A SEG holds only the frames with a segment: a structure set truth reaching beyond them is
    filled on that grid extended, so its voxels there count as missed, not dropped."""
    folder, path, frame = ct_and_contours
    series = dicom.read_series(folder)
    half = truth_labels() == 2
    half[:4] = False  # the prediction misses the tumour's lower slices: its SEG holds slices 4-5 only
    seg = dicom.write_seg(series.volume.with_array(half.astype(np.uint8)), series, tmp_path / "half.dcm")
    metrics = api.evaluate_files(path, seg, segment="GTV tumour", pred_segment="Tumor")
    assert metrics["dice"] == pytest.approx(2 * half.sum() / (half.sum() + (truth_labels() == 2).sum()))


def test_qa_batch_takes_a_dicom_case(ct_and_contours, tmp_path, tiny_weights):
    """qa --batch: a case folder with its CT as a ct/ DICOM series and .dcm masks."""
    import shutil

    folder, path, _ = ct_and_contours
    case = tmp_path / "cases" / "p1"
    shutil.copytree(folder, case / "ct")
    shutil.copy(path, case / "coarse.dcm")
    assert main(["refine", "--image", str(case / "ct"), "--mask", str(case / "coarse.dcm"), "--segment", "GTV tumour",
                 "--weights", str(tiny_weights), "--device", "cpu", "--out", str(case / "refined.dcm")]) == 0
    assert main(["qa", "--batch", str(tmp_path / "cases"), "--out", str(tmp_path / "sheets")]) == 0
    assert (tmp_path / "sheets" / "p1.png").stat().st_size > 0


def test_two_structure_sets_are_scored_on_the_ct_they_were_drawn_on(ct_and_contours, tmp_path, capsys):
    """An RT user compares a refined structure set with the reference one: both are filled on the
    CT given with --image; without it, contours have no grid and that is said."""
    folder, path, frame = ct_and_contours
    series = dicom.read_series(folder)
    half = truth_labels() == 2
    half[:4] = False
    pred = rtstruct.write_rtstruct(series.volume.with_array(half.astype(np.uint8)), series, tmp_path / "pred.dcm")
    assert main(["evaluate", "--truth", str(path), "--pred", str(pred), "--segment", "GTV tumour",
                 "--pred-segment", "Tumor", "--json"]) == 2
    assert "both RT structure sets: contours have no voxel grid of their own, so give the CT they were drawn on " \
           "with --image" in capsys.readouterr().err
    assert main(["evaluate", "--truth", str(path), "--pred", str(pred), "--segment", "GTV tumour",
                 "--pred-segment", "Tumor", "--image", str(folder), "--json"]) == 0
    dice = json.loads(capsys.readouterr().out)["dice"]
    assert dice == pytest.approx(2 * half.sum() / (half.sum() + (truth_labels() == 2).sum()))
    other = write_rtstruct(tmp_path / "other.dcm", generate_uid(), {"GTV": tumour_contours()})
    with pytest.raises(RefineError, match="another frame of reference"):
        api.evaluate_files(other, pred, image_path=folder)
