"""Runs ``LiverTumorRefineLib.worker`` in its own process and follows it from the GUI.

Inside 3D Slicer the main thread holds Python's GIL while Qt idles (PythonQt's thread support
is off), so a Python thread doing the refinement would only advance while the GUI runs Python.
A process does not share the GIL: it runs at full speed whatever the GUI does. This class
starts it (Slicer's ``PythonSlicer``, or ``sys.executable`` outside the application) in its own
process group, so that Cancel ends it and anything it started (TotalSegmentator); a reader
thread only parses its JSON progress lines and stores them; the main thread polls ``state()``
and ``done`` (both cheap and non-blocking). No ``slicer``/``qt`` import: headless-testable.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from LiverTumorRefineLib.errors import RefineCancelled, RefineError

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the LiverTumorRefineLib package
WORKER_MODULE = "LiverTumorRefineLib.worker"
KILL_GRACE_S = 3.0  # after Cancel: SIGTERM, then SIGKILL if the worker is still there
LOG_FILE = "worker.log"


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


class WorkerProcess:
    """One worker process for the job file ``job_path`` (its log is written beside it)."""

    def __init__(self, job_path: str | Path, executable: str | None = None) -> None:
        self.job_path = Path(job_path)
        self.folder = self.job_path.parent
        self._lock = threading.Lock()
        self._fraction, self._message = 0.0, "Starting the refinement process"
        self._error: Optional[dict[str, Any]] = None
        self._finished_line = False
        self._cancelled_at: Optional[float] = None
        self.started = time.perf_counter()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if os.name == "nt":  # no console window; a group taskkill /T can end
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # its own process group: Cancel ends the whole tree
        self._log = open(self.folder / LOG_FILE, "wb")
        try:
            self.process = subprocess.Popen([executable or python_executable(), "-m", WORKER_MODULE, "--job",
                                             str(self.job_path)], stdout=subprocess.PIPE, stderr=self._log,
                                            stdin=subprocess.DEVNULL, cwd=str(self.folder), env=env, **kwargs)
        except OSError as exc:
            self._log.close()
            raise RefineError(f"The refinement process could not be started ({exc}): reinstall the extension.") from None
        self._reader = threading.Thread(target=self._read, name="LiverTumorRefine-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Reader thread: parse the worker's lines and store them; nothing else."""
        for raw in self.process.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                logging.info("LiverTumorRefine worker: %s", raw.decode(errors="replace").rstrip())
                continue
            with self._lock:
                if "progress" in record:
                    self._fraction, self._message = float(record["progress"]), str(record.get("message", ""))
                elif "error" in record:
                    self._error = record
                elif "done" in record:
                    self._finished_line = True
        self.process.stdout.close()

    def state(self) -> tuple[float, str]:
        """(fraction 0-1, message) of the worker's last progress line."""
        with self._lock:
            return self._fraction, self._message

    @property
    def done(self) -> bool:
        """The process has ended (non-blocking; also finishes a Cancel that SIGTERM did not end)."""
        if self.process.poll() is not None:
            return True
        if self._cancelled_at is not None and time.perf_counter() - self._cancelled_at > KILL_GRACE_S:
            self._signal(kill=True)
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block (releasing the GIL) until the process ends; False on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.done:
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                return False
            try:
                self.process.wait(0.2 if left is None else min(0.2, left))
            except subprocess.TimeoutExpired:
                pass
        return True

    def cancel(self) -> None:
        """End the worker and everything it started; ``done`` turns True soon after."""
        if self._cancelled_at is None:
            self._cancelled_at = time.perf_counter()
        if self.process.poll() is None:
            self._signal(kill=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled_at is not None

    def _signal(self, kill: bool) -> None:
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            else:
                os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    def check(self) -> None:
        """After ``done``: return if the worker succeeded, else raise what went wrong as a
        ``RefineError`` a user can act on (``RefineCancelled`` after ``cancel``)."""
        self._reader.join(10)  # the last lines (releases the GIL)
        self._log.close()
        code = self.process.returncode
        if self._cancelled_at is not None:
            raise RefineCancelled("Cancelled: the scene is unchanged.")
        with self._lock:
            error, finished = self._error, self._finished_line
        if code == 0 and finished:
            return
        if error is not None and error.get("kind") != "bug":
            raise RefineError(str(error["error"]))
        tail = self.log_tail()
        if tail:
            logging.error("LiverTumorRefine worker log (%s):\n%s", self.folder / LOG_FILE, tail)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            raise RefineError(f"The refinement process was stopped by the system ({name}), most likely because the "
                              "computer ran out of memory: close other programs, choose CPU, or crop the CT to the "
                              "liver, and try again.")
        detail = error["error"] if error is not None else (tail.strip().splitlines() or ["no message"])[-1]
        raise RefineError(f"The refinement process failed (exit code {code}): {detail}. The details are in the "
                          "Python console; please report this problem.")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
