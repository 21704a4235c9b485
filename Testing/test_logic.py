"""The Slicer module's logic on a headless MRML scene (PyPI ``slicer-core``).

The test bodies live in ``LiverTumorRefineLib.slicer_testing`` and are the ones the in-Slicer
self-test (``LiverTumorRefineTest``) runs. Here the logic uses the session's ``trained_model``
(a BRNet trained on generated lesions, see conftest); the shipped default model is tested by
``test_default_model_refined_beats_coarse``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")

from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.scene import nodes as scene_nodes  # noqa: E402
import slicer_testing as st  # noqa: E402
from LiverTumorRefineLib import pipeline  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402
from LiverTumorRefineLib.training.case import RefineCase  # noqa: E402

LIB_DIR = Path(__file__).resolve().parents[1] / "LiverTumorRefine"


@pytest.fixture
def app():
    return st.make_app()


# The Refiner's per-lesion gate (config.MIN_KEPT) keeps the coarse mask of these small synthetic
# lesions, whose truth is the coarse shrunk by up to 3 mm (half the volume): min_kept 0 lets the
# test model's refinement through, and shows that refiner options reach the worker.
REFINER_OPTIONS = {"min_kept": 0.0}


@pytest.fixture(scope="module")
def logic(trained_model):
    return ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions=REFINER_OPTIONS)


@pytest.fixture(scope="module")
def case():
    return st.synthetic_case(0)


def test_refine_adds_outlined_segment_keeps_inputs_and_fills_metrics(app, logic, case):
    sc = st.build_scene_case(app.scene, case)
    result = st.check_refine(app.scene, logic, sc)
    st.check_refined_beats_coarse(result)
    assert result.device == "cpu" and result.notes == []
    assert np.array_equal(scene_nodes.export_segment_mask(sc.segmentationNode, sc.coarseId, sc.volumeNode), case.coarse)


def test_truth_in_its_own_segmentation_node(app, logic, case):
    sc = st.build_scene_case(app.scene, case, separate_truth=True)
    st.check_refine(app.scene, logic, sc)


def test_without_truth_no_table(app, logic, case):
    sc = st.build_scene_case(app.scene, case)
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    assert result.tableNode is None and result.metrics is None
    assert app.scene.GetFirstNodeByName(ltr.METRICS_TABLE_NAME) is None
    segment = sc.segmentationNode.GetSegmentation().GetSegment(result.refinedSegmentId)
    assert segment.GetName() == "Tumour refined"


def test_rerun_replaces_refined_segment(app, logic, case):
    st.check_rerun_replaces(app.scene, logic, st.build_scene_case(app.scene, case))


def test_cancel_leaves_scene_unchanged(app, logic, case):
    st.check_cancel_leaves_scene_unchanged(app.scene, logic, st.build_scene_case(app.scene, case))


def test_worker_process_matches_in_process_call(app, logic, case):
    st.check_worker_job(app.scene, logic, st.build_scene_case(app.scene, case))


def test_inputs_removed_while_refining(app, logic, case):
    sc = st.build_scene_case(app.scene, case)
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    sc.segmentationNode.GetSegmentation().RemoveSegment(sc.coarseId)
    assert job.wait(120)
    with pytest.raises(RefineError, match="deleted while refining"):
        job.finish()
    assert sc.segmentationNode.GetSegmentation().GetNumberOfSegments() == 2  # liver and truth, nothing added
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.truthId, device="cpu")
    app.scene.RemoveNode(sc.segmentationNode)
    assert job.wait(120)
    with pytest.raises(RefineError, match="segmentation was closed"):
        job.finish()


def test_errors_name_the_problem_and_leave_scene(app, logic, case):
    st.check_errors(app.scene, logic, st.build_scene_case(app.scene, case))


def test_segmentation_on_other_grid_than_ct(app, logic):
    result = st.check_geometry_differs(app.scene, logic, st.synthetic_case(1))
    st.check_refined_beats_coarse(result)


def test_self_test_body(app, logic, case):
    """What LiverTumorRefineTest runs in Slicer, here with the test model."""
    summary = st.run_self_test(app.scene, logic, case=case, appLogic=app.app)
    assert summary["dice"]["refined"] > summary["dice"]["coarse"]


def test_export_creates_no_nodes(app, case):
    sc = st.build_scene_case(app.scene, case)
    before = st.scene_snapshot(app.scene)
    mask = scene_nodes.export_segment_mask(sc.segmentationNode, sc.coarseId, sc.volumeNode)
    assert np.array_equal(mask, case.coarse)
    st.assert_same_scene(before, st.scene_snapshot(app.scene), "export")


class _OomRefiner:
    """Stands in for a CUDA refiner: raises the OOM torch raises, or reports the engine's own
    part-way switch to the CPU (``stats['device'] == 'cpu'``)."""

    def __init__(self, cpu_refiner, mode):
        self.device, self.cpu, self.mode = "cuda", cpu_refiner, mode

    def refine(self, image, mask, spacing, progress=None, passes=1, later_tta=None, first_tta=None):
        import torch

        if self.mode == "raise":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result = self.cpu.refine(image, mask, spacing, progress, passes=passes, later_tta=later_tta, first_tta=first_tta)
        result.stats["device"] = "cpu"
        return result


@pytest.mark.parametrize("mode, note", [("raise", "ran on the CPU instead"), ("part-way", "finished on the CPU")])
def test_gpu_out_of_memory_falls_back_to_cpu(app, logic, case, mode, note, monkeypatch):
    real = pipeline.make_refiner

    def make_refiner(model, device, options):
        cpu = real(model, "cpu", options)
        return cpu if device == "cpu" else _OomRefiner(cpu, mode)

    monkeypatch.setattr(pipeline, "make_refiner", make_refiner)
    sc = st.build_scene_case(app.scene, case)
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId,
                          device="auto")
    assert result.device == "cpu"
    assert len(result.notes) == 1 and "GPU ran out of memory" in result.notes[0] and note in result.notes[0]
    assert sc.segmentationNode.GetSegmentation().GetSegment(result.refinedSegmentId) is not None


def test_missing_torch_gives_install_hint(app, case, monkeypatch):
    monkeypatch.delitem(sys.modules, "LiverTumorRefineLib.refine.refiner", raising=False)  # refine runs in this process
    monkeypatch.setitem(sys.modules, "torch", None)
    sc = st.build_scene_case(app.scene, case)
    before = st.scene_snapshot(app.scene)
    with pytest.raises(RefineError, match="PyTorch is not installed.*PyTorch Utils"):
        ltr.LiverTumorRefineLogic().refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    st.assert_same_scene(before, st.scene_snapshot(app.scene), "torch missing")


def test_logic_imports_without_slicer():
    """The module imports the logic at startup; without Slicer it must still import, and say
    what is missing only when used."""
    code = (
        "import sys; sys.modules['slicer'] = None\n"
        "from LiverTumorRefineLib.scene.logic import LiverTumorRefineLogic\n"
        "from LiverTumorRefineLib.errors import RefineError\n"
        "try:\n"
        "    LiverTumorRefineLogic().refine(None, None, 'x')\n"
        "except RefineError as e:\n"
        "    assert 'slicer-core' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert 'torch' not in sys.modules, 'logic imported torch eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=LIB_DIR, timeout=120)


def test_default_model_refined_beats_coarse(app):
    """The shipped model (Resources/Models) on the phantom: refined Dice beats coarse.

    Fails with a RefineError naming the missing file until the trained weights are shipped.
    """
    logic = ltr.LiverTumorRefineLogic()  # weights=None: the default model
    case = st.default_model_case(0)
    result = st.check_refine(app.scene, logic, st.build_scene_case(app.scene, case))
    st.check_refined_beats_coarse(result)


def test_sagittal_ct_is_refined_in_axial_planes(app, logic, case):
    """The same CT and segments stored sagittally (array axes x, z, y) give the same refined voxels
    as the axial original: the logic refines the axial view and puts the result back."""
    axial = st.build_scene_case(app.scene, case)
    expected = scene_nodes.export_segment_mask(axial.segmentationNode,
                                               logic.refine(axial.volumeNode, axial.segmentationNode, axial.coarseId,
                                                            device="cpu").refinedSegmentId, axial.volumeNode)

    def sagittal(array):  # (z, y, x) -> (x, z, y): K runs along x, J along z, I along y
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    spacing = (case.spacing_zyx[2], case.spacing_zyx[0], case.spacing_zyx[1])  # (K, J, I)
    directions = ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (-1.0, 0.0, 0.0))  # I, J, K in RAS (LPS-aligned y, z, x)
    matrix = st.ijk_to_ras(spacing, (40.0, 30.0, -55.0), directions)
    volume = st.add_ct(app.scene, sagittal(case.image), matrix, "sagittal CT")
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sagittal segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    coarseId = st.add_segment(segmentation, sagittal(case.coarse), "Tumour", (0.2, 0.4, 1.0), matrix)
    result = logic.refine(volume, segmentation, coarseId, device="cpu")
    refined = scene_nodes.export_segment_mask(segmentation, result.refinedSegmentId, volume)
    assert (expected != case.coarse).any()
    assert np.array_equal(refined.transpose(1, 2, 0), expected)


def test_ct_not_in_hounsfield_units_gives_a_note(app, logic, case):
    """Raw stored values (rescale intercept -1024 missing): the refinement still runs, and the
    user is told why it may be poor."""
    raw = RefineCase(case.name, case.image + 1024, case.truth, case.coarse, case.spacing_zyx, liver=case.liver)
    sc = st.build_scene_case(app.scene, raw)
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    assert any("does not look like Hounsfield units" in note for note in result.notes)


def test_coarse_segment_from_seed_points_then_refine(app, logic, case):
    st.check_seeded_coarse(app.scene, logic, st.build_scene_case(app.scene, case))


def test_seed_coarse_segment_goes_into_the_chosen_segmentation_without_reference(app, logic, case):
    st.check_seeded_coarse(app.scene, logic, st.build_scene_case(app.scene, case, separate_truth=True))


def test_seed_point_errors_leave_the_scene_unchanged(app, logic, case):
    sc = st.build_scene_case(app.scene, case)
    points = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    snapshot = st.scene_snapshot(app.scene)

    def seeded(source="seeds"):
        return lambda: logic.refine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource=source,
                                    seedsNode=points)

    st.expect_error(seeded(), "No seed points")
    points.AddControlPoint([0.0, 0.0, 0.0])
    points.UnsetNthControlPointPosition(0)  # a point whose position is not set yet is no seed
    st.expect_error(seeded(), "No seed points")
    points.AddControlPoint([900.0, 900.0, 900.0])
    points.SetNthControlPointLabel(1, "far away")
    st.expect_error(seeded(), "'far away' lies outside the CT")
    st.expect_error(seeded("drawing"), "Unknown coarse source")
    st.assert_same_scene(snapshot, st.scene_snapshot(app.scene), "after failed coarse segments")


def test_automatic_coarse_segment_with_the_shipped_network(app, trained_model):
    """The shipped coarse network on a validation phantom: a new segmentation node with one new
    coarse tumour segment that overlaps the truth, refined in the same job; a CT without tumour
    is refused, scene unchanged."""
    from LiverTumorRefineLib.training.phantom import make_phantom

    phantom = make_phantom(50000)  # validation range of the coarse network: neither training nor evaluation
    matrix = st.ijk_to_ras(phantom.image.spacing_zyx, (40.0, 30.0, -55.0))
    volume = st.add_ct(app.scene, phantom.image.array, matrix, "phantom CT")
    logic = ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions=REFINER_OPTIONS)
    result = logic.refine(volume, None, "", device="cpu", coarseSource="automatic")
    node, segmentId = result.segmentationNode, result.coarseSegmentId
    # the coarse and refined segments and the (hidden) unsure overlay
    assert node.GetName() == "phantom CT coarse" and node.GetSegmentation().GetNumberOfSegments() == 3
    assert result.uncertainSegmentId is not None
    assert node.GetSegmentation().GetSegment(segmentId).GetName() == "Tumour (automatic coarse)"
    coarse = scene_nodes.export_segment_mask(node, segmentId, volume)
    truth = phantom.label.array == 2
    assert 2 * (coarse & truth).sum() / (coarse.sum() + truth.sum()) > 0.5

    plain = st.add_ct(app.scene, np.full((12, 64, 64), 60.0), st.ijk_to_ras((2.5, 0.8, 0.8), (0.0, 0.0, 0.0)), "no tumour")
    snapshot = st.scene_snapshot(app.scene)
    st.expect_error(lambda: logic.refine(plain, None, "", device="cpu", coarseSource="automatic"), "no tumour in this CT")
    st.assert_same_scene(snapshot, st.scene_snapshot(app.scene), "after an automatic coarse segment found nothing")


def test_the_intensity_gate_setting_reaches_the_worker(app, trained_model, case):
    """The module's checkbox (``setIntensityGate``) goes into the refiner options of the job the
    worker runs (which builds its ``Refiner`` from them, see test_worker_process_matches_in_process_call)."""
    import json

    logic = ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions=REFINER_OPTIONS)
    sc = st.build_scene_case(app.scene, case)
    for on in (False, True):
        logic.setIntensityGate(on)
        inputs = logic.prepare(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
        try:
            assert json.loads(Path(inputs.jobPath).read_text())["refiner"]["intensity_gate"] is on
        finally:
            logic.cleanup(inputs)
    assert REFINER_OPTIONS == {"min_kept": 0.0}  # the shared options are not changed


def _as_planar_contours(segmentationNode) -> None:
    """Make the segmentation look as SlicerRT loads an RT structure set: 'Planar contour' is its
    source representation (with points, so that no segment is empty), and nothing converts a
    voxel mask to it. Each segment keeps a binary labelmap, as SlicerRT's conversion gives it."""
    import vtk

    segmentation = segmentationNode.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    labelmaps = [segment.GetRepresentation("Binary labelmap") for segment in segments]
    for segment in segments:
        contours = vtk.vtkPolyData()
        points = vtk.vtkPoints()
        for corner in ((0, 0, 0), (10, 0, 0), (10, 10, 0)):
            points.InsertNextPoint(*corner)
        contours.SetPoints(points)
        segment.AddRepresentation("Planar contour", contours)
    segmentation.SetSourceRepresentationName("Planar contour")  # drops the other representations
    for segment, labelmap in zip(segments, labelmaps):
        segment.AddRepresentation("Binary labelmap", labelmap)
    assert segmentation.GetSourceRepresentationName() == "Planar contour"


def test_a_coarse_segment_of_contours_is_copied_as_voxels_and_its_segmentation_left_as_it_was(app, logic, case):
    """The refined segment cannot go into a segmentation whose source is planar contours (Slicer's
    AddSegment fails): the coarse segment is copied as voxels into a new segmentation, refined
    there, and the contours are untouched."""
    sc = st.build_scene_case(app.scene, case)
    _as_planar_contours(sc.segmentationNode)
    segmentation = sc.segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    before = {sid: st.segment_voxels(sc.segmentationNode, sid)[0].copy() for sid in ids}
    coarse = scene_nodes.export_segment_mask(sc.segmentationNode, sc.coarseId, sc.volumeNode)
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    node = result.segmentationNode
    assert node is not sc.segmentationNode and node.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    copy = node.GetSegmentation().GetSegment(result.coarseSegmentId)
    assert copy.GetName() == segmentation.GetSegment(sc.coarseId).GetName()
    assert np.array_equal(scene_nodes.export_segment_mask(node, result.coarseSegmentId, sc.volumeNode), coarse)
    assert node.GetSegmentation().GetSegment(result.refinedSegmentId).GetName() == copy.GetName() + " refined"
    assert any("copied as voxels into the new segmentation" in note for note in result.notes)
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ids
    for sid in ids:
        assert np.array_equal(st.segment_voxels(sc.segmentationNode, sid)[0], before[sid]), sid
    assert segmentation.GetSourceRepresentationName() == "Planar contour"
    with pytest.raises(RefineError, match="stores its segments as 'Planar contour'"):
        scene_nodes.put_segment(sc.segmentationNode, segmentation.GetSegment(sc.coarseId), sc.otherId, (1, 0, 0))
    assert segmentation.GetSegment(sc.otherId) is not None  # refused before anything was removed


def test_seeds_with_a_segmentation_of_contours_make_a_new_segmentation(app, logic, case):
    sc = st.build_scene_case(app.scene, case, separate_truth=True)
    _as_planar_contours(sc.segmentationNode)
    before = sc.segmentationNode.GetSegmentation().GetNumberOfSegments()
    points = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    k, j, i = st.deepest_voxel(case.truth)
    points.AddControlPoint([float(v) for v in (sc.matrix @ np.array([i, j, k, 1.0]))[:3]])
    result = logic.refine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds", seedsNode=points)
    assert result.segmentationNode is not sc.segmentationNode
    assert sc.segmentationNode.GetSegmentation().GetNumberOfSegments() == before
    refined = scene_nodes.export_segment_mask(result.segmentationNode, result.refinedSegmentId, sc.volumeNode)
    assert refined.any()
