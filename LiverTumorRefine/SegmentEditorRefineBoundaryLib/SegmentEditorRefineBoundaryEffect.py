"""Segment Editor effect "Refine boundary": the selected tumour segment refined in place.

Only the Qt part lives here (options, progress, the editor's undo and write calls); the work is
``LiverTumorRefineLib.scene.effect`` with the Liver Tumor Refine module's Logic and worker
process, tested headless. The refinement runs in that process and a timer polls it, so the
application stays responsive and Cancel works at any time.
"""
import os

import qt

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from LiverTumorRefineGui.messages import error_message
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.scene.effect import start_segment_refine, summary
from LiverTumorRefineLib.scene.logic import LiverTumorRefineLogic

DEVICES = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}  # shown name -> the Logic's device
POLL_MS = 100
TITLE = "Refine boundary"


class SegmentEditorRefineBoundaryEffect(AbstractScriptedSegmentEditorEffect):
    """Replaces the selected segment by its boundary refinement, through the editor's masking and undo."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = TITLE  # not translated: modules find effects by name
        scriptedEffect.title = TITLE
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None  # made on first use: it finds the shipped model
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorRefineBoundaryEffect.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return ("<html>Refine the boundary of the selected liver-tumour segment on the source volume (CT) with the "
                "Liver Tumor Refine network, in place.<p>Draw or import a rough outline of the lesions, select "
                "the segment, click Refine. The editor's masking settings apply: only the editable area and "
                "intensity range change, and with Overwrite other segments set to None no other segment loses "
                "a voxel. Undo restores the previous outline.</html>")

    def setupOptionsFrame(self):
        self.deviceComboBox = qt.QComboBox()
        self.deviceComboBox.addItems(list(DEVICES))
        self.deviceComboBox.toolTip = "Where the network runs: Auto uses a CUDA GPU when there is one."
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)

        self.applyButton = qt.QPushButton("Refine")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Refine the selected segment's boundary (Undo restores it)."
        self.scriptedEffect.addOptionsWidget(self.applyButton)

        self.progressBar = qt.QProgressBar()
        self.progressBar.hide()
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # the effect does not draw in the views

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Device", "Auto")

    def updateGUIFromMRML(self):
        device = self.scriptedEffect.parameter("Device")
        wasBlocked = self.deviceComboBox.blockSignals(True)
        self.deviceComboBox.setCurrentIndex(max(0, self.deviceComboBox.findText(device)))
        self.deviceComboBox.blockSignals(wasBlocked)
        self.updateButton()

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Device", self.deviceComboBox.currentText)

    def deactivate(self):
        if self.job is not None:  # leaving the effect (or the editor) abandons the refinement
            self.job.cancel()

    def updateButton(self):
        running = self.job is not None
        self.applyButton.text = "Cancel" if running else "Refine"
        self.applyButton.enabled = not (running and self.job.cancelled)
        self.deviceComboBox.enabled = not running

    def onApply(self):
        if self.job is not None:
            self.job.cancel()
            self.statusLabel.text = "Cancelling..."
            self.updateButton()
            return
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        if self.logic is None:
            self.logic = LiverTumorRefineLogic()
        parameters = self.scriptedEffect.parameterSetNode()
        device = DEVICES.get(self.deviceComboBox.currentText, "auto")
        try:
            with slicer.util.WaitCursor():
                self.job = start_segment_refine(self.logic, parameters.GetSourceVolumeNode(),
                                                parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID(),
                                                device)
        except Exception as exc:  # noqa: BLE001 - a RefineError or a bug: always a dialog
            self.showError(exc)
            return
        self.statusLabel.text = ""
        self.progressBar.value = 0
        self.progressBar.show()
        self.updateButton()
        self.timer.start()

    def onPoll(self):
        fraction, message = self.job.state()
        self.progressBar.value = int(round(100 * fraction))
        self.progressBar.format = f"{message} (%p%)"
        if not self.job.done:
            return
        self.timer.stop()
        job, self.job = self.job, None
        try:
            self.writeRefinement(job)
        except RefineCancelled:
            self.statusLabel.text = "Cancelled: the segment is unchanged."
        except Exception as exc:  # noqa: BLE001 - a RefineError or a bug: always a dialog
            self.showError(exc)
        finally:
            self.progressBar.hide()
            self.updateButton()

    def writeRefinement(self, job):
        """Write the finished job's refinement into its segment through the editor (masking, undo)."""
        parameters = self.scriptedEffect.parameterSetNode()
        segmentationNode, segmentId = job.inputs.segmentationNode, job.inputs.coarseSegmentId
        sameSegmentation = parameters is not None and parameters.GetSegmentationNode() is segmentationNode
        # finish() removes the job folder and raises RefineCancelled after a cancel, whatever happens next.
        refinement = job.finish(self.scriptedEffect.referenceGeometryImage() if sameSegmentation else None)
        if not sameSegmentation:
            raise RefineError(f"The Segment Editor left the segmentation '{segmentationNode.GetName()}' while "
                              "refining: nothing was changed. Select it again and refine.")
        if refinement.editedMeanwhile and not slicer.util.confirmOkCancelDisplay(
                f"'{refinement.segmentName}' was edited while it was being refined. Replace it by the refinement "
                "of its earlier outline?", windowTitle=TITLE):
            self.statusLabel.text = "Not applied: the segment keeps your edits."
            return
        if parameters.GetSelectedSegmentID() != segmentId:
            parameters.SetSelectedSegmentID(segmentId)  # the editable area is worked out for the selected segment
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            refinement.labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        self.statusLabel.text = " ".join([summary(refinement)] + refinement.notes)
        if refinement.notes:
            slicer.util.warningDisplay("\n".join(refinement.notes), windowTitle=TITLE)

    def showError(self, exc):
        message = error_message(exc, "Refine boundary")
        self.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle=TITLE)
