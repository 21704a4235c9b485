"""The "Lesion review" section of the module: the lesion table, navigation and decisions.

The table node and the decisions belong to ``LiverTumorRefineLib.scene.lesions``; this class only
connects the widgets of the module's .ui (``self.ui``) to it. Clicking a row (or Next/Previous,
also as keyboard shortcuts while the module is shown) centres and zooms the slice views on that
lesion; Accept, Reject, Accept all and Undo change the refined segment through the Logic.
"""
import logging

import qt
import slicer

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.scene import lesions

NEXT_KEY, PREVIOUS_KEY = "Shift+N", "Shift+P"


class LesionReviewPanel:
    """Drives the lesion review widgets; ``logic`` is the module's ``LiverTumorRefineLogic``."""

    def __init__(self, ui, logic) -> None:
        self.ui, self.logic = ui, logic
        self._moving = False  # re-selecting the row after a decision must not move the views again
        self.ui.lesionTableView.connect("selectionChanged()", self.onSelectionChanged)
        self.ui.previousLesionButton.connect("clicked(bool)", lambda: self.step(-1))
        self.ui.nextLesionButton.connect("clicked(bool)", lambda: self.step(1))
        self.ui.acceptLesionButton.connect("clicked(bool)", lambda: self.decide(lesions.ACCEPTED))
        self.ui.rejectLesionButton.connect("clicked(bool)", lambda: self.decide(lesions.REJECTED))
        self.ui.acceptAllLesionsButton.connect("clicked(bool)", lambda: self._change(self.logic.review.acceptAll))
        self.ui.undoDecisionButton.connect("clicked(bool)", lambda: self._change(self.logic.review.undoDecision))
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.shortcuts = []
        for key, offset in ((NEXT_KEY, 1), (PREVIOUS_KEY, -1)):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.setContext(qt.Qt.ApplicationShortcut)  # also while the mouse is in a slice view
            shortcut.connect("activated()", lambda offset=offset: self.step(offset))
            shortcut.setEnabled(False)
            self.shortcuts.append(shortcut)
        self.update()

    def setShortcutsEnabled(self, enabled: bool) -> None:
        """Next/Previous keys act only while the module is shown (``enter``/``exit``)."""
        for shortcut in self.shortcuts:
            shortcut.setEnabled(enabled)

    def cleanup(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    # ---------------------------------------------------------------- state
    def table(self):
        return self.ui.lesionTableView.mrmlTableNode()

    def rows(self) -> list:
        table = self.table()
        return self.logic.review.lesions(table) if table is not None else []

    def currentRow(self) -> int:
        row = self.ui.lesionTableView.currentIndex().row()
        return row if 0 <= row < len(self.rows()) else -1

    def update(self) -> None:
        """Buttons, the unsure-overlay switch and the summary line for the table shown."""
        rows, row = self.rows(), self.currentRow()
        for button in (self.ui.previousLesionButton, self.ui.nextLesionButton, self.ui.acceptAllLesionsButton):
            button.enabled = bool(rows)
        self.ui.acceptLesionButton.enabled = self.ui.rejectLesionButton.enabled = row >= 0
        table = self.table()
        self.ui.undoDecisionButton.enabled = table is not None and self.logic.review.canUndo(table)
        uncertain = self._uncertainSegment()
        self.ui.showUncertaintyCheckBox.enabled = uncertain is not None
        if uncertain is None:
            self.ui.showUncertaintyCheckBox.checked = False
        flagged = sum(1 for r in rows if r["flags"])
        decided = sum(1 for r in rows if r["decision"])
        self.ui.lesionStatusLabel.text = (f"{len(rows)} lesions, {flagged} flagged (look at these first), "
                                          f"{decided} decided." if rows else "")

    def _uncertainSegment(self):
        table = self.table()
        if table is None:
            return None
        segmentationNode = table.GetNodeReference(lesions.SEGMENTATION_ROLE)
        refinedId = table.GetAttribute(lesions.REFINED_ATTRIBUTE)
        if segmentationNode is None or not refinedId:
            return None
        segmentId = self.logic.findUncertainSegmentId(segmentationNode, refinedId)
        return None if segmentId is None else (segmentationNode, segmentId)

    # ---------------------------------------------------------------- navigation
    def onSelectionChanged(self) -> None:
        row = self.currentRow()
        if row >= 0 and not self._moving:
            self.logic.review.jumpToLesion(self.table(), self.rows()[row]["lesion"])
        self.update()

    def step(self, offset: int) -> None:
        """Select (and so jump to) the next (+1) or previous (-1) lesion, wrapping around."""
        count = len(self.rows())
        if count:
            row = self.currentRow()
            self.ui.lesionTableView.selectRow((row + offset) % count if row >= 0 else (0 if offset > 0 else count - 1))

    # ---------------------------------------------------------------- decisions
    def decide(self, decision: str) -> None:
        row = self.currentRow()
        if row >= 0:
            lesion = self.rows()[row]["lesion"]
            self._change(lambda table: self.logic.review.setDecision(table, lesion, decision))

    def _change(self, change) -> None:
        """Apply ``change(table)``, then show the same row again without moving the views."""
        table, row = self.table(), self.currentRow()
        if table is None:
            return
        try:
            with slicer.util.WaitCursor():
                change(table)
        except Exception as exc:  # noqa: BLE001 - a RefineError or a bug: always a dialog
            if not isinstance(exc, RefineError):
                logging.exception("LiverTumorRefine lesion review failed")
            slicer.util.errorDisplay(str(exc), windowTitle="Liver Tumor Refine")
        self._moving = True
        try:
            if row >= 0:
                self.ui.lesionTableView.selectRow(row)
        finally:
            self._moving = False
        self.update()

    def onShowUncertainty(self, visible: bool) -> None:
        uncertain = self._uncertainSegment()
        if uncertain is not None:
            self.logic.setUncertaintyVisible(*uncertain, visible)
