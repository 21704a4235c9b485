"""Corrective clicks: when to run the seeded job again after the user adds, moves or deletes a
point, and which lesion each point belongs to (its description, "lesion N").

No Qt here (tested headless): the module's timer calls ``ClickTrigger.due`` every 100 ms, and
starts the job when it says so. Markups send a burst of events per click, and a stream of them
while a point is dragged, so a change is acted on only after ``delay`` seconds without another
one (debounce). One job runs at a time: a change while a job runs waits until it has finished.
A change that leaves the defined points as they were at the last run (a point being placed moves
with the mouse as a preview point; a click selects a point) starts nothing.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from LiverTumorRefineLib.coarse.grouping import lesion_label, lesion_number

# Markups events (vtkMRMLMarkupsNode.h, Slicer 5.8.1) that may change the defined points: a point
# placed, moved (also while dragged), deleted (also markups' own undo of the last point), or unset.
POINT_EVENTS = ("PointPositionDefinedEvent", "PointModifiedEvent", "PointRemovedEvent", "PointPositionUndefinedEvent")
DEFAULT_DELAY = 0.4  # seconds without a new event before a run


def defined_indices(node: Any) -> list[int]:
    """Indices of ``node``'s control points whose position is defined (not being placed, not
    skipped); empty for None."""
    if node is None:
        return []
    import slicer

    defined = slicer.vtkMRMLMarkupsNode.PositionDefined
    return [n for n in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(n) == defined]


def defined_points(node: Any) -> tuple[tuple[float, float, float], ...]:
    """The world positions of ``node``'s defined control points (``defined_indices``)."""
    points = []
    for n in defined_indices(node):
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n, world)
        points.append(tuple(round(float(v), 3) for v in world))
    return tuple(points)


def point_lesions(node: Any) -> list[Optional[int]]:
    """The lesion number each defined control point of ``node`` carries in its description
    ("lesion N", see ``coarse.grouping``), None where it has none; in ``defined_points`` order."""
    return [lesion_number(node.GetNthControlPointDescription(n)) for n in defined_indices(node)]


def label_point_lesions(node: Any, points: tuple, numbers: list[int]) -> int:
    """Write "lesion N" into the empty description of each defined point, when the defined points
    are still ``points`` (a point moved, added or deleted during the job: nothing is written, and
    the next job numbers them). A description the user wrote is kept: that point is numbered
    again by each job. Returns how many descriptions were written."""
    if node is None or defined_points(node) != points or len(numbers) != len(points):
        return 0
    written = 0
    for n, number in zip(defined_indices(node), numbers):
        if not node.GetNthControlPointDescription(n).strip():
            node.SetNthControlPointDescription(n, lesion_label(int(number)))
            written += 1
    return written


class ClickTrigger:
    """Watches the positive and negative point lists and says when to refine again.

    ``enabled``: the "Update on each click" option; ``armed``: a seeded result exists to update
    (set by the caller after a seeded run). ``clock`` is replaceable for tests.
    """

    def __init__(self, delay: float = DEFAULT_DELAY, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay, self.clock = delay, clock
        self.enabled = False
        self.armed = False
        self._nodes: list[Any] = []
        self._observations: list[tuple[Any, int]] = []
        self._changedAt: Optional[float] = None
        self._lastRun: Optional[tuple] = None

    def observe(self, positive: Any, negative: Any = None) -> None:
        """Watch these two point lists (None: none); the old ones are no longer watched."""
        if [positive, negative] == self._nodes:
            return
        self.stop()
        self._nodes = [positive, negative]
        import slicer

        for node in (positive, negative):
            if node is None:
                continue
            for name in POINT_EVENTS:
                event = getattr(slicer.vtkMRMLMarkupsNode, name)
                self._observations.append((node, node.AddObserver(event, self.onPointEvent)))

    def stop(self) -> None:
        """Watch nothing any more (module cleanup, scene close)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations, self._nodes = [], []
        self._changedAt = None

    def onPointEvent(self, caller: Any = None, event: Any = None) -> None:
        """A point changed: (re)start the debounce delay."""
        if self.enabled and self.armed:
            self._changedAt = self.clock()

    @property
    def pending(self) -> bool:
        return self._changedAt is not None

    def snapshot(self) -> tuple:
        """The defined points of both lists now."""
        positive, negative = (self._nodes + [None, None])[:2]
        return defined_points(positive), defined_points(negative)

    def markRun(self) -> None:
        """A seeded job started with the points as they are now (a click or Apply)."""
        self._lastRun = self.snapshot()

    def due(self, running: bool) -> bool:
        """True once when a job should start now: a change is pending, ``delay`` has passed since
        the last event, no job is ``running``, and the defined points differ from the last run's
        (no defined positive point: nothing to run). The run is then recorded."""
        if self._changedAt is None or running or self.clock() - self._changedAt < self.delay:
            return False
        self._changedAt = None
        now = self.snapshot()
        if not (self.enabled and self.armed) or now == self._lastRun or not now[0]:
            return False
        self._lastRun = now
        return True
