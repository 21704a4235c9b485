"""The Logic's worker process, as the Slicer module runs it, and the Logic's fixes that headless
Slicer can see (issue 12): cancel half-way, a main thread holding the GIL as Slicer's idle loop
does, crashes and out-of-memory, stale segment IDs, seed point status, terminology, node
collections."""
from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")

from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.scene import nodes as scene_nodes  # noqa: E402
import slicer_testing as st  # noqa: E402
from LiverTumorRefineLib import worker  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups and usleep are POSIX")


@pytest.fixture
def app():
    return st.make_app()


@pytest.fixture(scope="module")
def logic(trained_model):
    return ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions={"min_kept": 0.0})


@pytest.fixture(scope="module")
def case():
    return st.synthetic_case(0)


@pytest.fixture(scope="module")
def small_case():
    return st.synthetic_case(4, shape=(16, 64, 64))


def slow_logic(trained_model) -> ltr.LiverTumorRefineLogic:
    """8 orientations in batches of 16: a refinement long enough to be caught half-way by a poll,
    even in a warm worker on a fast machine."""
    return ltr.LiverTumorRefineLogic(weights=trained_model, batchSize=16, refinerOptions={"min_kept": 0.0, "tta": 8})


@posix_only
def test_cancel_half_way_ends_the_process_and_leaves_the_scene(app, trained_model, case):
    """Seed points: the coarse step and the refinement run in the worker; cancelling while it
    refines ends the process group, adds no coarse and no refined segment, removes the folder."""
    logic = slow_logic(trained_model)
    sc = st.build_scene_case(app.scene, case, separate_truth=True)
    k, j, i = st.deepest_voxel(case.truth)
    ras = sc.matrix @ np.array([i, j, k, 1.0])
    points = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    points.AddControlPoint([float(v) for v in ras[:3]])
    before = st.scene_snapshot(app.scene)
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds",
                            seedsNode=points)
    st.cancel_job(job, after=ltr.PREPARE_END + 0.4 * (ltr.WORKER_END - ltr.PREPARE_END))
    st.assert_same_scene(before, st.scene_snapshot(app.scene), "seeded job cancelled half-way")
    assert sc.segmentationNode.GetSegmentation().GetNumberOfSegments() == 2  # coarse and other, nothing new


@posix_only
def test_job_keeps_its_speed_while_the_main_thread_holds_the_gil(app, trained_model, case, monkeypatch):
    """Slicer's main thread holds the GIL while Qt idles (PythonQt threads off); only a 100 ms poll
    runs Python. A C call through ``ctypes.PyDLL`` keeps the GIL, as the idle loop does. The job
    must take at most 1.3x its time with the main thread free, plus two poll periods: the reader
    thread parses the worker's last line when a poll lets it run, and the next poll sees it."""
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
    # One torch thread in the worker: on a busy machine two threads spin against other programs and a
    # run takes 0.3 or 3 s at random, whatever the main thread does.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic = slow_logic(trained_model)  # a job of about a second in the kept worker, not a few polls
    logic.stopWorker()  # the next job starts a worker with this environment
    sc = st.build_scene_case(app.scene, case)

    def run(hold_gil: bool) -> float:
        t0 = time.perf_counter()
        job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
        if hold_gil:
            while not job.done:
                libc.usleep(100000)
                job.state()  # what the module's QTimer slot does
                assert time.perf_counter() - t0 < 300, "the job is starved"
        else:
            assert job.wait(300)
        seconds = time.perf_counter() - t0
        job.finish()
        return seconds

    # Alternated three times, best of each: other programs on the machine slow single runs by up to 2x.
    times = {hold: [] for hold in (False, True)}
    try:
        for hold in (False, True) * 3:
            times[hold].append(run(hold_gil=hold))
    finally:
        logic.stopWorker()  # later tests get a worker with the usual environment
    free, held = min(times[False]), min(times[True])
    print(f"\nworker job: {[round(t, 2) for t in times[False]]} s with the main thread free, "
          f"{[round(t, 2) for t in times[True]]} s while it holds the GIL")
    assert held <= 1.3 * free + 0.2, f"{held:.2f} s while the main thread holds the GIL, {free:.2f} s free"


@posix_only
def test_worker_killed_by_the_system_is_reported_as_out_of_memory(app, trained_model, case):
    logic = slow_logic(trained_model)  # still running when the kill comes, even in a warm worker
    sc = st.build_scene_case(app.scene, case)
    before = st.scene_snapshot(app.scene)
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    while job.state()[0] < ltr.PREPARE_END + 0.1 and not job.done:
        time.sleep(0.01)
    assert not job.done, "the job ended before the kill"
    os.kill(job.process.process.pid, signal.SIGKILL)  # what the kernel's OOM killer does
    assert job.wait(60)
    st.expect_error(job.finish, "stopped by the system (SIGKILL)", "ran out of memory", "choose cpu")
    st.assert_same_scene(before, st.scene_snapshot(app.scene), "worker killed")
    assert not job.inputs.folder.exists()


def test_worker_crash_becomes_a_message_naming_the_failure(app, logic, case):
    sc = st.build_scene_case(app.scene, case)
    inputs = logic.prepare(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    ct = Path(json.loads(inputs.jobPath.read_text())["ct"])
    ct.unlink()  # the worker fails on its first read: a bug, not a user error
    job = ltr.RefineJob(logic, inputs, logic.startWorker(inputs))
    assert job.wait(120)
    message = st.expect_error(job.finish, "refinement process failed", ct.name, "python console")
    assert "Traceback" not in message


@pytest.mark.parametrize("raised, code, text", [
    (MemoryError(), worker.EXIT_MEMORY, "ran out of memory"),
    (RefineError("The CT is empty: load it again."), worker.EXIT_USER, "The CT is empty"),
    (ValueError("boom"), worker.EXIT_BUG, "ValueError: boom"),
])
def test_worker_entry_point_reports_failures_as_json_lines(monkeypatch, raised, code, text):
    def fail(job_path, progress=None, weights=None, pipelines=None):
        progress(0.25, "working")
        raise raised

    monkeypatch.setattr(worker, "run_job", fail)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert worker.main(["--job", "job.json"]) == code
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == {"progress": 0.25, "message": "working"}
    assert text in records[-1]["error"] and "done" not in records[-1]


def test_stale_segment_ids_do_not_enable_apply(app, logic, case):
    """Item 7: the segment selector may keep an ID after its segmentation changed or was cleared."""
    sc = st.build_scene_case(app.scene, case)
    empty = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert logic.validSegmentId(sc.segmentationNode, sc.coarseId) == sc.coarseId
    assert logic.validSegmentId(empty, sc.coarseId) == ""
    assert logic.validSegmentId(None, sc.coarseId) == ""
    assert logic.canRefine(sc.volumeNode, "mask", sc.segmentationNode, sc.coarseId)
    assert not logic.canRefine(sc.volumeNode, "mask", empty, sc.coarseId)
    assert not logic.canRefine(sc.volumeNode, "mask", None, sc.coarseId)
    assert not logic.canRefine(None, "mask", sc.segmentationNode, sc.coarseId)
    assert logic.canRefine(sc.volumeNode, "automatic", None, "")
    points = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    assert not logic.canRefine(sc.volumeNode, "seeds", None, "", points)
    points.AddControlPoint([0.0, 0.0, 0.0])
    points.SetNthControlPointPosition(0, 0.0, 0.0, 0.0, st.slicer_position_status("PositionPreview"))
    assert not logic.canRefine(sc.volumeNode, "seeds", None, "", points), "a point still being placed is no seed"
    points.SetNthControlPointPosition(0, 0.0, 0.0, 0.0, st.slicer_position_status("PositionDefined"))
    assert logic.canRefine(sc.volumeNode, "seeds", None, "", points)


def test_new_segments_carry_the_terminology_tag(app, logic, case):
    """Item 2: set as a tag (vtkSegment.SetTerminology is missing before Slicer 5.10)."""
    import vtk

    sc = st.build_scene_case(app.scene, case)
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")
    value = vtk.reference("")
    segment = sc.segmentationNode.GetSegmentation().GetSegment(result.refinedSegmentId)
    assert segment.GetTag("TerminologyEntry", value) and str(value) == scene_nodes.LIVER_NEOPLASM_TERMINOLOGY
    assert "lesions" in result.stats and "parenchyma_hu" in result.stats  # the engine's stats reach the Logic


def test_nodes_by_class_releases_the_collection(app):
    """Item 9: ``GetNodesByClass`` returns a new reference; without releasing it, it leaks."""
    app.scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
    seen = []

    class Recording:
        def GetNodesByClass(self, className):
            seen.append(app.scene.GetNodesByClass(className))
            return seen[-1]

    assert [n.GetName() for n in scene_nodes.nodes_by_class(Recording(), "vtkMRMLTableNode")] == ["t"]
    assert seen[0].GetReferenceCount() == 1, "the collection keeps an extra reference (leak)"


def test_result_masks_travel_as_their_bounding_box(tmp_path):
    """The worker writes a mask as its bounding-box crop: the whole grid comes back, voxel for
    voxel, empty masks too, and the file holds the crop, not the CT-sized array."""
    mask = np.zeros((120, 256, 256), bool)
    mask[40:52, 100:130, 7:9] = True
    mask[60, 200, 250] = True
    worker.save_mask(tmp_path / "m.npz", mask)
    back = worker.load_mask(tmp_path / "m.npz")
    assert back.dtype == bool and np.array_equal(back, mask)
    with np.load(tmp_path / "m.npz") as data:
        assert data["crop"].shape == (21, 101, 244) and list(data["start"]) == [40, 100, 7]
    worker.save_mask(tmp_path / "e.npz", np.zeros((3, 4, 5), bool))
    empty = worker.load_mask(tmp_path / "e.npz")
    assert empty.shape == (3, 4, 5) and not empty.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "m.npz"]  # no temporary left behind


def test_jobs_share_one_file_per_version_of_the_ct(app, trained_model, case):
    """A CT is written once for the jobs that use it (a click must not copy and write a whole CT
    first); a change of its voxels writes a new file with the new voxels, the version before is kept
    for a job that may still read it, older ones go, and closing the module removes them all."""
    import slicer

    logic = ltr.LiverTumorRefineLogic(weights=trained_model)
    sc = st.build_scene_case(app.scene, case)

    def job_ct(inputs) -> Path:
        try:
            return Path(json.loads(inputs.jobPath.read_text())["ct"])
        finally:
            logic.cleanup(inputs)

    first = job_ct(logic.prepare(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu"))
    written = first.stat().st_mtime_ns
    again = job_ct(logic.prepare(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu"))
    assert again == first and first.stat().st_mtime_ns == written and first.is_absolute()
    assert np.array_equal(np.load(first), scene_nodes.ct_array(sc.volumeNode))
    paths = [first]
    for step in range(3):  # the user edits the CT's voxels three times
        voxels = slicer.util.arrayFromVolume(sc.volumeNode)
        voxels[0, 0, step] += 100
        slicer.util.arrayFromVolumeModified(sc.volumeNode)
        paths.append(job_ct(logic.prepare(sc.volumeNode, sc.segmentationNode, sc.coarseId, device="cpu")))
        assert np.array_equal(np.load(paths[-1]), scene_nodes.ct_array(sc.volumeNode))
    assert len(set(paths)) == 4 and [p.is_file() for p in paths] == [False, False, True, True]
    logic.stopWorker()
    assert not paths[-1].exists() and not paths[-1].parent.exists()
