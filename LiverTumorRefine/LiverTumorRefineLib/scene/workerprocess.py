"""Runs ``LiverTumorRefineLib.worker`` in its own process and follows its jobs from the GUI.

Inside 3D Slicer the main thread holds Python's GIL while Qt idles (PythonQt's thread support
is off), so a Python thread doing the refinement would only advance while the GUI runs Python.
A process does not share the GIL: it runs at full speed whatever the GUI does.

``WorkerServer`` starts the worker once (Slicer's ``PythonSlicer``, or ``sys.executable``
outside the application) in ``--serve`` mode, in its own process group, and hands it job after
job; it keeps torch and the models loaded, so a corrective click or a second Apply does not pay
for a new Python. ``submit`` returns a ``WorkerJob``; a reader thread only parses the worker's
JSON lines and stores them in their job; the main thread polls ``state()`` and ``done`` (both
cheap and non-blocking). Cancel ends the whole process group (the worker and anything it started,
TotalSegmentator); the next job starts a new worker, as after a crash or the worker's own exit
when idle. No ``slicer``/``qt`` import: headless-testable.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from LiverTumorRefineLib.errors import RefineCancelled, RefineError

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the LiverTumorRefineLib package
WORKER_MODULE = "LiverTumorRefineLib.worker"
KILL_GRACE_S = 3.0  # after Cancel: SIGTERM, then SIGKILL if the worker is still there
LOG_FILE = "worker.log"
STOP_WAIT_S = 5.0  # ``stop``: time for the worker to end at the end of its input before it is killed


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` inside the application (as ``slicer.util._executePythonModule``
    finds it), else this interpreter."""
    try:
        from slicer import app  # noqa: F401 - only present inside the Slicer application
    except ImportError:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise RefineError("Slicer's Python (PythonSlicer) was not found next to 3D Slicer: reinstall 3D Slicer.")
    return found


class WorkerServer:
    """The worker process that runs submitted jobs one after another (started on the first one,
    and again after a cancel, a crash or its idle exit). Its log is ``worker.log`` in a folder
    of its own; ``idle_exit_s`` is passed to the worker (None: the worker's default)."""

    def __init__(self, executable: str | None = None, idle_exit_s: float | None = None) -> None:
        self.executable, self.idle_exit_s = executable, idle_exit_s
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._jobs: dict[str, WorkerJob] = {}
        self._gone: set[subprocess.Popen] = set()  # processes whose reader has finished
        self.folder: Optional[Path] = None
        self.starts = 0  # worker processes started so far (tests, benchmarks)

    @classmethod
    def shared(cls, executable: str | None = None) -> "WorkerServer":
        """The one worker of this application for ``executable`` (the module and the Segment
        Editor effect share it, and so its memory)."""
        server = _SHARED.get(executable)
        if server is None:
            server = _SHARED[executable] = cls(executable)
        return server

    # ------------------------------------------------------------ the process
    @property
    def running(self) -> bool:
        """A worker process is there now (it may still end at its idle timeout)."""
        return self._process is not None and self._process.poll() is None

    def submit(self, job_path: str | Path) -> "WorkerJob":
        """Hand ``job_path`` to the worker (starting one if none is running); its handle."""
        job = WorkerJob(self, Path(job_path))
        self._send(job)
        return job

    def _send(self, job: "WorkerJob") -> None:
        for _ in range(3):
            if not self.running:
                self._start()
            process = self._process
            with self._lock:
                if process in self._gone:  # it ended and its reader is done: nobody would answer
                    continue
                self._jobs[str(job.job_path)] = job
                job.process = process
            try:
                process.stdin.write((json.dumps({"job": str(job.job_path)}) + "\n").encode())
                process.stdin.flush()
            except OSError:  # it ended just now: its reader marks the job lost, and ``done`` sends it again
                pass
            return
        raise RefineError("The refinement process ended as soon as it started, three times: the details are in "
                          "the Python console; please report this problem.")

    def _start(self) -> None:
        if self.folder is None or not self.folder.is_dir():  # a temporary-file cleaner may have removed it
            self.folder = Path(tempfile.mkdtemp(prefix="LiverTumorRefine-worker-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if os.name == "nt":  # no console window; a group taskkill /T can end
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # its own process group: Cancel ends the whole tree
        command = [self.executable or python_executable(), "-m", WORKER_MODULE, "--serve"]
        if self.idle_exit_s is not None:
            command += ["--idle-exit", str(self.idle_exit_s)]
        log = open(self.folder / LOG_FILE, "ab")
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE,
                                       cwd=str(self.folder), env=env, **kwargs)
        except OSError as exc:
            raise RefineError(f"The refinement process could not be started ({exc}): reinstall the extension.") from None
        finally:
            log.close()  # the child holds its own copy
        self._process = process
        self.starts += 1
        threading.Thread(target=self._read, args=(process,), name="LiverTumorRefine-reader", daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        """Reader thread of one process: parse its lines into their jobs; nothing else."""
        idle_exit = False
        for raw in process.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                logging.info("LiverTumorRefine worker: %s", raw.decode(errors="replace").rstrip())
                continue
            if record.get("exit") == "idle":
                idle_exit = True
                continue
            with self._lock:
                job = self._jobs.get(str(record.get("job")))
                if job is not None and ("done" in record or "error" in record):
                    del self._jobs[str(job.job_path)]  # its last line
            if job is not None:
                job.record(record)
        process.stdout.close()
        process.wait()
        with self._lock:
            self._gone.add(process)
            ended = [job for job in self._jobs.values() if job.process is process]
            for job in ended:
                del self._jobs[str(job.job_path)]
        for job in ended:
            job.process_ended(resend=idle_exit and not job.taken)

    def kill(self, process: subprocess.Popen, hard: bool) -> None:
        """End ``process`` and everything it started (SIGTERM, or SIGKILL when ``hard``)."""
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
            else:
                os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    def stop(self) -> None:
        """End the worker (module closed, Slicer quitting): the end of its input, then a kill;
        its log folder is removed."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()
                process.wait(STOP_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.kill(process, hard=True)
                process.wait(STOP_WAIT_S)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log (its stderr)."""
        if self.folder is None:
            return ""
        try:
            text = (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_SHARED: dict[Optional[str], WorkerServer] = {}


@atexit.register
def _stop_shared() -> None:
    for server in _SHARED.values():
        server.stop()


class WorkerJob:
    """One job in the ``WorkerServer``'s process: its progress, end and errors."""

    def __init__(self, server: WorkerServer, job_path: Path) -> None:
        self.server, self.job_path = server, job_path
        self.folder = job_path.parent
        self.process: Optional[subprocess.Popen] = None  # the worker process running it (set on submit)
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._fraction, self._message = 0.0, "Starting the refinement process"
        self._error: Optional[dict[str, Any]] = None
        self._finished = False  # the worker said done
        self._ended = threading.Event()  # done, an error, or the process gone
        self._resend = False
        self.taken = False  # the worker said it started this job
        self._cancelled_at: Optional[float] = None
        self._killed = False  # Cancel ended the worker process

    def record(self, record: dict[str, Any]) -> None:
        """A line of the worker about this job (the reader thread)."""
        with self._lock:
            if record.get("started"):
                self.taken = True
            elif "progress" in record:
                self._fraction, self._message = float(record["progress"]), str(record.get("message", ""))
            elif "error" in record:
                self._error = record
                self._ended.set()
            elif "done" in record:
                self._finished = True
                self._ended.set()

    def process_ended(self, resend: bool) -> None:
        """Its process ended before the job did (``resend``: the worker left at its idle timeout
        before taking the job, which then goes to a new worker)."""
        with self._lock:
            self._resend = resend and self._cancelled_at is None
        self._ended.set()

    def state(self) -> tuple[float, str]:
        """(fraction 0-1, message) of the worker's last progress line for this job."""
        with self._lock:
            return self._fraction, self._message

    @property
    def done(self) -> bool:
        """The job has ended (non-blocking; also finishes a Cancel that SIGTERM did not end)."""
        if self._resend:
            self._resend = False
            self._ended.clear()
            self.server._send(self)
            return False
        # a job whose worker Cancel ended is done when that process is gone, not when its last line
        # arrives: the worker may still be exiting (and holding its files) after it reported the cancel
        if self._ended.is_set() and not (self._killed and self.process.poll() is None):
            return True
        if self._cancelled_at is not None and time.perf_counter() - self._cancelled_at > KILL_GRACE_S:
            self.server.kill(self.process, hard=True)
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block (releasing the GIL) until the job ends; False on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.done:
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                return False
            if self._ended.is_set():
                time.sleep(0.01)  # ended, and the cancelled worker still exiting: do not spin
            else:
                self._ended.wait(0.2 if left is None else min(0.2, left))
        return True

    def cancel(self) -> None:
        """End the worker process and everything it started; ``done`` turns True soon after."""
        if self._cancelled_at is None:
            self._cancelled_at = time.perf_counter()
        if self.process is not None and self.process.poll() is None and not self._ended.is_set():
            self._killed = True
            self.server.kill(self.process, hard=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled_at is not None

    def check(self) -> None:
        """After ``done``: return if the job succeeded, else raise what went wrong as a
        ``RefineError`` a user can act on (``RefineCancelled`` after ``cancel``)."""
        if self._cancelled_at is not None:
            raise RefineCancelled("Cancelled: the scene is unchanged.")
        with self._lock:
            error, finished = self._error, self._finished
        if finished:
            return
        if error is not None and error.get("kind") != "bug":
            raise RefineError(str(error["error"]))
        tail = self.log_tail()
        if tail:
            logging.error("LiverTumorRefine worker log (%s):\n%s", self.server.folder, tail)
        code = self.process.poll() if self.process is not None else None
        if error is None and code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            raise RefineError(f"The refinement process was stopped by the system ({name}), most likely because the "
                              "computer ran out of memory: close other programs, choose CPU, or crop the CT to the "
                              "liver, and try again.")
        detail = error["error"] if error is not None else (tail.strip().splitlines() or ["no message"])[-1]
        exit_code = f" (exit code {code})" if error is None else ""
        raise RefineError(f"The refinement process failed{exit_code}: {detail}. The details are in the Python "
                          "console; please report this problem.")

    def log_tail(self, lines: int = 40) -> str:
        return self.server.log_tail(lines)
