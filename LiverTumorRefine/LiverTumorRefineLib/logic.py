"""Slicer-side logic: the MRML scene in, the engine in the middle, a refined segment out.

The one engine module that talks to Slicer (``slicer``/``vtk``, never ``qt``), imported only by
the Slicer module and its tests. It runs inside the Slicer application and in plain Python with
the PyPI ``slicer-core`` package, so it is tested headless.

A refinement has three phases, so that the GUI can run the slow one on a worker thread:

1. ``prepare`` (main thread): checks the inputs and exports the CT and the coarse (and truth)
   segments as numpy arrays on the CT's voxel grid. The scene is left as it was.
2. ``compute`` (any thread): runs the engine and the metrics on those arrays; it never touches
   MRML. Cancelling through ``progress`` stops here.
3. ``apply`` (main thread): adds the refined segment, sets colours, outlines and terminology and
   fills the metrics table. Nothing is written to the scene before this phase, so a cancelled or
   failed refinement leaves the scene exactly as it was.

``LiverTumorRefineLogic.refine`` runs the three phases in a row; ``startRefine`` returns a
``RefineJob`` whose ``compute`` runs on a ``threading.Thread`` (the module polls it with a timer).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .checks import hu_plausibility
from .errors import RefineCancelled, RefineError
from .io import axial_arrays
from .metrics import compute_metrics

try:  # In Slicer the base class provides getParameterNode(); headless (slicer-core) it is absent.
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogicBase = object

Progress = Callable[[float, str], Optional[bool]]

TRUTH_COLOR = (1.0, 0.0, 0.0)
COARSE_COLOR = (1.0, 1.0, 0.0)
REFINED_COLOR = (0.0, 1.0, 0.0)
OUTLINE_THICKNESS = 2
REFINED_SUFFIX = " refined"
METRICS_TABLE_NAME = "LiverTumorRefine metrics"
ROW_HEADER = "Segmentation"
# (column title, compute_metrics key)
METRIC_COLUMNS = (("Dice", "dice"), ("VOE", "voe"), ("RVD", "rvd"), ("ASSD (mm)", "assd"), ("MSSD (mm)", "mssd"))
# Slicer terminology entry string (vtkSegment tag "TerminologyEntry"): context~category~type~type
# modifier~anatomic context~region~region modifier, each code as scheme^value^meaning.
LIVER_NEOPLASM_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure"
    "~SCT^108369006^Neoplasm"
    "~^^"
    "~Anatomic codes - DICOM master list"
    "~SCT^10200004^Liver"
    "~^^"
)
REFINED_FROM_TAG = "LiverTumorRefine.RefinedFrom"  # on the refined segment: the coarse segment's ID
DEVICES = ("auto", "cpu", "cuda")
# coarse sources of makeCoarseSegment and the name of the segment each adds
COARSE_SEGMENT_NAMES = {"seeds": "Tumour (seeded coarse)", "automatic": "Tumour (automatic coarse)"}

# Fractions of the overall progress bar given to each phase.
_PREPARE_END, _ENGINE_END, _METRICS_END = 0.05, 0.90, 0.95


def _slicer():
    try:
        import slicer
    except ImportError:
        raise RefineError("3D Slicer's libraries are not available: run this inside 3D Slicer, or "
                          "`pip install slicer-core` for headless use.") from None
    return slicer


@dataclass
class RefineInputs:
    """What ``prepare`` hands to ``compute``: plain arrays on the CT grid, safe for a worker thread."""

    volumeNode: Any
    segmentationNode: Any
    coarseSegmentId: str
    coarseName: str
    truthSegmentationNode: Any
    truthSegmentId: Optional[str]
    image: np.ndarray  # (z, y, x) float32 HU
    coarse: np.ndarray  # (z, y, x) bool
    truth: Optional[np.ndarray]  # (z, y, x) bool, or None
    spacing_zyx: tuple[float, float, float]
    device: str
    outlinesOnly: bool = True
    # the CT's IJK axis directions in LPS (3x3, row-major, columns = axes), as SimpleITK stores them
    direction_lps: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class RefineOutcome:
    """What ``compute`` hands to ``apply``."""

    mask: np.ndarray  # (z, y, x) bool, refined, on the CT grid
    stats: dict[str, Any]
    metrics: Optional[dict[str, dict[str, float]]]  # {"coarse": {...}, "refined": {...}}
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LiverTumorRefineResult:
    """Returned by ``refine``/``RefineJob.finish``."""

    refinedSegmentId: str
    segmentationNode: Any
    tableNode: Any  # vtkMRMLTableNode, or None without a truth segment
    metrics: Optional[dict[str, dict[str, float]]]
    patches: int
    seconds: dict[str, float]  # the engine's timings plus "overall" (export, engine, metrics, scene)
    device: str
    notes: list[str]  # messages for the user (e.g. GPU out of memory, finished on the CPU)
    stats: dict[str, Any]


class LiverTumorRefineLogic(_LogicBase):
    """Refines a coarse tumour segment of a CT in the MRML scene.

    ``weights``: None for the model shipped in ``Resources/Models``, a model file, or a BRNet
    (``torch.nn.Module``); ``batchSize``: patches per inference batch.
    """

    def __init__(self, weights: Any = None, batchSize: int = 128) -> None:
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self.weights = weights
        self.batchSize = batchSize
        self._refiners: dict[str, Any] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- one call
    def refine(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None, truthSegmentId=None,
               device: str = "auto", progress: Progress | None = None, outlinesOnly: bool = True) -> LiverTumorRefineResult:
        """Refine ``coarseSegmentId`` of ``segmentationNode`` on the CT ``volumeNode``.

        Adds "<coarse name> refined" to the same segmentation node (replacing an earlier one) and,
        with a truth segment, fills the "LiverTumorRefine metrics" table. ``progress(fraction,
        message)`` returning False cancels with ``RefineCancelled``; the scene is then unchanged.
        """
        inputs = self.prepare(volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode, truthSegmentId,
                              device, progress, outlinesOnly)
        outcome = self.compute(inputs, progress)
        return self.apply(inputs, outcome, progress)

    def startRefine(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None,
                    truthSegmentId=None, device: str = "auto", outlinesOnly: bool = True) -> "RefineJob":
        """Prepare on this (main) thread and start ``compute`` on a worker thread."""
        inputs = self.prepare(volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode, truthSegmentId,
                              device, None, outlinesOnly)
        job = RefineJob(self, inputs)
        job.start()
        return job

    # ---------------------------------------------------------------- phase 1: main thread, read only
    def prepare(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None, truthSegmentId=None,
                device: str = "auto", progress: Progress | None = None, outlinesOnly: bool = True) -> RefineInputs:
        """Check the inputs and export them as arrays on the CT grid; the scene is not changed."""
        _slicer()  # a clear error outside Slicer
        _report(progress, 0.0, "Reading the CT and the segments")
        device = _check_device(device)
        _check_volume(volumeNode)
        coarseName = self._checkSegment(segmentationNode, coarseSegmentId, "coarse")
        if truthSegmentationNode is not None and not truthSegmentId:
            raise RefineError("A reference (truth) segmentation is selected but no segment in it: choose the truth "
                              "segment, or clear the reference segmentation.")
        truthName = None
        if truthSegmentationNode is not None:
            truthName = self._checkSegment(truthSegmentationNode, truthSegmentId, "reference (truth)")
            if truthSegmentationNode is segmentationNode and truthSegmentId == coarseSegmentId:
                raise RefineError("The same segment is chosen as coarse and as reference (truth): pick the ground-truth "
                                  "segment as reference.")

        image, spacing_zyx = _ct_array(volumeNode)
        coarse = export_segment_mask(segmentationNode, coarseSegmentId, volumeNode)
        if not coarse.any():
            raise RefineError(f"The coarse segment '{coarseName}' lies outside the CT '{volumeNode.GetName()}': "
                              "check that the segmentation belongs to this CT (same patient and series).")
        truth = None
        if truthSegmentationNode is not None:
            truth = export_segment_mask(truthSegmentationNode, truthSegmentId, volumeNode)
            if not truth.any():
                raise RefineError(f"The reference (truth) segment '{truthName}' lies outside the CT "
                                  f"'{volumeNode.GetName()}': check that it belongs to this CT.")
        _report(progress, _PREPARE_END, "Segments exported")
        return RefineInputs(volumeNode, segmentationNode, coarseSegmentId, coarseName, truthSegmentationNode,
                            truthSegmentId, image, coarse, truth, spacing_zyx, device, outlinesOnly,
                            _direction_lps(volumeNode))

    @staticmethod
    def _checkSegment(segmentationNode, segmentId, role: str) -> str:
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise RefineError(f"No segmentation is selected for the {role} segment: choose the segmentation that "
                              "holds it.")
        if not segmentId:
            raise RefineError(f"No {role} segment is selected in '{segmentationNode.GetName()}': choose the tumour "
                              "segment to use.")
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if segment is None:
            raise RefineError(f"The {role} segment is no longer in '{segmentationNode.GetName()}' (deleted?): "
                              "choose another segment.")
        if _segment_is_empty(segmentationNode, segmentId):
            raise RefineError(f"The {role} segment '{segment.GetName()}' is empty: draw or import the tumour "
                              "outline first, then refine.")
        return segment.GetName()

    # ---------------------------------------------------------------- coarse segments the user has not drawn
    def makeCoarseSegment(self, volumeNode, source: str, seedsNode=None, segmentationNode=None, device: str = "auto",
                          progress: Progress | None = None) -> tuple[Any, str]:
        """Add a coarse tumour segment made from one point per lesion (``source`` "seeds", a
        markups point list ``seedsNode``) or by the coarse network ("automatic").

        The segment is new (existing segments are never replaced) and goes into
        ``segmentationNode``, or into a new segmentation node when None. Returns the node and
        the segment ID, ready for ``refine``."""
        _check_volume(volumeNode)
        device = _check_device(device)
        if source not in COARSE_SEGMENT_NAMES:
            raise RefineError(f"Unknown coarse source {source!r}: choose one of {', '.join(COARSE_SEGMENT_NAMES)}.")
        image, spacing_zyx = _ct_array(volumeNode)
        _report(progress, 0.0, "Making the coarse segment")
        if source == "seeds":
            from .seeded import grow_from_seeds

            mask = grow_from_seeds(image, self.seedVoxels(seedsNode, volumeNode), spacing_zyx)
        else:
            from .autoseg import Segmenter

            axial, _, spacing, back = axial_arrays(image, None, spacing_zyx, _direction_lps(volumeNode))
            labels = Segmenter(device=device).segment(axial, spacing, progress)
            mask = back(labels == 2)
            if not mask.any():
                raise RefineError("The automatic coarse segmentation found no tumour in this CT: place one point "
                                  "inside each lesion and use the seeds instead.")
        return self._addCoarseSegment(volumeNode, segmentationNode, mask, COARSE_SEGMENT_NAMES[source])

    @staticmethod
    def seedVoxels(seedsNode, volumeNode) -> list[tuple[float, float, float]]:
        """The control points of a markups node as (k, j, i) voxel indices of ``volumeNode``
        (transforms of either node applied); a point outside the CT is an error naming it."""
        slicer = _slicer()
        import vtk

        if seedsNode is None or seedsNode.GetNumberOfControlPoints() == 0:
            raise RefineError("No seed points: place one point inside each lesion (Markups point list), then try again.")
        worldToVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
        voxels = []
        for n in range(seedsNode.GetNumberOfControlPoints()):
            world = [0.0, 0.0, 0.0]
            seedsNode.GetNthControlPointPositionWorld(n, world)
            i, j, k, _ = rasToIjk.MultiplyPoint(list(worldToVolume.TransformPoint(world)) + [1.0])
            if any(not -0.5 <= v < size - 0.5 for v, size in zip((k, j, i), shape)):
                raise RefineError(f"Seed point '{seedsNode.GetNthControlPointLabel(n)}' lies outside the CT "
                                  f"'{volumeNode.GetName()}': move it into a lesion on this CT.")
            voxels.append((k, j, i))
        return voxels

    def _addCoarseSegment(self, volumeNode, segmentationNode, mask: np.ndarray, name: str) -> tuple[Any, str]:
        if segmentationNode is None:
            segmentationNode = volumeNode.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                       f"{volumeNode.GetName()} coarse")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        unique, count = name, 1
        while unique in names:  # a second run adds "... 2": the first coarse segment stays as it was
            count += 1
            unique = f"{name} {count}"
        segment = _tumour_segment(unique, COARSE_COLOR, _oriented_image_from_mask(mask, volumeNode, segmentationNode))
        segmentId = segmentation.GenerateUniqueSegmentID(unique)
        segmentation.AddSegment(segment, segmentId)
        segmentation.GetSegment(segmentId).SetColor(*COARSE_COLOR)
        return segmentationNode, segmentId

    # ---------------------------------------------------------------- phase 2: any thread, no MRML
    def compute(self, inputs: RefineInputs, progress: Progress | None = None) -> RefineOutcome:
        """Run the engine (and the metrics, with a truth segment) on the prepared arrays."""
        t0 = time.perf_counter()
        notes: list[str] = []

        def engine_progress(fraction: float, message: str):
            return None if progress is None else progress(
                _PREPARE_END + (_ENGINE_END - _PREPARE_END) * float(fraction), message)

        warning = hu_plausibility(inputs.image)
        if warning:
            notes.append(warning)
        # Patches are axial: a sagittal or coronal volume is refined in its axial view and put back.
        image, coarse, spacing, back = axial_arrays(inputs.image, inputs.coarse, inputs.spacing_zyx, inputs.direction_lps)
        _report(progress, _PREPARE_END, "Loading the refinement model")
        refiner = self._refiner(inputs.device)
        requested = str(refiner.device)
        try:
            result = refiner.refine(image, coarse, spacing, engine_progress)
        except RefineError:
            raise
        except Exception as exc:  # noqa: BLE001 - only CUDA OOM is handled, the rest is re-raised
            if not _is_cuda_oom(exc) or requested == "cpu":
                raise
            self._forget(inputs.device)
            notes.append("The GPU ran out of memory; the refinement ran on the CPU instead (slower). Close other "
                         "GPU programs or choose CPU to skip the GPU attempt.")
            logging.warning("LiverTumorRefine: CUDA out of memory (%s); retrying on the CPU", exc)
            result = self._refiner("cpu").refine(image, coarse, spacing, engine_progress)
        device_used = str(result.stats.get("device", requested))
        if requested.startswith("cuda") and device_used == "cpu" and not notes:
            # The engine itself moved to the CPU after running out of GPU memory part-way.
            self._forget(inputs.device)
            notes.append("The GPU ran out of memory part-way; the refinement finished on the CPU (slower).")
        mask = back(np.asarray(result.mask, dtype=bool))
        if mask.shape != inputs.coarse.shape:
            raise RuntimeError(f"engine returned a mask of shape {mask.shape} for a CT of shape {inputs.coarse.shape}")
        metrics = None
        if inputs.truth is not None:
            _report(progress, _ENGINE_END, "Computing metrics")
            metrics = {"coarse": compute_metrics(inputs.truth, inputs.coarse, inputs.spacing_zyx),
                       "refined": compute_metrics(inputs.truth, mask, inputs.spacing_zyx)}
        _report(progress, _METRICS_END, "Refinement computed")
        return RefineOutcome(mask, dict(result.stats), metrics, notes, time.perf_counter() - t0)

    def _refiner(self, device: str):
        """A cached engine ``Refiner`` for ``device`` (loading the model takes a moment)."""
        with self._lock:
            refiner = self._refiners.get(device)
            if refiner is None:
                try:
                    from .refiner import Refiner
                except ImportError as exc:
                    if getattr(exc, "name", "") == "torch" or "torch" in str(exc):
                        raise RefineError("PyTorch is not installed: install it with the PyTorch Utils module "
                                          "(PyTorch extension), restart 3D Slicer and try again.") from None
                    raise
                refiner = Refiner(self.weights, device=device, batch_size=self.batchSize)
                self._refiners[device] = refiner
            return refiner

    def _forget(self, device: str) -> None:
        with self._lock:
            self._refiners.pop(device, None)

    # ---------------------------------------------------------------- phase 3: main thread, writes
    def apply(self, inputs: RefineInputs, outcome: RefineOutcome, progress: Progress | None = None) -> LiverTumorRefineResult:
        """Write the refined segment, display settings and metrics table into the scene."""
        t0 = time.perf_counter()
        # Last chance to cancel: after this check the scene is modified.
        _report(progress, _METRICS_END, "Adding the refined segment")
        segmentationNode = inputs.segmentationNode
        for node, what in ((segmentationNode, "segmentation"), (inputs.volumeNode, "CT"),
                           (inputs.truthSegmentationNode, "reference segmentation")):
            if node is not None and node.GetScene() is None:
                raise RefineError(f"The {what} was closed while refining: nothing was added.")
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSegment(inputs.coarseSegmentId) is None:
            raise RefineError("The coarse segment was deleted while refining: nothing was added.")
        refinedId = self._writeRefinedSegment(inputs, outcome.mask)
        self._applyDisplay(inputs, refinedId)
        tableNode = None
        if outcome.metrics is not None:
            tableNode = self._writeMetricsTable(inputs.volumeNode.GetScene() or segmentationNode.GetScene(),
                                                outcome.metrics)
        seconds = dict(outcome.stats.get("seconds", {}))
        seconds["overall"] = outcome.seconds + (time.perf_counter() - t0)
        if progress is not None:
            progress(1.0, "Done")  # the scene is written: cancelling now has no effect
        return LiverTumorRefineResult(refinedId, segmentationNode, tableNode, outcome.metrics,
                                      int(outcome.stats.get("patches", 0)), seconds,
                                      str(outcome.stats.get("device", "")), list(outcome.notes), dict(outcome.stats))

    def findRefinedSegmentId(self, segmentationNode, coarseSegmentId: str) -> Optional[str]:
        """ID of the segment an earlier run made from ``coarseSegmentId``, or None."""
        segmentation = segmentationNode.GetSegmentation()
        coarse = segmentation.GetSegment(coarseSegmentId)
        byName = None
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            if segmentId == coarseSegmentId:
                continue
            segment = segmentation.GetSegment(segmentId)
            tag = _tag(segment, REFINED_FROM_TAG)
            if tag == coarseSegmentId:
                return segmentId
            if tag is None and coarse is not None and segment.GetName() == coarse.GetName() + REFINED_SUFFIX:
                byName = byName or segmentId
        return byName

    def _writeRefinedSegment(self, inputs: RefineInputs, mask: np.ndarray) -> str:
        segmentationNode = inputs.segmentationNode
        segmentation = segmentationNode.GetSegmentation()
        segment = _tumour_segment(inputs.coarseName + REFINED_SUFFIX, REFINED_COLOR,
                                  _oriented_image_from_mask(mask, inputs.volumeNode, segmentationNode))
        segment.SetTag(REFINED_FROM_TAG, inputs.coarseSegmentId)
        previous = self.findRefinedSegmentId(segmentationNode, inputs.coarseSegmentId)
        wasModifying = segmentationNode.StartModify()
        try:
            if previous is not None:
                index = segmentation.GetSegmentIndex(previous)
                segmentation.RemoveSegment(previous)
                before = segmentation.GetNthSegmentID(index) if index < segmentation.GetNumberOfSegments() else ""
                refinedId = previous
                segmentation.AddSegment(segment, refinedId, before or "")
            else:
                refinedId = segmentation.GenerateUniqueSegmentID(inputs.coarseName + REFINED_SUFFIX)
                segmentation.AddSegment(segment, refinedId)
            segmentation.GetSegment(refinedId).SetColor(*REFINED_COLOR)
        finally:
            segmentationNode.EndModify(wasModifying)
        return refinedId

    def _applyDisplay(self, inputs: RefineInputs, refinedId: str) -> None:
        inputs.segmentationNode.GetSegmentation().GetSegment(inputs.coarseSegmentId).SetColor(*COARSE_COLOR)
        if inputs.truthSegmentationNode is not None:
            inputs.truthSegmentationNode.GetSegmentation().GetSegment(inputs.truthSegmentId).SetColor(*TRUTH_COLOR)
        self.setOutlineDisplay(inputs.segmentationNode, [inputs.coarseSegmentId, refinedId], inputs.outlinesOnly)
        if inputs.truthSegmentationNode is not None:
            self.setOutlineDisplay(inputs.truthSegmentationNode, [inputs.truthSegmentId], inputs.outlinesOnly)

    @staticmethod
    def setOutlineDisplay(segmentationNode, segmentIds, outlinesOnly: bool = True) -> None:
        """Show ``segmentIds`` in 2D as outlines of thickness 2, without fill when ``outlinesOnly``.

        Other segments keep their own fill and outline settings; the thickness belongs to the
        whole segmentation node (Slicer has no per-segment thickness).
        """
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
        wasModifying = display.StartModify()
        try:
            display.SetVisibility(True)
            display.SetVisibility2DOutline(True)  # node-wide switch: per-segment outlines need it on
            display.SetSliceIntersectionThickness(OUTLINE_THICKNESS)
            for segmentId in segmentIds:
                display.SetSegmentVisibility(segmentId, True)
                display.SetSegmentVisibility2DOutline(segmentId, True)
                display.SetSegmentOpacity2DOutline(segmentId, 1.0)
                display.SetSegmentVisibility2DFill(segmentId, not outlinesOnly)
        finally:
            display.EndModify(wasModifying)

    @staticmethod
    def _writeMetricsTable(scene, metrics: dict[str, dict[str, float]]):
        slicer = _slicer()
        import vtk

        table = None
        for node in _nodes_by_class(scene, "vtkMRMLTableNode"):
            if node.GetName() == METRICS_TABLE_NAME:
                table = node
                break
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", METRICS_TABLE_NAME)
        wasModifying = table.StartModify()
        try:
            table.RemoveAllColumns()
            names = vtk.vtkStringArray()
            names.SetName(ROW_HEADER)
            columns = []
            for title, _ in METRIC_COLUMNS:
                column = vtk.vtkDoubleArray()
                column.SetName(title)
                columns.append(column)
            for row in ("coarse", "refined"):
                names.InsertNextValue(row)
                for column, (_, key) in zip(columns, METRIC_COLUMNS):
                    column.InsertNextValue(float(metrics[row][key]))
            table.AddColumn(names)
            for column in columns:
                table.AddColumn(column)
            for title, key in METRIC_COLUMNS:
                if key in ("assd", "mssd"):
                    table.SetColumnUnitLabel(title, "mm")
            table.SetUseFirstColumnAsRowHeader(True)
            table.SetLocked(True)  # results, not for editing
        finally:
            table.EndModify(wasModifying)
        table.Modified()
        return table


class RefineJob:
    """A refinement whose ``compute`` phase runs on a worker thread.

    The caller (the module's timer on the main thread) polls ``state()``, may ``cancel()``, and
    calls ``finish()`` once ``done``: it writes the scene on the calling thread, or raises the
    worker's error (``RefineCancelled`` after a cancel).
    """

    def __init__(self, logic: LiverTumorRefineLogic, inputs: RefineInputs) -> None:
        self.logic, self.inputs = logic, inputs
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._fraction, self._message = 0.0, "Starting"
        self._outcome: Optional[RefineOutcome] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="LiverTumorRefine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _progress(self, fraction: float, message: str) -> bool:
        with self._lock:
            self._fraction, self._message = float(fraction), message
        return not self._cancel.is_set()

    def _run(self) -> None:
        try:
            self._outcome = self.logic.compute(self.inputs, self._progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by finish()
            self._error = exc
        finally:
            self._done.set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def state(self) -> tuple[float, str]:
        with self._lock:
            return self._fraction, self._message

    def finish(self) -> LiverTumorRefineResult:
        """Apply the result on this thread (call once ``done``); raises what the worker raised."""
        if not self._done.is_set():
            raise RuntimeError("RefineJob.finish() called before the worker finished")
        if self._error is not None:
            raise self._error
        if self._cancel.is_set():
            raise RefineCancelled()
        return self.logic.apply(self.inputs, self._outcome, self._progress)


# -------------------------------------------------------------------- helpers
def export_segment_mask(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """Segment ``segmentId`` as a bool (z, y, x) array on ``referenceVolumeNode``'s voxel grid.

    Uses ``ExportSegmentsToLabelmapNode`` with the reference volume, so the segmentation may have
    another spacing, extent, origin or (linear) parent transform. The temporary labelmap and
    the display and colour nodes the export creates are removed again: the scene is unchanged.
    """
    slicer = _slicer()
    import vtk

    scene = referenceVolumeNode.GetScene() or segmentationNode.GetScene()
    if scene is None:
        raise RefineError("The CT and segmentation must be in the Slicer scene.")
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.SetName("__LiverTumorRefine_export__")
    labelmap.SetHideFromEditors(True)
    scene.AddNode(labelmap)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        ok = logic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap, referenceVolumeNode,
                                                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok or labelmap.GetImageData() is None:
            raise RefineError(f"Could not export segment '{segmentId}' onto the CT grid: if the segmentation has a "
                              "non-linear transform, harden it first (Data module, right-click, Harden transform).")
        mask = slicer.util.arrayFromVolume(labelmap) != 0
        expected = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
        if mask.shape != expected:
            raise RuntimeError(f"exported mask {mask.shape} does not match the CT grid {expected}")
        return np.array(mask, dtype=bool, copy=True)
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            scene.RemoveNode(node)


def _segment_is_empty(segmentationNode, segmentId: str) -> bool:
    """True when the segment has no voxel (binary labelmap source) or no geometry (surfaces)."""
    slicer = _slicer()
    segmentation = segmentationNode.GetSegmentation()
    labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segment = segmentation.GetSegment(segmentId)
    data = segment.GetRepresentation(labelmapName)
    if data is None:
        sourceName = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
        data = segment.GetRepresentation(sourceName())
        if data is None:
            return True
        return data.GetNumberOfPoints() == 0
    if data.GetPointData() is None or data.GetPointData().GetScalars() is None:
        return True
    from vtk.util.numpy_support import vtk_to_numpy

    values = vtk_to_numpy(data.GetPointData().GetScalars())
    return not np.any(values == segment.GetLabelValue())


def _oriented_image_from_mask(mask: np.ndarray, volumeNode, segmentationNode):
    """A vtkOrientedImageData holding ``mask`` on the CT grid, in the segmentation's coordinates."""
    slicer = _slicer()
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    volumeParent, segmentationParent = volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode()
    if volumeParent is not segmentationParent:
        volumeToSegmentation = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volumeParent, segmentationParent,
                                                                          volumeToSegmentation):
            raise RefineError("The CT or the segmentation is under a non-linear transform: harden the transforms "
                              "(Data module, right-click, Harden transform) and refine again.")
        vtk.vtkMatrix4x4.Multiply4x4(volumeToSegmentation, ijkToRas, ijkToRas)
    image.SetImageToWorldMatrix(ijkToRas)
    return image


def _tumour_segment(name: str, color, image):
    """A new liver-neoplasm segment with a fixed name and colour that brings its own labelmap
    ``image``: it gets its own layer, so it may overlap the coarse and truth segments, which
    keep every voxel."""
    slicer = _slicer()
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    segment.SetColor(*color)
    segment.SetTerminology(LIVER_NEOPLASM_TERMINOLOGY)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image)
    return segment


def _direction_lps(volumeNode) -> tuple[float, ...]:
    """The volume's IJK axis directions in LPS, row-major with one column per axis (SimpleITK's
    layout): RAS rows 0 and 1 change sign."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    return tuple((-1.0 if row < 2 else 1.0) * matrix.GetElement(row, col) for row in range(3) for col in range(3))


def _check_volume(volumeNode) -> None:
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise RefineError("No CT volume is selected: load the CT and choose it as the input volume.")
    if volumeNode.GetImageData() is None or min(volumeNode.GetImageData().GetDimensions()) < 1:
        raise RefineError(f"The volume '{volumeNode.GetName()}' holds no image data: load the CT again.")
    if volumeNode.GetImageData().GetDimensions()[2] < 2:
        raise RefineError(f"The volume '{volumeNode.GetName()}' is a single slice: refinement needs a 3D CT.")


def _ct_array(volumeNode) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The CT as a float32 (k, j, i) copy and its spacing in that order."""
    image = np.array(_slicer().util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    if image.ndim != 3:
        raise RefineError(f"The volume '{volumeNode.GetName()}' is not a single-component 3D image "
                          "(colour or vector volume?): choose the CT.")
    spacing_xyz = volumeNode.GetSpacing()
    return image, (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))


def _nodes_by_class(scene, className: str):
    nodes = scene.GetNodesByClass(className)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _tag(segment, name: str) -> Optional[str]:
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(name, value):
        return None
    return str(value) or None


def _check_device(device: str) -> str:
    device = {"gpu": "cuda"}.get(str(device).lower(), str(device).lower())
    if device not in DEVICES:
        raise RefineError(f"Unknown device '{device}': choose Auto, CPU or GPU.")
    if device == "cuda":
        try:
            import torch
        except ImportError:
            return device  # reported by compute() with the install hint
        if not torch.cuda.is_available():
            raise RefineError("GPU was chosen but PyTorch sees no CUDA GPU on this computer: choose Auto or CPU.")
    return device


def _is_cuda_oom(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower()


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None and progress(fraction, message) is False:
        raise RefineCancelled()
