"""Liver Tumor Refine: refine the boundary of a coarse liver-tumour segment on CT. Slicer 5.8 or later.

Thin Slicer module: the GUI (the lesion review section in ``LiverTumorRefineGui``); the scene logic is
``LiverTumorRefineLib.scene``, the engine the rest of ``LiverTumorRefineLib``. The coarse step and the
refinement run in a worker process (``RefineJob``) polled by a 100 ms timer; Cancel ends it.
"""
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from LiverTumorRefineGui.clickpanel import ClickPanel
from LiverTumorRefineGui.dependencies import ensure_torch
from LiverTumorRefineGui.lesionpanel import LesionReviewPanel
from LiverTumorRefineGui.messages import error_message
from LiverTumorRefineLib.errors import RefineCancelled
from LiverTumorRefineLib.scene.logic import LiverTumorRefineLogic  # noqa: F401  (Slicer finds <Module>Logic here)

DEVICES = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}
# GUI choice -> the logic's coarse source ("mask": refine the selected segment as it is)
COARSE_SOURCES = {"Existing segment": "mask", "Seed points": "seeds", "Automatic": "automatic",
                  "TotalSegmentator": "totalsegmentator"}
# Parameters connectGui cannot bind (it has no connector for segment selectors or table views):
# they are synced by hand below. Testing/test_ui.py checks every parameter is bound one way or the other.
MANUAL_BINDINGS = {"segmentationNode": "coarseSegmentSelector", "coarseSegmentId": "coarseSegmentSelector",
                   "truthSegmentationNode": "truthSegmentSelector", "truthSegmentId": "truthSegmentSelector",
                   "metricsTable": "metricsTableView", "lesionTable": "lesionTableView"}


class LiverTumorRefine(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Liver Tumor Refine"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorRefine contributors"]
        self.parent.helpText = (
            "Refines the boundary of a coarse liver-tumour segment on CT with a boundary patch refinement "
            "network. The result is added as a new segment \"&lt;segment&gt; refined\"; the coarse segment is not "
            "changed. Without a coarse segment, choose Seed points (one click inside each lesion), Automatic "
            "(a built-in coarse network) or TotalSegmentator as the coarse source: a new coarse segment is added, "
            "then refined. "
            "With a reference segment, Dice, VOE, RVD, ASSD and MSSD are shown for coarse and refined. "
            "Reference red, coarse yellow, refined green, drawn as outlines in the slice views.")
        self.parent.acknowledgementText = (
            "Boundary patch refinement with a BRNet (boundary refinement network) on patches along the tumour "
            "boundary. Built on 3D Slicer, PyTorch and SimpleITK.")
        slicer.app.connect("startupCompleted()", lambda: __import__("SegmentEditorRefineBoundaryLib").registerEffect())


@parameterNodeWrapper
class LiverTumorRefineParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    coarseSource: Annotated[str, Choice(list(COARSE_SOURCES))] = "Existing segment"
    seedPoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    updateOnClick: bool = False
    segmentationNode: vtkMRMLSegmentationNode
    coarseSegmentId: str = ""
    truthSegmentationNode: vtkMRMLSegmentationNode
    truthSegmentId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "Auto"
    outlinesOnly: bool = True
    intensityGate: bool = True
    metricsTable: vtkMRMLTableNode
    lesionTable: vtkMRMLTableNode


class LiverTumorRefineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = self._job = self.lesionPanel = None
        self._syncing = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorRefine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorRefineLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for selector in (self.ui.coarseSegmentSelector, self.ui.truthSegmentSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self._segmentSelectorsToParameterNode)
            selector.connect("currentSegmentChanged(QString)", self._segmentSelectorsToParameterNode)
        self.ui.outlinesOnlyCheckBox.connect("toggled(bool)", self.onOutlinesToggled)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.progressBar.hide()
        self.lesionPanel = LesionReviewPanel(self.ui, self.logic)  # the "Lesion review" section
        self.clickPanel = ClickPanel(lambda: self.onApplyButton(replace=True), lambda: self._job is not None)
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:
            self._job.cancel()
            self._job.wait(5)
        self._timer.stop()
        self.logic.stopWorker()
        self.lesionPanel.cleanup()
        self.clickPanel.cleanup()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.lesionPanel.setShortcutsEnabled(True)

    def exit(self):
        self.lesionPanel.setShortcutsEnabled(False)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.cancel()  # its nodes are going away: finish() will not write
        self.clickPanel.cleanup()  # so are the point lists it watches and the result clicks would update
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(LiverTumorRefineParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            self._parameterNode.inputVolume = volumes[0] if volumes else None
        if not self._parameterNode.segmentationNode:
            self._parameterNode.segmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode):
        # Connected once per parameter node, kept on exit(): on Slicer 5.8 connectGui returns no tag, so
        # disconnectGui(tag) is a no-op and a second connectGui would leave a stale connector behind.
        if inputParameterNode and self._parameterNode and inputParameterNode.parameterNode is self._parameterNode.parameterNode:
            return self._onParameterNodeModified()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        if self._syncing:
            return
        self._syncing = True
        try:  # parameter node -> the widgets connectGui does not bind
            p = self._parameterNode
            self.ui.coarseSegmentSelector.setCurrentNode(p.segmentationNode)  # stale IDs are dropped below
            self.ui.coarseSegmentSelector.setCurrentSegmentID(self.logic.validSegmentId(p.segmentationNode, p.coarseSegmentId))
            self.ui.truthSegmentSelector.setCurrentNode(p.truthSegmentationNode)
            self.ui.truthSegmentSelector.setCurrentSegmentID(self.logic.validSegmentId(p.truthSegmentationNode, p.truthSegmentId))
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)
            self.ui.lesionTableView.setMRMLTableNode(p.lesionTable)
            self.lesionPanel.update()
            self.ui.seedPlaceWidget.setCurrentNode(p.seedPoints)
            self.ui.negativePlaceWidget.setCurrentNode(p.negativePoints)
            seeds = COARSE_SOURCES[p.coarseSource] == "seeds"
            self.ui.automaticNoteLabel.visible = COARSE_SOURCES[p.coarseSource] == "automatic"
            for widget in (self.ui.seedPointsLabel, self.ui.seedPointsSelector, self.ui.seedPlaceWidget,
                           self.ui.negativePointsLabel, self.ui.negativePointsSelector, self.ui.negativePlaceWidget,
                           self.ui.updateOnClickCheckBox):
                widget.visible = seeds
            self.clickPanel.update(p.seedPoints, p.negativePoints, seeds and p.updateOnClick)
        finally:
            self._syncing = False
        if ((self.ui.coarseSegmentSelector.currentSegmentID() or "") != p.coarseSegmentId
                or (self.ui.truthSegmentSelector.currentSegmentID() or "") != p.truthSegmentId):
            self._segmentSelectorsToParameterNode()  # the selectors settled elsewhere (first segment, deleted one)
            return
        self._updateButtons()

    def _segmentSelectorsToParameterNode(self, *args):
        if self._parameterNode is None or self._syncing:
            return
        self._syncing = True
        try:
            p = self._parameterNode
            wasModifying = p.StartModify()  # one ModifiedEvent for the four values
            p.segmentationNode = self.ui.coarseSegmentSelector.currentNode()
            p.coarseSegmentId = self.logic.validSegmentId(p.segmentationNode, self.ui.coarseSegmentSelector.currentSegmentID())
            p.truthSegmentationNode = self.ui.truthSegmentSelector.currentNode()
            p.truthSegmentId = self.logic.validSegmentId(p.truthSegmentationNode, self.ui.truthSegmentSelector.currentSegmentID())
            p.EndModify(wasModifying)
        finally:
            self._syncing = False
        self._updateButtons()

    def _refinedSegmentId(self):
        p = self._parameterNode
        if not p or not p.segmentationNode or not p.coarseSegmentId:
            return None
        return self.logic.findRefinedSegmentId(p.segmentationNode, p.coarseSegmentId)

    def _updateButtons(self):
        p = self._parameterNode
        running = self._job is not None
        ready = bool(p and self.logic.canRefine(p.inputVolume, COARSE_SOURCES[p.coarseSource], p.segmentationNode,
                                                p.coarseSegmentId, p.seedPoints))
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = ("Stop the refinement; the scene stays as it was." if running else
                                       "Refine the coarse segment." if ready else
                                       "Choose the CT and the coarse segment (or the seed point list).")
        self.ui.openSegmentEditorButton.enabled = not running and self._refinedSegmentId() is not None

    def onApplyButton(self, replace=False):
        """Apply (or Cancel); ``replace``: a corrective click, updating the seeded segments in place."""
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            self.ui.applyButton.enabled = False
            return
        p = self._parameterNode
        truthNode = p.truthSegmentationNode if p.truthSegmentId else None
        try:  # the coarse step runs in the worker too: nothing enters the scene before the job succeeded
            if not ensure_torch():
                return
            self.logic.setIntensityGate(p.intensityGate)
            with slicer.util.WaitCursor():
                self._job = self.logic.startRefine(p.inputVolume, p.segmentationNode, p.coarseSegmentId, truthNode,
                                                   p.truthSegmentId or None, DEVICES[p.device], p.outlinesOnly,
                                                   COARSE_SOURCES[p.coarseSource], p.seedPoints, p.negativePoints,
                                                   p.coarseSegmentId if replace else None)
            self.clickPanel.started()
        except Exception as exc:  # noqa: BLE001 - a RefineError or a bug: always a dialog, never only the console
            self._showError(exc)
            return
        self.ui.statusLabel.text = ""
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._updateButtons()
        self._timer.start()

    def _poll(self):
        job = self._job
        fraction, message = job.state()
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"{message} (%p%)"
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        try:
            result = job.finish()
        except RefineCancelled:
            self.ui.statusLabel.text = "Cancelled: the scene is unchanged."
        except Exception as exc:  # noqa: BLE001 - a RefineError or a bug: always a dialog
            self._showError(exc)
        else:
            self._showResult(result)
        finally:
            self.ui.progressBar.hide()
            self._updateButtons()

    def _showError(self, exc):
        message = error_message(exc, "LiverTumorRefine")
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="Liver Tumor Refine")

    def _showResult(self, result):
        p = self._parameterNode
        p.segmentationNode, p.coarseSegmentId = result.segmentationNode, result.coarseSegmentId  # a new coarse one
        p.metricsTable = result.tableNode
        p.lesionTable = result.reviewTable  # the lesion review (LiverTumorRefineGui.lesionpanel)
        self.clickPanel.finished(COARSE_SOURCES[p.coarseSource] == "seeds")
        slicer.util.setSliceViewerLayers(background=p.inputVolume, fit=False)
        summary = (f"Refined in {result.seconds['overall']:.1f} s on {result.device.upper()} "
                   f"({result.patches} boundary patches).")
        self.ui.statusLabel.text = " ".join([summary] + result.notes)
        slicer.util.showStatusMessage(summary, 5000)
        if result.notes:
            slicer.util.warningDisplay("\n".join(result.notes), windowTitle="Liver Tumor Refine")

    def onOutlinesToggled(self, outlinesOnly):
        p, refinedId = self._parameterNode, self._refinedSegmentId()
        if refinedId is None:
            return  # applies to the next refinement
        self.logic.setOutlineDisplay(p.segmentationNode, [p.coarseSegmentId, refinedId], outlinesOnly)
        if p.truthSegmentationNode and p.truthSegmentId:
            self.logic.setOutlineDisplay(p.truthSegmentationNode, [p.truthSegmentId], outlinesOnly)

    def onOpenSegmentEditor(self):
        p, refinedId = self._parameterNode, self._refinedSegmentId()
        if refinedId is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.segmentationNode)
        editor.setSourceVolumeNode(p.inputVolume)
        editor.setCurrentSegmentID(refinedId)


class LiverTumorRefineTest(ScriptedLoadableModuleTest):
    """Runs the shared test body (``Testing/Python/slicer_testing.py``), as pytest does headless."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LiverTumorRefine()

    def test_LiverTumorRefine(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "Testing", "Python"))
        import slicer_testing  # the shared test body, shipped beside this file

        self.delayDisplay("Refining a synthetic liver lesion with the shipped model")
        summary = slicer_testing.run_self_test(slicer.mrmlScene)
        self.delayDisplay(f"Test passed: Dice coarse {summary['dice']['coarse']:.3f}, "
                          f"refined {summary['dice']['refined']:.3f}")
