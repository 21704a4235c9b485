"""The "Update on each click" option: corrective clicks re-run the seeded job (Qt side).

The decision (which markups events count, debounce, one job at a time, nothing to do when the
defined points did not change) is ``LiverTumorRefineLib.scene.clicks.ClickTrigger``, tested
headless; this file only polls it from a Qt timer on the main thread.
"""
from typing import Callable

import qt

from LiverTumorRefineLib.scene.clicks import ClickTrigger


class ClickPanel:
    """Polls the trigger every 100 ms while the option is on; ``start()`` runs the seeded job again
    (replacing its coarse and refined segments), ``running()`` says whether a job runs now."""

    def __init__(self, start: Callable[[], None], running: Callable[[], bool]) -> None:
        self.start, self.running = start, running
        self.trigger = ClickTrigger()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self._poll)

    def update(self, positive, negative, enabled: bool) -> None:
        """Watch the current point lists; poll only while the option is on."""
        self.trigger.observe(positive, negative)
        self.trigger.enabled = bool(enabled)
        if enabled and not self.timer.isActive():
            self.timer.start()
        elif not enabled:
            self.timer.stop()

    def started(self) -> None:
        """A job started with the points as they are now."""
        self.trigger.markRun()

    def finished(self, seeded: bool) -> None:
        """A job gave a result; clicks update it when it came from seed points."""
        self.trigger.armed = seeded

    def _poll(self) -> None:
        if self.trigger.due(self.running()):
            self.start()

    def cleanup(self) -> None:
        """Stop polling and watching; the next seeded result arms it again."""
        self.timer.stop()
        self.trigger.stop()
        self.trigger.armed = False
