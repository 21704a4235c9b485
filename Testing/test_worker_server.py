"""The long-lived worker (``worker --serve`` and ``workerprocess.WorkerServer``, issue 16): jobs one
after another in one process with the models kept loaded, a failed job that does not end the
worker, cancel and idle exit that hand the next job to a new worker, and the line protocol."""
from __future__ import annotations

import io
import json
import os
import time
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import blob_case
from LiverTumorRefineLib import worker
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.refine.weights import save_model
from LiverTumorRefineLib.scene.workerprocess import WorkerJob, WorkerServer

GEOMETRY = {"spacing": [0.8, 0.8, 2.5], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


@pytest.fixture(scope="module")
def model_file(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(trained_model, path)
    return str(path)


def slow_case(seed: int):
    """Eight lesions side by side, each on many thin slices: hundreds of patches, seconds of work."""
    cases = [blob_case(seed + i, shape=(96, 64, 64), spacing_zyx=(0.5, 0.8, 0.8)) for i in range(8)]
    return types.SimpleNamespace(**{key: np.concatenate([getattr(c, key) for c in cases], axis=2)
                                    for key in ("image", "coarse", "truth")})


def make_job(root: Path, name: str, model_file: str, seed: int = 0, slow: bool = False) -> Path:
    """A small refinement job; ``slow``: ``slow_case`` cut into one-patch batches in 8 orientations,
    so that a cancel reaches it while it runs."""
    folder = root / name
    folder.mkdir()
    case = slow_case(seed) if slow else blob_case(seed, shape=(16, 64, 64))
    return worker.write_job(folder, case.image, GEOMETRY, {"source": "mask"}, case.coarse, case.truth, device="cpu",
                            weights=model_file, seg_weights=None, batch_size=8 if slow else 64,
                            refiner={"min_kept": 0.0, "tta": 8 if slow else 1})


@pytest.fixture
def server():
    server = WorkerServer()
    yield server
    server.stop()


def finish(job, timeout: float = 300.0) -> None:
    assert job.wait(timeout), "the job did not end"
    job.check()


def test_jobs_run_one_after_another_in_one_process(server, model_file, tmp_path):
    first = server.submit(make_job(tmp_path, "a", model_file, seed=0))
    finish(first)
    pid = first.process.pid
    second = server.submit(make_job(tmp_path, "b", model_file, seed=1))
    finish(second)
    assert second.process.pid == pid and server.starts == 1, "the second job started a new worker"
    for job, seed in ((first, 0), (second, 1)):
        result, refined, _ = worker.read_result(job.folder)
        in_process = worker.run_job(make_job(tmp_path, f"again{seed}", model_file, seed=seed))
        assert result["stats"]["patches"] == in_process["stats"]["patches"] > 0
        assert np.array_equal(refined, worker.load_mask(tmp_path / f"again{seed}" / worker.REFINED_FILE))
    assert first.state()[0] == second.state()[0] == 1.0


def test_a_failed_job_does_not_end_the_worker(server, model_file, tmp_path):
    broken = make_job(tmp_path, "broken", model_file)
    (broken.parent / "ct.npy").unlink()  # a bug in the worker's eyes: it names the file
    bad = server.submit(broken)
    with pytest.raises(RefineError, match="ct.npy"):
        finish(bad)
    good = server.submit(make_job(tmp_path, "good", model_file))
    finish(good)
    assert good.process is bad.process and server.starts == 1


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_cancel_ends_the_worker_and_the_next_job_gets_a_new_one(server, model_file, tmp_path):
    job = server.submit(make_job(tmp_path, "cancelled", model_file, slow=True))
    deadline = time.monotonic() + 120
    while job.state()[0] <= 0.0 and not job.done:
        assert time.monotonic() < deadline, "the worker never reported progress"
        time.sleep(0.02)
    assert not job.done, "the job ended before it could be cancelled: make the cancelled job slower"
    job.cancel()
    assert job.wait(60)
    with pytest.raises(RefineCancelled):
        job.check()
    assert job.process.poll() is not None, "the worker is still running after cancel"
    after = server.submit(make_job(tmp_path, "after", model_file))
    finish(after)
    assert server.starts == 2 and after.process.pid != job.process.pid


def test_a_new_worker_starts_when_its_log_folder_was_removed(model_file, tmp_path):
    """A temporary-file cleaner (or a test's own temporary folder) may remove the folder of a worker
    that has ended; the next job starts a worker in a new folder instead of failing."""
    import shutil

    server = WorkerServer(idle_exit_s=0.5)
    try:
        run_until_idle_exit(server, make_job(tmp_path, "first", model_file))
        old = server.folder
        shutil.rmtree(old)
        finish(server.submit(make_job(tmp_path, "second", model_file)))
        assert server.starts == 2 and server.folder != old and server.folder.is_dir()
    finally:
        server.stop()


def run_until_idle_exit(server: WorkerServer, job_path: Path):
    """Run one job, then wait until the worker has left at its idle timeout; the job."""
    job = server.submit(job_path)
    finish(job)
    deadline = time.monotonic() + 30
    while server.running:
        assert time.monotonic() < deadline, "the idle worker did not end"
        time.sleep(0.05)
    return job


def test_an_idle_worker_ends_and_the_next_job_starts_another(model_file, tmp_path):
    server = WorkerServer(idle_exit_s=1.0)
    try:
        first = run_until_idle_exit(server, make_job(tmp_path, "a", model_file))
        assert first.process.returncode == worker.EXIT_OK
        second = server.submit(make_job(tmp_path, "b", model_file))
        finish(second)
        assert server.starts == 2
    finally:
        server.stop()
    assert server.folder is None


def test_a_job_the_idle_worker_left_untaken_goes_to_a_new_worker(model_file, tmp_path):
    """The race at the idle exit: a job written to a worker that is leaving is never taken; its
    handle sends it again to a new worker instead of waiting for ever."""
    server = WorkerServer(idle_exit_s=0.5)
    try:
        first = run_until_idle_exit(server, make_job(tmp_path, "a", model_file))
        late = WorkerJob(server, make_job(tmp_path, "late", model_file))
        late.process = first.process  # what the reader of the old worker found when it ended
        late.process_ended(resend=True)
        finish(late)
        assert server.starts == 2 and late.process is not first.process
    finally:
        server.stop()


def test_stop_ends_the_worker_and_removes_its_log_folder(model_file, tmp_path):
    server = WorkerServer()
    finish(server.submit(make_job(tmp_path, "a", model_file)))
    folder, process = server.folder, server.submit(make_job(tmp_path, "b", model_file)).process
    server.stop()
    assert process.poll() is not None and not folder.exists() and not server.running


def test_serve_protocol_tags_every_record_and_survives_errors(monkeypatch):
    """In process: started, progress and the end of each job carry its path; a user error and a
    bug end only their job; running out of memory ends the worker."""
    outcomes = {"user": RefineError("The CT is empty: load it again."), "bug": ValueError("boom"), "ok": None,
                "memory": MemoryError(), "never": None}

    def run(job_path, progress=None, weights=None, pipelines=None):
        progress(0.5, "half")
        if outcomes[job_path] is not None:
            raise outcomes[job_path]
        return {}

    monkeypatch.setattr(worker, "run_job", run)
    out = io.StringIO()
    requests = [json.dumps({"job": name}) + "\n" for name in outcomes] + ["not json\n"]
    assert worker.serve(requests, out) == worker.EXIT_MEMORY
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    ends = {r["job"]: r for r in records if "done" in r or "error" in r}
    assert set(ends) == {"user", "bug", "ok", "memory"}, "a job after running out of memory was run"
    assert ends["ok"]["done"] == worker.RESULT_FILE
    assert "empty" in ends["user"]["error"] and ends["bug"]["kind"] == "bug" and ends["memory"]["kind"] == "MemoryError"
    assert {"job": "ok", "started": True} in records and {"job": "ok", "progress": 0.5, "message": "half"} in records


def test_serve_says_idle_and_ends_without_requests():
    class Silent:  # stdin with nothing to read
        def __iter__(self):
            time.sleep(5)
            return iter(())

    out = io.StringIO()
    t0 = time.perf_counter()
    assert worker.serve(Silent(), out, idle_exit_s=0.3) == worker.EXIT_OK
    assert time.perf_counter() - t0 < 4
    assert json.loads(out.getvalue()) == {"exit": "idle"}


def test_the_served_worker_reuses_its_pipeline_until_the_model_file_changes(model_file, tmp_path):
    job = json.loads(make_job(tmp_path, "a", model_file).read_text())
    pipelines: dict = {}
    first = worker.job_pipeline(job, None, pipelines)
    assert worker.job_pipeline(job, None, pipelines) is first
    assert worker.job_pipeline({**job, "refiner": {"tta": 4}}, None, pipelines) is not first
    assert len(pipelines) == 1, "an old model set is kept"
    again = worker.job_pipeline(job, None, pipelines)
    os.utime(model_file, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file was replaced
    assert worker.job_pipeline(job, None, pipelines) is not again


@pytest.mark.parametrize("dtype, stored", [(np.int16, np.int16), (np.uint16, np.uint16), (np.float32, np.float32),
                                           (np.float64, np.float32), (np.uint8, np.float32)])
def test_a_jobs_ct_keeps_a_ct_type_and_is_refined_the_same(tmp_path, dtype, stored, model_file):
    """int16 CTs (Slicer's usual type) go to the worker as int16: half the bytes of float32."""
    case = blob_case(0, shape=(16, 64, 64))
    image = np.clip(np.round(case.image), 0, 255).astype(dtype)
    folder = tmp_path / "job"
    folder.mkdir()
    job = worker.write_job(folder, image, GEOMETRY, {"source": "mask"}, case.coarse, None, device="cpu",
                           weights=model_file, seg_weights=None, batch_size=64, refiner={"min_kept": 0.0, "tta": 1})
    assert np.load(folder / "ct.npy").dtype == stored
    worker.run_job(job)
    as_float = tmp_path / "float"
    as_float.mkdir()
    again = worker.write_job(as_float, image.astype(np.float32), GEOMETRY, {"source": "mask"}, case.coarse, None,
                             device="cpu", weights=model_file, seg_weights=None, batch_size=64,
                             refiner={"min_kept": 0.0, "tta": 1})
    worker.run_job(again)
    assert np.array_equal(worker.load_mask(folder / worker.REFINED_FILE), worker.load_mask(as_float / worker.REFINED_FILE))


def test_the_served_worker_keeps_refined_boxes_and_a_one_off_job_does_not(model_file, tmp_path):
    """A kept worker's Refiner keeps its boxes (``refine.result_cache``): the same job again refines
    nothing anew and writes the same result; a one-off job keeps nothing."""
    pipelines: dict = {}
    first = worker.run_job(make_job(tmp_path, "a", model_file), pipelines=pipelines)
    again = worker.run_job(make_job(tmp_path, "b", model_file), pipelines=pipelines)
    assert first["stats"]["boxes_reused"] == 0 and first["stats"]["patches"] > 0
    assert again["stats"]["boxes_reused"] == len(again["stats"]["crop_shapes"]) > 0 and again["stats"]["patches"] == 0
    assert np.array_equal(worker.load_mask(tmp_path / "a" / worker.REFINED_FILE), worker.load_mask(tmp_path / "b" / worker.REFINED_FILE))
    assert np.array_equal(worker.load_mask(tmp_path / "a" / worker.UNCERTAIN_FILE), worker.load_mask(tmp_path / "b" / worker.UNCERTAIN_FILE))
    worker.run_job(make_job(tmp_path, "c", model_file))
    assert worker.run_job(make_job(tmp_path, "d", model_file))["stats"]["boxes_reused"] == 0


def test_a_jobs_memory_is_given_back_only_once_the_worker_waits_in_vain(monkeypatch):
    """After a job the worker keeps its freed heap while the next click comes within
    ``RELEASE_AFTER_S`` (giving it back then would compete with the main process preparing that
    click), gives it back once it has waited that long, and still leaves at the idle timeout."""
    import queue

    released = []
    monkeypatch.setattr(worker, "release_memory", lambda: released.append(time.monotonic()))
    monkeypatch.setattr(worker, "RELEASE_AFTER_S", 0.2)
    waiting = queue.Queue()
    waiting.put('{"job": "next"}')
    assert worker.next_request(waiting, 5.0, held=True) == '{"job": "next"}' and not released
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        worker.next_request(waiting, 0.5, held=True)
    assert len(released) == 1 and 0.15 < released[0] - start < 0.45
    assert 0.45 < time.monotonic() - start < 1.5  # the idle timeout counts from the job's end
    with pytest.raises(queue.Empty):
        worker.next_request(waiting, 0.1, held=False)
    assert len(released) == 1
