"""Corrective clicks in the Slicer module (issue 16), headless on the PyPI ``slicer-core``.

Negative points reach the worker and change the seeded coarse mask; a corrective run replaces the
seeded segments in place (``slicer_testing.check_negative_clicks``, also run by the in-Slicer
self-test). ``scene.clicks.ClickTrigger`` (the "Update on each click" decision: markups events,
debounce, one job at a time) is driven by real markups events on a real markups node, with a
clock the test advances.
"""
from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")

import slicer_testing as st  # noqa: E402
from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.scene import nodes as scene_nodes  # noqa: E402
from LiverTumorRefineLib.scene.clicks import ClickTrigger  # noqa: E402

REFINER_OPTIONS = {"min_kept": 0.0}  # as test_logic: lets the test model's refinement through


@pytest.fixture
def app():
    return st.make_app()


@pytest.fixture(scope="module")
def logic(trained_model):
    return ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions=REFINER_OPTIONS)


def test_negative_click_reaches_the_worker_and_replaces_segments_in_place(app, logic):
    masks = st.check_negative_clicks(app.scene, logic, st.build_scene_case(app.scene, st.synthetic_case(2)))
    removed = masks["positive_only"] & ~masks["with_negative"]
    assert removed.any()


def test_a_positive_click_next_to_the_result_corrects_its_lesion(app, logic):
    found = st.check_positive_click_groups(app.scene, logic, st.build_scene_case(app.scene, st.synthetic_case(2)))
    assert found["descriptions"] == ["lesion 1", "lesion 1", "lesion 2"]


def test_lesion_numbers_go_only_into_empty_descriptions_of_unchanged_points(app):
    from LiverTumorRefineLib.scene.clicks import defined_points, label_point_lesions, point_lesions

    node = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    for x, text in ((1.0, ""), (2.0, "liver dome"), (3.0, "lesion 4")):
        node.SetNthControlPointDescription(node.AddControlPoint([x, 0.0, 0.0]), text)
    assert point_lesions(node) == [None, None, 4]
    sent = defined_points(node)
    node.AddControlPoint([9.0, 0.0, 0.0])  # a click during the job: nothing is written
    assert label_point_lesions(node, sent, [1, 2, 4]) == 0
    node.RemoveNthControlPoint(3)
    assert label_point_lesions(node, sent, [1, 2, 4]) == 1
    # the user's own words stay; that point is numbered again by the next job
    assert [node.GetNthControlPointDescription(n) for n in range(3)] == ["lesion 1", "liver dome", "lesion 4"]


def test_the_ct_identity_changes_with_the_voxels_and_the_grid(app):
    sc = st.build_scene_case(app.scene, st.synthetic_case(0))
    geometry = scene_nodes.volume_geometry(sc.volumeNode)
    before = scene_nodes.ct_identity(sc.volumeNode, geometry)
    assert scene_nodes.ct_identity(sc.volumeNode, geometry) == before  # unchanged CT: the same name
    sc.volumeNode.GetImageData().Modified()  # what slicer.util.arrayFromVolumeModified does
    edited = scene_nodes.ct_identity(sc.volumeNode, geometry)
    assert edited != before
    sc.volumeNode.SetSpacing(9.0, 9.0, 9.0)
    assert scene_nodes.ct_identity(sc.volumeNode, scene_nodes.volume_geometry(sc.volumeNode)) != edited


def test_a_click_update_reads_back_the_coarse_segment_it_wrote_until_someone_edits_it(app, logic, monkeypatch):
    import json

    import numpy as np
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    from LiverTumorRefineLib import worker

    sc = st.build_scene_case(app.scene, st.synthetic_case(2))

    def ras(kji) -> list[float]:
        return [float(v) for v in (sc.matrix @ [kji[2], kji[1], kji[0], 1.0])[:3]]

    positive = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    positive.AddControlPoint(ras(st.deepest_voxel(sc.case.truth)))
    first = logic.refine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds", seedsNode=positive)
    node, coarseId = first.segmentationNode, first.coarseSegmentId
    export = scene_nodes.export_segment_mask
    written = export(node, coarseId, sc.volumeNode)
    exports = []
    monkeypatch.setattr(scene_nodes, "export_segment_mask", lambda *a: exports.append(a[1]) or export(*a))
    positive.AddControlPoint(ras((1, 1, 1)))  # a new point without a lesion number: the job needs the result

    def previous_sent() -> np.ndarray:
        inputs = logic.prepare(sc.volumeNode, node, coarseId, device="cpu", coarseSource="seeds", seedsNode=positive,
                               replaceCoarseSegmentId=coarseId)
        try:
            job = json.loads(inputs.jobPath.read_text())
            return worker.load_mask(inputs.folder / job["coarse"]["previous"])
        finally:
            logic.cleanup(inputs)

    assert np.array_equal(previous_sent(), written) and exports == []  # the mask the module wrote, not exported
    # a paint stroke edits the segment's labelmap in place: its modification time tells
    labelmap = node.GetSegmentation().GetSegment(coarseId).GetRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars())
    voxels[np.flatnonzero(voxels)[0]] = 0
    labelmap.Modified()
    painted = export(node, coarseId, sc.volumeNode)
    assert painted.sum() == written.sum() - 1
    assert np.array_equal(previous_sent(), painted) and exports == [coarseId]  # read from the scene again

    update = logic.refine(sc.volumeNode, node, coarseId, device="cpu", coarseSource="seeds", seedsNode=positive,
                          replaceCoarseSegmentId=coarseId)  # the click update's result is remembered in turn
    assert update.coarseSegmentId == coarseId and len(exports) == 2  # (its own job exported the painted segment)
    positive.AddControlPoint(ras((2, 2, 2)))  # the update numbered the last point: one more without a number
    rewritten = export(node, coarseId, sc.volumeNode)
    assert np.array_equal(previous_sent(), rewritten) and len(exports) == 2
    edited = rewritten.copy()
    edited[tuple(np.argwhere(rewritten)[0])] = False  # a labelmap put in the segment's place
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), node, coarseId, sc.volumeNode)
    assert np.array_equal(previous_sent(), edited) and len(exports) == 3

    logic.refine(sc.volumeNode, node, coarseId, device="cpu", coarseSource="seeds", seedsNode=positive,
                 replaceCoarseSegmentId=coarseId)  # its job exported the edited segment; its result is remembered
    positive.AddControlPoint(ras((3, 3, 3)))
    assert len(exports) == 4
    previous_sent()
    assert len(exports) == 4
    moved = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")  # identity, but the segment now lies under it
    node.SetAndObserveTransformNodeID(moved.GetID())
    assert np.array_equal(previous_sent(), export(node, coarseId, sc.volumeNode)) and len(exports) == 5  # exported


def test_negative_points_outside_the_ct_are_an_error_and_the_scene_is_unchanged(app, logic):
    sc = st.build_scene_case(app.scene, st.synthetic_case(0))
    positive = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    positive.AddControlPoint([float(v) for v in (sc.matrix @ [40, 40, 12, 1.0])[:3]])
    negative = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    negative.AddControlPoint([900.0, 900.0, 900.0])
    negative.SetNthControlPointLabel(0, "far leak")
    snapshot = st.scene_snapshot(app.scene)
    st.expect_error(lambda: logic.refine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds",
                                         seedsNode=positive, negativeSeedsNode=negative), "'far leak' lies outside the CT")
    st.assert_same_scene(snapshot, st.scene_snapshot(app.scene), "after a negative point outside the CT")


def test_a_users_own_segment_is_never_replaced(app, logic):
    sc = st.build_scene_case(app.scene, st.synthetic_case(0))
    assert logic.replaceableCoarseSegmentId(sc.segmentationNode, sc.coarseId) is None  # "Tumour", drawn by the user
    assert logic.replaceableCoarseSegmentId(sc.segmentationNode, "no such segment") is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trigger(app):
    clock = Clock()
    positive = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    negative = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    positive.AddControlPoint([1.0, 2.0, 3.0])
    t = ClickTrigger(delay=0.4, clock=clock)
    t.observe(positive, negative)
    t.enabled = True
    t.markRun()  # the seeded job ran with one point ...
    t.armed = True  # ... and gave a result
    yield t, clock, positive, negative
    t.stop()


def test_click_runs_once_after_the_debounce_delay(trigger):
    t, clock, positive, negative = trigger
    assert not t.due(running=False), "nothing changed"
    negative.AddControlPoint([4.0, 5.0, 6.0])  # PointPositionDefinedEvent, PointModifiedEvent
    assert t.pending
    clock.now += 0.2
    assert not t.due(running=False), "ran before the delay"
    negative.SetNthControlPointPosition(0, 4.0, 5.5, 6.0)  # dragged on: the delay starts again
    clock.now += 0.3
    assert not t.due(running=False), "a drag restarts the delay"
    clock.now += 0.2
    assert t.due(running=False)
    assert not t.due(running=False), "one run per change"


def test_click_while_a_job_runs_waits_for_it(trigger):
    t, clock, positive, _ = trigger
    positive.AddControlPoint([7.0, 8.0, 9.0])
    clock.now += 1.0
    assert not t.due(running=True) and t.pending, "started a second job"
    assert t.due(running=False), "the click was lost after the job finished"


def test_deleting_the_last_point_undoes_one_click(trigger):
    t, clock, positive, _ = trigger
    positive.AddControlPoint([7.0, 8.0, 9.0])
    clock.now += 1.0
    assert t.due(running=False)
    positive.RemoveNthControlPoint(1)  # markups' own delete/undo: PointRemovedEvent
    clock.now += 1.0
    assert t.due(running=False), "deleting the last click did not update"
    assert t.snapshot()[0] == ((1.0, 2.0, 3.0),)


def test_nothing_runs_when_the_defined_points_did_not_change(trigger):
    t, clock, positive, negative = trigger
    preview = negative.AddControlPoint([4.0, 5.0, 6.0])
    negative.SetNthControlPointPosition(preview, 4.0, 5.0, 6.0, st.slicer_position_status("PositionPreview"))
    clock.now += 1.0
    assert not t.due(running=False), "a point being placed (preview) started a run"
    positive.SetNthControlPointPosition(0, 1.0, 2.0, 3.0)  # "moved" to where it was
    clock.now += 1.0
    assert not t.due(running=False)
    positive.RemoveNthControlPoint(0)  # no positive point left: nothing to refine
    clock.now += 1.0
    assert not t.due(running=False)


def test_off_or_unarmed_ignores_clicks(trigger):
    t, clock, positive, _ = trigger
    t.enabled = False
    positive.AddControlPoint([7.0, 8.0, 9.0])
    clock.now += 1.0
    assert not t.pending and not t.due(running=False)
    t.enabled, t.armed = True, False  # no seeded result yet (Apply first)
    positive.AddControlPoint([9.0, 8.0, 7.0])
    assert not t.pending


def test_stop_and_observe_other_lists(app, trigger):
    t, clock, positive, _ = trigger
    other = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "other")
    t.observe(other, None)
    positive.AddControlPoint([7.0, 8.0, 9.0])
    assert not t.pending, "the old list is still observed"
    other.AddControlPoint([3.0, 3.0, 3.0])
    assert t.pending
    t.stop()
    clock.now += 1.0
    assert not t.due(running=False)
    other.AddControlPoint([4.0, 3.0, 3.0])
    assert not t.pending
