"""DICOM series and SEG in and out, and Slicer .seg.nrrd segments, on small synthetic files."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from LiverTumorRefineLib import api  # noqa: E402

from LiverTumorRefineLib.training import datasets

from LiverTumorRefineLib.volume import dicom

from LiverTumorRefineLib.volume import io

from LiverTumorRefineLib.volume import segments
from LiverTumorRefineLib.cli import main  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402
from LiverTumorRefineLib.volume.geometry import Geometry, Volume  # noqa: E402

SHAPE = (8, 32, 32)  # z, y, x
PIXEL = (0.7, 0.8)  # between rows, between columns (DICOM PixelSpacing order)
STEP = 2.5
ORIGIN = (-12.0, -20.0, -100.0)


def ct_array() -> np.ndarray:
    """HU with a gradient along every axis, so any misplaced slice, row or column shows."""
    z, y, x = np.indices(SHAPE)
    return (-200 + 40 * z + 3 * y + x).astype(np.int16)


def truth_labels() -> np.ndarray:
    """0/1/2: a liver box with a tumour ball inside, off-centre along z."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:7, 6:26, 5:27] = 1
    z, y, x = np.indices(SHAPE)
    labels[((z - 4) * STEP) ** 2 + ((y - 14) * PIXEL[0]) ** 2 + ((x - 17) * PIXEL[1]) ** 2 < 4.5 ** 2] = 2
    return labels


def slice_dataset(pixels: np.ndarray, position, orientation, uids: dict, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
    ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "CT", "p1", "Test^P", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, number, "test"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(PIXEL)
    ds.SliceThickness = STEP
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"  # stored values are HU + 1024
    ds.PixelData = (pixels.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    return ds


def write_series(folder: Path, stray: str | None = None, seed: int = 0) -> list[Dataset]:
    """SHAPE as an axial series with shuffled file names (file order is not slice order); ``stray``
    adds one slice of the same series that is not part of the volume."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    axial = (1, 0, 0, 0, 1, 0)
    array = ct_array()
    slices = [slice_dataset(array[k], (ORIGIN[0], ORIGIN[1], ORIGIN[2] + STEP * k), axial, uids, k + 1)
              for k in range(SHAPE[0])]
    extra = []
    if stray == "orientation":  # a coronal reformat stored in the series, as in one real case
        extra = [slice_dataset(array[:, 3, :].repeat(4, axis=0), (ORIGIN[0], ORIGIN[1] + 3, ORIGIN[2]),
                               (1, 0, 0, 0, 0, -1), uids, 99)]
    elif stray == "spacing":  # a slice beyond the end at another spacing
        extra = [slice_dataset(array[-1], (ORIGIN[0], ORIGIN[1], ORIGIN[2] + STEP * SHAPE[0] + 6.0), axial, uids, 98)]
    names = [f"IM{n:04d}" for n in random.Random(seed).sample(range(1000), len(slices) + len(extra))]
    for ds, name in zip(slices + extra, names):
        ds.save_as(folder / name, enforce_file_format=True)
    return slices


def write_two_segment_seg(slices: list[Dataset], labels: np.ndarray, path: Path) -> None:
    """A BINARY SEG with segments 1 "Liver" (liver and tumour) and 2 "Tumor", its frames stored in
    a shuffled source order so that only plane positions place them."""
    order = random.Random(1).sample(range(len(slices)), len(slices))
    planes = np.stack([labels >= 1, labels == 2], axis=-1).astype(np.uint8)[order]
    algorithm = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for i, name in enumerate(["Liver", "Tumor"])]
    seg = hd.seg.Segmentation(
        source_images=[slices[i] for i in order], pixel_array=planes,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=10, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(path)


@pytest.fixture()
def series(tmp_path):
    folder = tmp_path / "ct"
    slices = write_series(folder)
    seg_path = tmp_path / "labels.dcm"
    write_two_segment_seg(slices, truth_labels(), seg_path)
    return folder, slices, seg_path


def expected_geometry():
    return (PIXEL[1], PIXEL[0], STEP), ORIGIN


def test_series_reads_as_the_array_and_geometry(series):
    folder, slices, _ = series
    read = dicom.read_series(folder)
    assert np.array_equal(read.volume.array, ct_array().astype(np.float32))  # HU: intercept applied
    spacing, origin = expected_geometry()
    assert np.allclose(read.geometry.spacing, spacing) and np.allclose(read.geometry.origin, origin)
    assert np.allclose(read.geometry.direction, np.eye(3).ravel())
    assert [ds.SOPInstanceUID for ds in read.datasets] == [ds.SOPInstanceUID for ds in slices]
    headers = dicom.read_series(folder, pixels=False)
    assert headers.volume is None and headers.shape == SHAPE and headers.geometry.same_grid(read.geometry)
    assert io.read_geometry(folder) == (read.geometry, SHAPE)  # what back_on_grid uses


def test_file_order_does_not_matter(tmp_path):
    write_series(tmp_path / "a", seed=1), write_series(tmp_path / "b", seed=2)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) != sorted(p.name for p in (tmp_path / "b").iterdir())
    va, vb = dicom.read_series(tmp_path / "a").volume, dicom.read_series(tmp_path / "b").volume
    assert np.array_equal(va.array, vb.array) and va.geometry.same_grid(vb.geometry)
    assert np.array_equal(va.array, ct_array())


@pytest.mark.parametrize("stray", ["orientation", "spacing"])
def test_stray_slice_is_dropped_with_a_warning(tmp_path, stray):
    write_series(tmp_path / "ct", stray=stray)
    with pytest.warns(UserWarning, match=r"dropped 1 of 9 slices"):
        read = dicom.read_series(tmp_path / "ct")
    assert read.volume.array.shape == SHAPE and np.array_equal(read.volume.array, ct_array())


def test_folder_with_two_series_is_refused(tmp_path):
    write_series(tmp_path / "ct")
    write_series(tmp_path / "other", seed=5)
    for path in (tmp_path / "other").iterdir():
        path.rename(tmp_path / "ct" / f"x{path.name}")
    with pytest.raises(RefineError, match="holds 2 DICOM series"):
        dicom.read_series(tmp_path / "ct")
    with pytest.raises(RefineError, match=r"no DICOM image slices.*holds folders \(ct, other\)"):
        dicom.read_series(tmp_path)  # the parent of series folders


@pytest.mark.parametrize("segment, value", [("tumor", 2), ("TUMOR", 2), (2, 2), ("2", 2), ("Liver", 1)])
def test_seg_segment_by_name_or_number_lands_on_its_voxels(series, segment, value):
    folder, _, seg_path = series
    ct = dicom.read_series(folder).volume
    mask = dicom.read_seg_on(seg_path, ct, segment)
    expected = truth_labels() == 2 if value == 2 else truth_labels() >= 1
    assert expected.sum() > 20 and np.array_equal(mask.array.astype(bool), expected)
    assert mask.geometry.same_grid(ct.geometry)


def test_seg_on_another_grid_and_through_load_pair(series):
    folder, _, seg_path = series
    ct = dicom.read_series(folder).volume
    flipped = io.reoriented(ct, "RAS")  # same voxels, axes flipped: match_geometry permutes/flips back
    on_flipped = dicom.read_seg_on(seg_path, flipped, "tumor")
    assert np.array_equal(io.reoriented(on_flipped, "LPS").array.astype(bool), truth_labels() == 2)
    image, mask = api.load_pair(folder, seg_path, segment="Tumor")
    assert np.array_equal(image.array, ct_array()) and np.array_equal(mask.array.astype(bool), truth_labels() == 2)


def test_unknown_segment_lists_the_names(series):
    _, _, seg_path = series
    with pytest.raises(RefineError, match=r"no segment 'kidney'.*1 'Liver', 2 'Tumor'"):
        dicom.read_seg(seg_path, "kidney")


def test_without_segment_the_one_named_as_a_tumour_is_taken_saying_so(series, tmp_path):
    """A Liver + Tumor file: the tumour, with a warning naming it; with no single tumour name, the
    choice is refused with the list."""
    folder, slices, seg_path = series
    with pytest.warns(UserWarning, match=r"holds 2 segments \(1 'Liver', 2 'Tumor'\): using 2 'Tumor', the one named as "
                                         r"a tumour \(--segment picks another\)"):
        assert np.array_equal(dicom.read_seg(seg_path).array, dicom.read_seg(seg_path, "Tumor").array)
    for names in (["Liver", "Spleen"], ["Tumor 1", "lesion 2"]):
        assert dicom.choose_segment(dict(enumerate(names, start=1)), "2", "x.dcm") == 2
        with pytest.raises(RefineError, match=r"x\.dcm holds 2 segments .*choose one with --segment"):
            dicom.choose_segment(dict(enumerate(names, start=1)), None, "x.dcm")


def test_write_seg_references_the_series_and_reads_back(series, tmp_path):
    folder, slices, _ = series
    headers = dicom.read_series(folder, pixels=False)
    labels = dicom.read_series(folder).volume.with_array(truth_labels())
    out = dicom.write_seg(labels, headers, tmp_path / "out.dcm")
    seg = hd.seg.segread(str(out))
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [slices[0].SeriesInstanceUID]
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert dicom.segment_names(seg) == {1: "Liver", 2: "Tumor"}
    assert np.array_equal(dicom.read_seg_on(out, labels, "tumor").array.astype(bool), truth_labels() == 2)
    with pytest.raises(RefineError, match="already exists"):
        dicom.write_seg(labels, headers, out)
    assert not list(tmp_path.glob(".out.dcm*"))  # no temporary file left behind


def test_refine_out_dcm_round_trip(series, tmp_path, tiny_weights):
    folder, slices, seg_path = series
    common = ["--image", str(folder), "--mask", str(seg_path), "--segment", "tumor", "--weights", str(tiny_weights),
              "--device", "cpu", "--min-kept", "0"]
    assert main(["refine", *common, "--out", str(tmp_path / "refined.dcm")]) == 0
    assert main(["refine", *common, "--out", str(tmp_path / "refined.nii.gz")]) == 0
    seg = hd.seg.segread(str(tmp_path / "refined.dcm"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in slices}
    nifti = io.read_volume(tmp_path / "refined.nii.gz")
    from_seg = dicom.read_seg_on(tmp_path / "refined.dcm", nifti, "Tumor")
    assert np.array_equal(from_seg.array.astype(bool), nifti.array > 0)
    # evaluate reads SEG truth and SEG prediction by segment name
    assert main(["evaluate", "--truth", str(seg_path), "--pred", str(tmp_path / "refined.dcm"), "--segment", "Tumor",
                 "--json"]) == 0


def test_dcm_output_needs_a_dicom_series(tmp_path, tiny_weights, capsys):
    image = tmp_path / "ct.nii.gz"
    io.write_volume(Volume(ct_array().astype(np.float32)), image)
    io.write_volume(Volume(truth_labels()), tmp_path / "mask.nii.gz")
    assert main(["refine", "--image", str(image), "--mask", str(tmp_path / "mask.nii.gz"), "--out",
                 str(tmp_path / "o.dcm"), "--weights", str(tiny_weights), "--device", "cpu"]) == 2
    assert "must be a DICOM series (its folder or one of its files)" in capsys.readouterr().err
    assert not (tmp_path / "o.dcm").exists()


def write_seg_nrrd(path: Path, layers: np.ndarray, names_layers_values, origin=(5.0, -3.0, 10.0),
                   spacing=(0.8, 0.7, 2.5)) -> None:
    """A multi-layer .seg.nrrd as Slicer writes it: 4D, kinds 'list domain domain domain', one
    layer per component, segments described by Segment{i}_* header fields."""
    header = ["NRRD0004", "type: unsigned char", "dimension: 4", "space: left-posterior-superior",
              f"sizes: {layers.shape[-1]} {layers.shape[2]} {layers.shape[1]} {layers.shape[0]}",
              f"space directions: none ({spacing[0]},0,0) (0,{spacing[1]},0) (0,0,{spacing[2]})",
              "kinds: list domain domain domain", "encoding: raw", "endian: little",
              f"space origin: ({origin[0]},{origin[1]},{origin[2]})"]
    for i, (name, layer, value) in enumerate(names_layers_values):
        header += [f"Segment{i}_ID:=Segment_{i + 1}", f"Segment{i}_Name:={name}", f"Segment{i}_Layer:={layer}",
                   f"Segment{i}_LabelValue:={value}"]
    path.write_bytes(("\n".join(header) + "\n\n").encode() + np.ascontiguousarray(layers, dtype=np.uint8).tobytes())


def test_multilayer_seg_nrrd_segment_by_name(tmp_path):
    labels = truth_labels()
    layers = np.stack([(labels >= 1) * 1, (labels == 2) * 3], axis=-1)  # overlapping: tumour inside liver
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(path, layers, [("Liver", 0, 1), ("Tumour", 1, 3)])
    with pytest.raises(RefineError, match="components per voxel"):
        io.read_image(path)  # plain readers still refuse a multi-layer file ...
    tumour = io.from_sitk(segments.read_mask(path, "tumour"))  # ... that a segment name opens
    assert np.array_equal(tumour.array.astype(bool), labels == 2)
    assert np.allclose(tumour.geometry.origin, (5.0, -3.0, 10.0)) and np.allclose(tumour.geometry.spacing, (0.8, 0.7, 2.5))
    assert np.array_equal(io.from_sitk(segments.read_mask(path, 1)).array.astype(bool), labels >= 1)
    with pytest.raises(RefineError, match=r"no segment 'kidney'.*1 'Liver', 2 'Tumour'"):
        segments.read_mask(path, "kidney")
    with pytest.warns(UserWarning, match=r"using 2 'Tumour', the one named as a tumour"):
        assert np.array_equal(io.from_sitk(segments.read_mask(path)).array.astype(bool), labels == 2)
    plain = tmp_path / "plain.nii.gz"
    io.write_volume(Volume(truth_labels()), plain)
    with pytest.raises(RefineError, match="plain mask file"):
        segments.read_mask(plain, "tumour")


def test_evaluate_with_a_cropped_seg_nrrd_truth_counts_predictions_outside_the_crop(tmp_path):
    labels = truth_labels()
    pred = (labels == 2).astype(np.uint8)
    pred[0, 0:3, 0:3] = 1  # a false positive outside the truth's crop
    geometry = Geometry((0.8, 0.7, 2.5), (5.0, -3.0, 10.0))
    io.write_volume(Volume(pred, geometry), tmp_path / "pred.nii.gz")
    crop = (slice(2, 7), slice(8, 22), slice(10, 25))  # the tumour only, as Slicer's cropped save
    cropped = np.stack([(labels >= 1) * 1, (labels == 2) * 1], axis=-1)[crop]
    origin = (5.0 + 10 * 0.8, -3.0 + 8 * 0.7, 10.0 + 2 * 2.5)
    write_seg_nrrd(tmp_path / "truth.seg.nrrd", cropped, [("Liver", 0, 1), ("Tumor", 1, 1)], origin=origin)
    with_fp = api.evaluate_files(tmp_path / "truth.seg.nrrd", tmp_path / "pred.nii.gz", segment="tumor")
    io.write_volume(Volume((labels == 2).astype(np.uint8), geometry), tmp_path / "exact.nii.gz")
    exact = api.evaluate_files(tmp_path / "truth.seg.nrrd", tmp_path / "exact.nii.gz", segment="tumor")
    assert exact["dice"] == pytest.approx(1.0) and with_fp["dice"] < 1.0


def test_dicomseg_data_spec(tmp_path):
    root = tmp_path / "cases"
    slices = write_series(root / "case1")
    write_two_segment_seg(slices, truth_labels(), root / "case1.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cases = list(datasets.find_cases(f"dicomseg:{root}"))
    assert [c.name for c in cases] == ["case1"]
    assert cases[0].image.array.dtype == np.float32 and cases[0].label.array.dtype == np.uint8
    assert np.array_equal(cases[0].label.array, truth_labels()) and np.array_equal(cases[0].image.array, ct_array())
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefineError, match="No DICOM"):
        datasets.find_cases(f"dicomseg:{tmp_path / 'empty'}")


DATA = Path(__file__).resolve().parent / "data"  # the GDCM-transcoded series: see make_compressed_series.py
COMPRESSED = DATA / "ct_jpeg_lossless"


def compressed_copy(tmp_path: Path, syntax) -> Path:
    """The synthetic series with its pixel data compressed in ``syntax`` (pydicom's own encoders)."""
    folder = tmp_path / "ct"
    write_series(folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    return folder


@pytest.mark.parametrize("syntax", ["JPEGLosslessSV1", "JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_compressed_series_read_as_the_uncompressed_one(tmp_path, syntax):
    """The transfer syntaxes hospital PACS exports use; JPEG Lossless (the commonest) and JPEG 2000
    have no encoder here, so their series are committed files transcoded by GDCM."""
    uid = getattr(pydicom.uid, syntax)
    committed = {"JPEGLosslessSV1": COMPRESSED, "JPEG2000Lossless": DATA / "ct_jpeg2000"}
    folder = committed[syntax] if syntax in committed else compressed_copy(tmp_path, uid)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in folder.iterdir()} == {uid}
    read = dicom.read_series(folder)
    assert np.array_equal(read.volume.array, ct_array().astype(np.float32))
    spacing, origin = expected_geometry()
    assert np.allclose(read.geometry.spacing, spacing) and np.allclose(read.geometry.origin, origin)


def test_series_without_a_decoder_is_refused_with_what_to_do(monkeypatch, tmp_path, capsys):
    """A broken install (the JPEG decoders missing) names the syntax and the fix, not pydicom's
    traceback about plugins; nothing is written."""
    import pydicom.pixels

    real = pydicom.pixels.get_decoder

    class Missing:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder",
                        lambda uid: Missing() if uid == pydicom.uid.JPEGLosslessSV1 else real(uid))
    with pytest.raises(RefineError, match=r"'JPEG Lossless, Non-Hierarchical.*cannot decode.*pip install python-gdcm"):
        dicom.read_series(COMPRESSED)
    io.write_volume(Volume(truth_labels()), tmp_path / "mask.nii.gz")
    assert main(["refine", "--image", str(COMPRESSED), "--mask", str(tmp_path / "mask.nii.gz"),
                 "--out", str(tmp_path / "out.nii.gz")]) == 2
    assert "cannot decode" in capsys.readouterr().err and not (tmp_path / "out.nii.gz").exists()


def write_multiframe(slices: list[Dataset], folder: Path, series_uid: str | None = None) -> Dataset:
    """The series as one enhanced (multi-frame) CT file, as newer scanners export it: highdicom's
    Legacy Converted Enhanced CT, whose frames run opposite to the slice normal here."""
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom: FrameType cannot be derived from these headers
        image = hd.legacy.LegacyConvertedEnhancedCTImage(slices, series_instance_uid=series_uid or hd.UID(), series_number=2,
                                                         sop_instance_uid=hd.UID(), instance_number=1)
    image.save_as(folder / "ct.dcm")
    return image


def test_multiframe_ct_reads_as_the_series_of_files(series, tmp_path):
    folder, slices, _ = series
    image = write_multiframe(slices, tmp_path / "enhanced")
    assert int(image.NumberOfFrames) == SHAPE[0]
    read, files = dicom.read_series(tmp_path / "enhanced"), dicom.read_series(folder)
    assert np.array_equal(read.volume.array, files.volume.array) and read.geometry.same_grid(files.geometry)
    assert dicom.frame_slices(read) == list(range(SHAPE[0]))[::-1] and dicom.frame_slices(files) is None
    headers = dicom.read_series(tmp_path / "enhanced", pixels=False)
    assert headers.volume is None and headers.shape == SHAPE and headers.geometry.same_grid(files.geometry)


def test_refine_multiframe_ct_out_dcm_round_trip(series, tmp_path, tiny_weights):
    """A SEG of a multi-frame source lists its frames in the source's order, not the volume's: the
    written file is read back (write_seg verifies it) and matches the NIfTI output."""
    _, slices, seg_path = series
    image = write_multiframe(slices, tmp_path / "enhanced")
    common = ["--image", str(tmp_path / "enhanced"), "--mask", str(seg_path), "--segment", "tumor",
              "--weights", str(tiny_weights), "--device", "cpu", "--min-kept", "0"]
    assert main(["refine", *common, "--out", str(tmp_path / "refined.dcm")]) == 0
    assert main(["refine", *common, "--out", str(tmp_path / "refined.nii.gz")]) == 0
    seg = hd.seg.segread(str(tmp_path / "refined.dcm"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    nifti = io.read_volume(tmp_path / "refined.nii.gz")
    assert nifti.array.any()
    assert np.array_equal(dicom.read_seg_on(tmp_path / "refined.dcm", nifti, "Tumor").array.astype(bool), nifti.array > 0)


def test_multiframe_ct_beside_other_images(series, tmp_path):
    """Beside the files of another series, it is a series to choose; in the same series as other
    image files, it is refused (which would be the volume is unclear)."""
    folder, slices, _ = series
    image = write_multiframe(slices, tmp_path / "enhanced")
    (tmp_path / "enhanced" / "ct.dcm").rename(folder / "enhanced.dcm")
    with pytest.raises(RefineError, match="holds 2 DICOM series"):
        dicom.read_series(folder)
    assert dicom.read_series(folder, series_uid=str(image.SeriesInstanceUID)).volume.array.shape == SHAPE
    write_multiframe(slices, tmp_path / "same", series_uid=slices[0].SeriesInstanceUID)
    (folder / "enhanced.dcm").unlink()
    (tmp_path / "same" / "ct.dcm").rename(folder / "enhanced.dcm")
    with pytest.raises(RefineError, match=r"1 multi-frame image\(s\) and 8 other image file\(s\).*folder of its own"):
        dicom.read_series(folder)


def test_one_file_stands_for_its_series(tmp_path):
    """A slice file (no suffix, as most DICOM files, or .dcm) given as the CT reads its whole series."""
    for folder in (COMPRESSED, DATA / "ct_jpeg2000"):
        from_file = io.read_volume(folder / "IM0041")
        from_folder = io.read_volume(folder)
        assert from_file.array.shape[0] > 1 and np.array_equal(from_file.array, from_folder.array)
        assert from_file.geometry == from_folder.geometry
        assert io.read_geometry(folder / "IM0041") == io.read_geometry(folder)
    assert io.is_dicom_file(COMPRESSED / "IM0041") and io.is_dicom_file(Path("x.DCM"))
    assert not io.is_dicom_file(tmp_path / "mask.nii.gz")
    with pytest.raises(RefineError, match=r"missing\.dcm: not found; give a DICOM CT series folder or one of its files"):
        io.read_image(tmp_path / "missing.dcm")


def test_a_file_picks_its_series_in_a_study_folder(tmp_path, tiny_weights, capsys):
    """A study exported into one folder (two phases, say): the refusal names a file of each series,
    and that file as the CT reads its series and writes a SEG that references it."""
    study = tmp_path / "study"
    first = write_series(study)
    second = write_series(tmp_path / "other", seed=5)
    for path in (tmp_path / "other").iterdir():
        path.rename(study / f"x{path.name}")
    with pytest.raises(RefineError, match=r"holds 2 DICOM series: .*e\.g\. .*study/IM.*e\.g\. .*study/xIM.*Give one "
                                          r"file of the series you want as the CT"):
        dicom.read_series(study)
    pick = next(p for p in sorted(study.iterdir()) if p.name.startswith("x"))
    read = dicom.read_series(pick)
    assert {ds.SeriesInstanceUID for ds in read.datasets} == {second[0].SeriesInstanceUID}
    assert read.shape == SHAPE and read.folder == study
    seg_path = tmp_path / "labels.dcm"
    write_two_segment_seg(first, truth_labels(), seg_path)
    one_of_first = next(p for p in sorted(study.iterdir()) if not p.name.startswith("x"))
    assert main(["refine", "--image", str(one_of_first), "--mask", str(seg_path), "--segment", "Tumor",
                 "--weights", str(tiny_weights), "--device", "cpu", "--out", str(tmp_path / "refined.dcm")]) == 0
    seg = hd.seg.segread(str(tmp_path / "refined.dcm"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first[0].SeriesInstanceUID
    assert seg.SeriesInstanceUID not in {first[0].SeriesInstanceUID, second[0].SeriesInstanceUID}


def test_a_segmentation_given_as_the_ct_says_so(series, tmp_path):
    _, _, seg_path = series
    with pytest.raises(RefineError, match=r"labels\.dcm is a DICOM SEG, not a CT image: give it as the mask"):
        io.read_image(seg_path)
    (tmp_path / "notes.dcm").write_text("not DICOM")
    with pytest.raises(RefineError, match=r"notes\.dcm: not a readable DICOM file"):
        io.read_image(tmp_path / "notes.dcm")


def test_fractional_seg_is_a_probability_map_thresholded_at_half(series, tmp_path):
    """AI tools export FRACTIONAL SEGs; the segment is where the map reaches 0.5 (the liver's 0.2
    is not tumour), as for probability maps in any other file."""
    folder, slices, _ = series
    labels = truth_labels()
    probability = np.where(labels == 2, 0.9, np.where(labels == 1, 0.2, 0.0)).astype(np.float32)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Tumor probability", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="x", version="1", family=codes.DCM.ArtificialIntelligence))
    seg = hd.seg.Segmentation(
        source_images=slices, pixel_array=probability, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="x", manufacturer_model_name="x", software_versions="1", device_serial_number="0")
    seg.save_as(tmp_path / "probability.dcm")
    ct = dicom.read_series(folder).volume
    read = dicom.read_seg_on(tmp_path / "probability.dcm", ct)
    assert np.array_equal(read.array.astype(bool), labels == 2)


def test_a_mask_that_is_another_dicom_object_says_what_it_is(series, tmp_path):
    """An RT structure set (hospitals' contours) or a CT slice where a DICOM SEG is needed: named, with what to do."""
    folder, slices, _ = series
    rtstruct = slice_dataset(ct_array()[0], (0, 0, 0), (1, 0, 0, 0, 1, 0), {"study": "1.2", "series": "1.3", "frame": "1.4"}, 1)
    rtstruct.Modality = "RTSTRUCT"
    del rtstruct.PixelData
    rtstruct.save_as(tmp_path / "contours.dcm", enforce_file_format=True)
    with pytest.raises(RefineError, match=r"contours.dcm: an RT structure set .*filled on the CT's slices"):
        dicom.read_seg(tmp_path / "contours.dcm")
    ct_slice = next(folder.iterdir())
    (tmp_path / "slice.dcm").write_bytes(ct_slice.read_bytes())
    with pytest.raises(RefineError, match=r"slice.dcm: a CT image, not a DICOM SEG: give the CT as --image"):
        dicom.read_seg(tmp_path / "slice.dcm")
    (tmp_path / "notes.dcm").write_text("not DICOM")
    with pytest.raises(RefineError, match=r"notes.dcm: not a readable DICOM SEG"):
        dicom.read_seg(tmp_path / "notes.dcm")


def test_a_one_component_patient_name_writes_a_seg_without_a_warning(tmp_path):
    """Anonymised series often name the patient by one ID; the SEG copies it without pydicom's
    advice on how names should be written (a warning the user can do nothing about)."""
    folder = tmp_path / "ct"
    write_series(folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName = "ANON1720"
        ds.save_as(path)
    read = dicom.read_series(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dicom.write_seg(Volume(truth_labels(), read.geometry), read, tmp_path / "out.dcm")
    assert str(pydicom.dcmread(tmp_path / "out.dcm").PatientName) == "ANON1720"


def test_a_copied_slice_file_is_read_once_not_a_cut_in_the_volume(tmp_path):
    """A slice copied under another name (the same SOPInstanceUID) used to split the run of
    positions, so the volume was cut short; it is read once, with a warning."""
    folder = tmp_path / "ct"
    write_series(folder)
    (folder / "IM_copy").write_bytes(sorted(folder.iterdir())[3].read_bytes())
    with pytest.warns(UserWarning, match=r"1 file\(s\) are copies of another slice"):
        read = dicom.read_series(folder)
    assert np.array_equal(read.volume.array, ct_array())


def test_two_acquisitions_in_one_series_are_refused_not_mixed(tmp_path):
    """Two phases stored in one series (the same positions, AcquisitionNumber 1 and 2) would be
    mixed or cut to a few slices; they are refused, naming the acquisitions and files."""
    folder = tmp_path / "ct"
    write_series(folder)
    for i, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = 1
        ds.save_as(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AcquisitionNumber = 2
        ds.save_as(folder / f"late{i}")
    with pytest.raises(RefineError, match=r"holds 2 acquisitions \(AcquisitionNumber 1, 2\) at the same slice positions, "
                                          r"e\.g\. .* \(8 positions\): put the files of one acquisition"):
        dicom.read_series(folder)
    for path in folder.glob("late*"):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = 1
        ds.save_as(path)  # a second, different image at each position of one acquisition
    with pytest.raises(RefineError, match="two different images at the same slice position"):
        dicom.read_series(folder)


def test_a_missing_slice_is_refused_not_cropped_away(tmp_path):
    """A slice missing in the middle left two runs; the longer one was kept and the CT silently
    cropped. It is refused, saying where the gap is."""
    folder = tmp_path / "ct"
    slices = write_series(folder)
    gone = str(slices[3].SOPInstanceUID)
    for path in folder.iterdir():
        if str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == gone:
            path.unlink()
    first = ORIGIN[2] + 2 * STEP
    with pytest.raises(RefineError, match=rf"2\.5 mm apart, but 5 mm between the slices at {first:.1f} and "
                                          rf"{first + 2 * STEP:.1f} mm .*a slice missing"):
        dicom.read_series(folder)


def test_a_ct_beside_its_localizers_is_read_other_mixes_are_refused(tmp_path):
    """A study exported into one folder: the CT (here 12 slices) and a 2-image localizer series.
    The CT is read with a warning naming both; a second volume-sized series is still refused."""
    folder = tmp_path / "study"
    ct = write_series(tmp_path / "thin", seed=1)  # 8 slices: add 4 more along the same grid
    files = sorted((tmp_path / "thin").iterdir())
    uids = {"study": ct[0].StudyInstanceUID, "series": ct[0].SeriesInstanceUID, "frame": ct[0].FrameOfReferenceUID}
    folder.mkdir()
    for path in files:
        path.rename(folder / path.name)
    for k in range(SHAPE[0], SHAPE[0] + 4):
        slice_dataset(ct_array()[-1], (ORIGIN[0], ORIGIN[1], ORIGIN[2] + STEP * k), (1, 0, 0, 0, 1, 0), uids,
                      k + 1).save_as(folder / f"more{k}", enforce_file_format=True)
    scout = {"study": uids["study"], "series": generate_uid(), "frame": uids["frame"]}
    for k in range(2):
        slice_dataset(ct_array()[0], (ORIGIN[0], ORIGIN[1] + k, ORIGIN[2]), (1, 0, 0, 0, 0, -1), scout,
                      k + 1).save_as(folder / f"scout{k}", enforce_file_format=True)
    with pytest.warns(UserWarning, match=r"holds 2 DICOM series.*Reading the one volume.*localizers"):
        read = dicom.read_series(folder)
    assert read.volume.array.shape == (SHAPE[0] + 4, *SHAPE[1:])
    write_series(tmp_path / "phase2", seed=3)
    for path in (tmp_path / "phase2").iterdir():
        path.rename(folder / f"p2{path.name}")
    with pytest.raises(RefineError, match="holds 3 DICOM series"):
        dicom.read_series(folder)
