"""Slicer-side logic: the MRML scene in, the engine's worker in the middle, segments out.

The one engine module that talks to Slicer (``slicer``/``vtk``, never ``qt``), imported only by
the Slicer module and its tests. It runs inside the Slicer application and in plain Python with
the PyPI ``slicer-core`` package, so it is tested headless.

A refinement has three phases:

1. ``prepare`` (main thread): checks the inputs and writes the CT, the coarse (and truth)
   segments as arrays on the CT's voxel grid, the seed points and the options into a temporary
   job folder (``worker.write_job``). The scene is left as it was.
2. the worker (``LiverTumorRefineLib.worker``): makes the coarse mask when the source is seed
   points, the automatic network or TotalSegmentator, refines it and computes the metrics. It
   never touches MRML. ``startRefine`` runs it in the worker process (``workerprocess``, kept
   between jobs with its models loaded): Slicer's main thread holds the GIL while it idles, so a
   thread would crawl; ``refine`` runs the same code in this process (blocking; scripts and tests).
3. ``apply`` (main thread): adds the coarse segment the worker made, the refined segment, sets
   colours, outlines and terminology and fills the metrics table. Nothing is written to the
   scene before this phase, so a cancelled or failed job leaves the scene exactly as it was.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from LiverTumorRefineLib import worker
from LiverTumorRefineLib.coarse.sources import SOURCES
from LiverTumorRefineLib.device import check_device
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, part, report
from LiverTumorRefineLib.scene.clicks import defined_indices, defined_points, label_point_lesions, point_lesions
from LiverTumorRefineLib.scene.ctfiles import CtFiles
from LiverTumorRefineLib.scene import nodes
from LiverTumorRefineLib.scene.workerprocess import WorkerJob, WorkerServer
from LiverTumorRefineLib.scene.written import WrittenMask

try:  # In Slicer the base class provides getParameterNode(); headless (slicer-core) it is absent.
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogicBase = object

TRUTH_COLOR = (1.0, 0.0, 0.0)
COARSE_COLOR = (1.0, 1.0, 0.0)
REFINED_COLOR = (0.0, 1.0, 0.0)
OUTLINE_THICKNESS = 2
REFINED_SUFFIX = " refined"
METRICS_TABLE_NAME = "LiverTumorRefine metrics"
ROW_HEADER = "Segmentation"
# (column title, compute_metrics key)
METRIC_COLUMNS = (("Dice", "dice"), ("VOE", "voe"), ("RVD", "rvd"), ("ASSD (mm)", "assd"), ("MSSD (mm)", "mssd"))
REFINED_FROM_TAG = "LiverTumorRefine.RefinedFrom"  # on the refined segment: the coarse segment's ID
# The fourth overlay, off by default: where the refinement is unsure. Magenta, far from the red,
# yellow and green outlines (and from their red-green confusion).
UNCERTAIN_SUFFIX = " unsure"
UNCERTAIN_COLOR = (1.0, 0.0, 1.0)
UNCERTAIN_FILL_OPACITY = 0.6
UNCERTAIN_OF_TAG = "LiverTumorRefine.UncertainOf"  # on the overlay segment: the refined segment's ID
# Coarse sources the worker can make a coarse segment from, and the name of the segment each adds
# (the source "mask", an existing segment, adds none).
COARSE_SEGMENT_NAMES = {source.name: source.segment_name for source in SOURCES if source.segment_name}

JOB_FOLDER_PREFIX = "LiverTumorRefine-job-"  # temporary job folders (removed by finish/refine)
# Fractions of the overall progress bar given to each phase.
PREPARE_END, WORKER_END = 0.05, 0.95


@dataclass
class RefineInputs:
    """What ``prepare`` hands to the worker (as a job folder) and to ``apply``."""

    volumeNode: Any
    segmentationNode: Any  # holds the coarse segment; for a made coarse segment: where it goes (None: new node)
    coarseSegmentId: str  # "" until apply adds a made coarse segment
    coarseName: str
    truthSegmentationNode: Any
    truthSegmentId: Optional[str]
    device: str
    outlinesOnly: bool = True
    coarseSource: str = "mask"  # or a key of COARSE_SEGMENT_NAMES
    folder: Optional[Path] = None  # the job folder
    jobPath: Optional[Path] = None
    coarse: Optional[np.ndarray] = None  # the exported coarse and truth masks (CT grid), for the lesion review
    truth: Optional[np.ndarray] = None
    replaceCoarseId: Optional[str] = None  # a made coarse segment to replace in place (corrective clicks)
    seedsNode: Any = None  # the positive point list, and its defined points as sent (their lesions are
    seedPositions: tuple = ()  # written back into the points when they have not changed meanwhile)
    copyCoarse: bool = False  # the coarse segment's segmentation cannot take voxel masks (planar contours)


@dataclass
class RefineOutcome:
    """What the worker hands to ``apply``."""

    mask: np.ndarray  # (z, y, x) bool, refined, on the CT grid
    stats: dict[str, Any]
    metrics: Optional[dict[str, dict[str, float]]]  # {"coarse": {...}, "refined": {...}}
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    coarse: Optional[np.ndarray] = None  # the coarse mask the worker made, or None
    uncertain: Optional[np.ndarray] = None  # where the augmented predictions disagree, or None
    seedLesions: Optional[list[int]] = None  # each positive seed point's lesion number, or None


@dataclass
class LiverTumorRefineResult:
    """Returned by ``refine``/``RefineJob.finish``."""

    refinedSegmentId: str
    segmentationNode: Any
    tableNode: Any  # vtkMRMLTableNode, or None without a truth segment
    metrics: Optional[dict[str, dict[str, float]]]
    patches: int
    seconds: dict[str, float]  # the engine's timings plus "overall" (export, worker, scene)
    device: str
    notes: list[str]  # messages for the user (e.g. GPU out of memory, finished on the CPU)
    stats: dict[str, Any]  # the engine's stats, e.g. "lesions" (per-lesion gate) and "parenchyma_hu"
    coarseSegmentId: str = ""  # the coarse segment refined (new for seeds/automatic/TotalSegmentator)
    reviewTable: Any = None  # the lesion table (vtkMRMLTableNode, see scene.lesions)
    uncertainSegmentId: Optional[str] = None  # the hidden "unsure" overlay segment, when the worker gave one


class LiverTumorRefineLogic(_LogicBase):
    """Refines a coarse tumour segment of a CT in the MRML scene.

    ``weights``: None for the model shipped in ``Resources/Models``, a model file, or a BRNet
    (``torch.nn.Module``); ``batchSize``: patches per inference batch; ``refinerOptions``: more
    ``Refiner`` options (``tta``, ``agreement``, ``removal_agreement``, ``min_kept``, ``intensity_gate``; ``tta`` sets
    the orientations of refining an existing segment: a seeded job's two passes use
    ``config.SEEDED_FIRST_TTA`` and ``SEEDED_LATER_TTA``); ``segWeights``: the automatic
    coarse network's model file (None: the shipped one).
    """

    def __init__(self, weights: Any = None, batchSize: int = 128, refinerOptions: Optional[dict[str, Any]] = None,
                 segWeights: Optional[str] = None) -> None:
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self.weights = weights
        self.batchSize = batchSize
        self.refinerOptions = dict(refinerOptions or {})
        self.segWeights = segWeights
        self.pythonExecutable: Optional[str] = None  # None: PythonSlicer in Slicer, this Python headless
        self._weightsFolder: Optional[tempfile.TemporaryDirectory] = None
        self._ctFiles = CtFiles()  # the CT is written once per version, not once per job
        self._writtenCoarse = WrittenMask()  # the last made coarse segment, read back without an export
        from LiverTumorRefineLib.scene.lesions import LesionReviewLogic  # lesions imports this module

        self.review = LesionReviewLogic()

    def setIntensityGate(self, on: bool) -> None:
        """Whether the next refinements use the refiner's intensity gate (the module's checkbox;
        ``refine.intensity``), a coarse segment made from seed points or clicks included."""
        self.refinerOptions["intensity_gate"] = bool(on)

    # ---------------------------------------------------------------- one call
    def refine(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None, truthSegmentId=None,
               device: str = "auto", progress: Progress | None = None, outlinesOnly: bool = True,
               coarseSource: str = "mask", seedsNode=None, negativeSeedsNode=None,
               replaceCoarseSegmentId: Optional[str] = None) -> LiverTumorRefineResult:
        """Refine ``coarseSegmentId`` of ``segmentationNode`` on the CT ``volumeNode`` (blocking, in
        this process).

        Adds "<coarse name> refined" to the same segmentation node (replacing an earlier one) and,
        with a truth segment, fills the "LiverTumorRefine metrics" table. ``coarseSource`` "seeds"
        (``seedsNode``: one markups point per lesion), "automatic" or "totalsegmentator" first makes
        a new coarse segment (in ``segmentationNode``, or a new node when that is None or holds the
        reference). With seed points, ``negativeSeedsNode`` (optional) holds points outside any
        lesion (corrective clicks that remove a leak), and ``replaceCoarseSegmentId`` names an
        earlier seeded coarse segment of ``segmentationNode`` to replace in place (same ID, no new
        segment) instead of adding one. ``progress(fraction, message)`` returning False cancels with
        ``RefineCancelled``; the scene is then unchanged.
        """
        inputs = self.prepare(volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode, truthSegmentId,
                              device, progress, outlinesOnly, coarseSource, seedsNode, negativeSeedsNode,
                              replaceCoarseSegmentId)
        try:
            weights = self.weights if _is_module(self.weights) else None
            worker.run_job(inputs.jobPath, part(progress, PREPARE_END, WORKER_END), weights=weights)
            return self.apply(inputs, self.readOutcome(inputs), progress)
        finally:
            self.cleanup(inputs)

    def startRefine(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None,
                    truthSegmentId=None, device: str = "auto", outlinesOnly: bool = True, coarseSource: str = "mask",
                    seedsNode=None, negativeSeedsNode=None, replaceCoarseSegmentId: Optional[str] = None) -> "RefineJob":
        """Prepare on this (main) thread and start the worker process; see ``refine``."""
        inputs = self.prepare(volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode, truthSegmentId,
                              device, None, outlinesOnly, coarseSource, seedsNode, negativeSeedsNode,
                              replaceCoarseSegmentId)
        return RefineJob(self, inputs, self.startWorker(inputs))

    def startWorker(self, inputs: RefineInputs) -> WorkerJob:
        """Hand a prepared job to the worker process (started on first use, then kept with its
        models loaded); the job folder is removed if it cannot start."""
        try:
            return WorkerServer.shared(self.pythonExecutable).submit(inputs.jobPath)
        except BaseException:
            self.cleanup(inputs)
            raise

    def stopWorker(self) -> None:
        """End the worker process now and remove the CT files of the jobs (module closed; the
        worker also ends by itself when idle, and a next job starts a new one)."""
        WorkerServer.shared(self.pythonExecutable).stop()
        self._ctFiles.clear()

    # ---------------------------------------------------------------- phase 1: main thread, read only
    def prepare(self, volumeNode, segmentationNode, coarseSegmentId, truthSegmentationNode=None, truthSegmentId=None,
                device: str = "auto", progress: Progress | None = None, outlinesOnly: bool = True,
                coarseSource: str = "mask", seedsNode=None, negativeSeedsNode=None,
                replaceCoarseSegmentId: Optional[str] = None) -> RefineInputs:
        """Check the inputs and write the job folder; the scene is not changed."""
        nodes.slicer_module()  # a clear error outside Slicer
        report(progress, 0.0, "Reading the CT and the segments")
        device = check_device(device)
        nodes.check_volume(volumeNode)
        if coarseSource != "mask" and coarseSource not in COARSE_SEGMENT_NAMES:
            raise RefineError(f"Unknown coarse source {coarseSource!r}: choose an existing segment, seed points, "
                              "automatic or TotalSegmentator.")
        made = coarseSource != "mask"
        if made:
            coarseSegmentId, coarseName = "", COARSE_SEGMENT_NAMES[coarseSource]
            if segmentationNode is not None and (not segmentationNode.IsA("vtkMRMLSegmentationNode")
                                                 or not nodes.accepts_voxel_masks(segmentationNode)):
                segmentationNode = None  # a new segmentation (one of contours cannot take voxel masks)
        else:
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
            if made and truthSegmentationNode is segmentationNode:
                segmentationNode = None  # a made coarse segment never goes into the reference segmentation
        seeds = negative = lesions = None
        if coarseSource == "seeds":
            seeds = self.seedPoints(seedsNode, volumeNode)
            negative = self.seedPoints(negativeSeedsNode, volumeNode, required=False) if negativeSeedsNode else []
            lesions = point_lesions(seedsNode)
        replaceId = self.replaceableCoarseSegmentId(segmentationNode, replaceCoarseSegmentId) if made else None
        # A click update groups its new (unnumbered) points with the lesions of the result it
        # replaces; when every point has its number (a negative click, an undo) that result is not
        # read, so it is not exported (a CT-sized labelmap: 0.3 s on a 200-slice CT).
        previous = None
        if seeds is not None and replaceId is not None and None in lesions:
            previous = self._writtenCoarse.recall(segmentationNode, replaceId, volumeNode)
            if previous is None:  # edited since this module wrote it, or never written by this Logic
                previous = nodes.export_segment_mask(segmentationNode, replaceId, volumeNode)

        coarse = None
        if not made:
            coarse = nodes.export_segment_mask(segmentationNode, coarseSegmentId, volumeNode)
            if not coarse.any():
                raise RefineError(f"The coarse segment '{coarseName}' lies outside the CT '{volumeNode.GetName()}': "
                                  "check that the segmentation belongs to this CT (same patient and series).")
        truth = None
        if truthSegmentationNode is not None:
            truth = nodes.export_segment_mask(truthSegmentationNode, truthSegmentId, volumeNode)
            if not truth.any():
                raise RefineError(f"The reference (truth) segment '{truthName}' lies outside the CT "
                                  f"'{volumeNode.GetName()}': check that it belongs to this CT.")
        inputs = RefineInputs(volumeNode, segmentationNode, coarseSegmentId, coarseName, truthSegmentationNode,
                              truthSegmentId, device, outlinesOnly, coarseSource, coarse=coarse, truth=truth,
                              replaceCoarseId=replaceId,
                              copyCoarse=not made and not nodes.accepts_voxel_masks(segmentationNode))
        if seeds is not None:
            inputs.seedsNode, inputs.seedPositions = seedsNode, defined_points(seedsNode)
        inputs.folder = Path(tempfile.mkdtemp(prefix=JOB_FOLDER_PREFIX))
        try:
            source = {"source": coarseSource}
            geometry = nodes.volume_geometry(volumeNode)
            if seeds is not None:
                source.update(seeds_ras=seeds, negative_seeds_ras=negative, seed_lesions=lesions,
                              ct_identity=nodes.ct_identity(volumeNode, geometry))
            inputs.jobPath = worker.write_job(inputs.folder, self._ctFiles.path(volumeNode, geometry), geometry, source,
                                              coarse, truth,
                                              previous=previous,
                                              device=device, weights=self._weightsFile(), seg_weights=self.segWeights,
                                              batch_size=self.batchSize, refiner=self.refinerOptions)
            report(progress, PREPARE_END, "Segments exported")  # a cancel here must not leave the folder
        except BaseException:
            self.cleanup(inputs)
            raise
        return inputs

    def _weightsFile(self) -> Optional[str]:
        """The model file the worker process loads: an in-memory BRNet is saved once per Logic."""
        if self.weights is None or not _is_module(self.weights):
            return None if self.weights is None else str(self.weights)
        if self._weightsFolder is None:
            from LiverTumorRefineLib.refine.weights import save_model

            self._weightsFolder = tempfile.TemporaryDirectory(prefix="LiverTumorRefine-model-")
            save_model(self.weights, Path(self._weightsFolder.name) / "model.pt")
        return str(Path(self._weightsFolder.name) / "model.pt")

    @staticmethod
    def cleanup(inputs: RefineInputs) -> None:
        """Remove the job folder (the worker's inputs and outputs)."""
        if inputs.folder is not None:
            shutil.rmtree(inputs.folder, ignore_errors=True)

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
        if nodes.segment_is_empty(segmentationNode, segmentId):
            raise RefineError(f"The {role} segment '{segment.GetName()}' is empty: draw or import the tumour "
                              "outline first, then refine.")
        return segment.GetName()

    @staticmethod
    def validSegmentId(segmentationNode, segmentId: Optional[str]) -> str:
        """``segmentId`` when ``segmentationNode`` still holds that segment, else "" (a selector
        may keep a stale ID after its segmentation changed or was cleared)."""
        if not segmentId or segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            return ""
        return segmentId if segmentationNode.GetSegmentation().GetSegment(segmentId) is not None else ""

    def replaceableCoarseSegmentId(self, segmentationNode, segmentId: Optional[str]) -> Optional[str]:
        """``segmentId`` when it is a coarse segment this module made in ``segmentationNode`` (its
        name starts with a made source's segment name), else None: a user's own segment is never
        replaced."""
        if not self.validSegmentId(segmentationNode, segmentId):
            return None
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        return segmentId if any(name.startswith(made) for made in COARSE_SEGMENT_NAMES.values()) else None

    def canRefine(self, volumeNode, coarseSource: str, segmentationNode, coarseSegmentId: Optional[str],
                  seedsNode=None) -> bool:
        """Whether the inputs are complete enough to press Apply (the checks of ``prepare`` come later)."""
        if volumeNode is None:
            return False
        if coarseSource == "mask":
            return bool(self.validSegmentId(segmentationNode, coarseSegmentId))
        if coarseSource == "seeds":
            return bool(defined_indices(seedsNode))
        return coarseSource in COARSE_SEGMENT_NAMES

    # ---------------------------------------------------------------- seed points
    @staticmethod
    def seedPoints(seedsNode, volumeNode, required: bool = True) -> list[tuple[float, float, float]]:
        """The defined control points of a markups node as RAS points in ``volumeNode``'s own
        (untransformed) space; a point outside the CT is an error naming it. ``required``: no
        defined point is an error (the positive list), else an empty list (the negative one)."""
        slicer = nodes.slicer_module()
        import vtk

        indices = defined_indices(seedsNode)
        if not indices and not required:
            return []
        if not indices:
            raise RefineError("No seed points: place one point inside each lesion (Markups point list), then try again.")
        worldToVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
        points = []
        for n in indices:
            world = [0.0, 0.0, 0.0]
            seedsNode.GetNthControlPointPositionWorld(n, world)
            local = tuple(float(v) for v in worldToVolume.TransformPoint(world))
            i, j, k, _ = rasToIjk.MultiplyPoint(list(local) + [1.0])
            if any(not -0.5 <= v < size - 0.5 for v, size in zip((k, j, i), shape)):
                raise RefineError(f"Seed point '{seedsNode.GetNthControlPointLabel(n)}' lies outside the CT "
                                  f"'{volumeNode.GetName()}': move it into a lesion on this CT.")
            points.append(local)
        return points

    # ---------------------------------------------------------------- phase 2 result
    @staticmethod
    def readOutcome(inputs: RefineInputs) -> RefineOutcome:
        """The worker's results in the job folder."""
        result, mask, coarse = worker.read_result(inputs.folder)
        shape = tuple(reversed(inputs.volumeNode.GetImageData().GetDimensions()))
        if mask.shape != shape:
            raise RuntimeError(f"the worker returned a mask of shape {mask.shape} for a CT of shape {shape}")
        stats = dict(result.get("stats") or {})
        stats["device"] = result.get("device", stats.get("device", ""))
        uncertain = inputs.folder / worker.UNCERTAIN_FILE
        return RefineOutcome(mask, stats, result.get("metrics"), list(result.get("notes") or []),
                             float(result.get("seconds", 0.0)), coarse,
                             worker.load_mask(uncertain) if uncertain.is_file() else None,
                             result.get("seed_lesions"))

    # ---------------------------------------------------------------- phase 3: main thread, writes
    def apply(self, inputs: RefineInputs, outcome: RefineOutcome, progress: Progress | None = None) -> LiverTumorRefineResult:
        """Write the coarse segment the worker made, the refined segment, display settings and the
        metrics table into the scene."""
        t0 = time.perf_counter()
        # Last chance to cancel: after this check the scene is modified.
        report(progress, WORKER_END, "Adding the refined segment")
        for node, what in ((inputs.segmentationNode, "segmentation"), (inputs.volumeNode, "CT"),
                           (inputs.truthSegmentationNode, "reference segmentation")):
            if node is not None and node.GetScene() is None:
                raise RefineError(f"The {what} was closed while refining: nothing was added.")
        if outcome.coarse is not None and inputs.replaceCoarseId is not None:
            inputs.coarseSegmentId, inputs.coarseName = self._replaceCoarseSegment(
                inputs.volumeNode, inputs.segmentationNode, outcome.coarse, inputs.replaceCoarseId)
        elif outcome.coarse is not None:
            inputs.segmentationNode, inputs.coarseSegmentId, inputs.coarseName = self._addCoarseSegment(
                inputs.volumeNode, inputs.segmentationNode, outcome.coarse, inputs.coarseName)
        elif inputs.copyCoarse:
            outcome.notes.append(self._copyCoarseSegment(inputs))
        segmentationNode = inputs.segmentationNode
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSegment(inputs.coarseSegmentId) is None:
            raise RefineError("The coarse segment was deleted while refining: nothing was added.")
        refinedId = self._writeRefinedSegment(inputs, outcome.mask)
        if outcome.seedLesions is not None:  # the next click update keeps these points' lesions
            label_point_lesions(inputs.seedsNode, inputs.seedPositions, outcome.seedLesions)
        self._applyDisplay(inputs, refinedId)
        uncertainId = None
        if outcome.uncertain is not None:
            uncertainId = self._writeUncertainSegment(inputs, refinedId, outcome.uncertain)
        coarseMask = outcome.coarse if outcome.coarse is not None else inputs.coarse
        reviewTable = self.review.createReview(inputs.volumeNode, segmentationNode, refinedId, coarseMask,
                                               outcome.mask, inputs.truth, outcome.stats.get("lesions"))
        tableNode = None
        if outcome.metrics is not None:
            tableNode = self._writeMetricsTable(inputs.volumeNode.GetScene() or segmentationNode.GetScene(),
                                                outcome.metrics)
        if outcome.coarse is not None:  # last: the writes above must not change its stamp afterwards
            self._writtenCoarse.remember(segmentationNode, inputs.coarseSegmentId, inputs.volumeNode, outcome.coarse)
        seconds = dict(outcome.stats.get("seconds", {}))
        seconds["overall"] = outcome.seconds + (time.perf_counter() - t0)
        if progress is not None:
            progress(1.0, "Done")  # the scene is written: cancelling now has no effect
        return LiverTumorRefineResult(refinedId, segmentationNode, tableNode, outcome.metrics,
                                      int(outcome.stats.get("patches", 0)), seconds,
                                      str(outcome.stats.get("device", "")), list(outcome.notes), dict(outcome.stats),
                                      inputs.coarseSegmentId, reviewTable, uncertainId)

    @staticmethod
    def _addCoarseSegment(volumeNode, segmentationNode, mask: np.ndarray, name: str) -> tuple[Any, str, str]:
        """Add ``mask`` as a new coarse segment (existing segments are never replaced: a second run
        adds "... 2") to ``segmentationNode``, or to a new node when None; (node, ID, name)."""
        if segmentationNode is None:
            segmentationNode = volumeNode.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                       f"{volumeNode.GetName()} coarse")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        unique, count = name, 1
        while unique in names:
            count += 1
            unique = f"{name} {count}"
        segment = nodes.tumour_segment(unique, COARSE_COLOR, nodes.oriented_image_from_mask(mask, volumeNode, segmentationNode))
        return segmentationNode, nodes.put_segment(segmentationNode, segment, None, COARSE_COLOR), unique

    def _copyCoarseSegment(self, inputs: RefineInputs) -> str:
        """The coarse segment's voxels as a new segment of a new segmentation, where the refined
        segment then goes: its own segmentation stores planar contours (an RT structure set), which
        cannot take a voxel mask and is left as it is. Returns the note that says so."""
        if inputs.segmentationNode.GetSegmentation().GetSegment(inputs.coarseSegmentId) is None:
            raise RefineError("The coarse segment was deleted while refining: nothing was added.")
        contours = inputs.segmentationNode.GetName()
        inputs.segmentationNode, inputs.coarseSegmentId, inputs.coarseName = self._addCoarseSegment(
            inputs.volumeNode, None, inputs.coarse, inputs.coarseName)
        return (f"'{contours}' stores its segments as planar contours (an RT structure set), which cannot take a voxel "
                f"mask: the coarse segment was copied as voxels into the new segmentation "
                f"'{inputs.segmentationNode.GetName()}', and the refined segment is there. '{contours}' is unchanged.")

    @staticmethod
    def _replaceCoarseSegment(volumeNode, segmentationNode, mask: np.ndarray, segmentId: str) -> tuple[str, str]:
        """Put ``mask`` in place of the made coarse segment ``segmentId`` (same ID, name and
        position in the list: a corrective click updates it); (ID, name)."""
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSegment(segmentId) is None:
            raise RefineError("The seeded coarse segment was deleted while refining: nothing was changed.")
        name = segmentation.GetSegment(segmentId).GetName()
        segment = nodes.tumour_segment(name, COARSE_COLOR, nodes.oriented_image_from_mask(mask, volumeNode, segmentationNode))
        return nodes.put_segment(segmentationNode, segment, segmentId, COARSE_COLOR), name

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
            tag = nodes.segment_tag(segment, REFINED_FROM_TAG)
            if tag == coarseSegmentId:
                return segmentId
            if tag is None and coarse is not None and segment.GetName() == coarse.GetName() + REFINED_SUFFIX:
                byName = byName or segmentId
        return byName

    def _writeRefinedSegment(self, inputs: RefineInputs, mask: np.ndarray) -> str:
        segmentationNode = inputs.segmentationNode
        segment = nodes.tumour_segment(inputs.coarseName + REFINED_SUFFIX, REFINED_COLOR,
                                       nodes.oriented_image_from_mask(mask, inputs.volumeNode, segmentationNode))
        segment.SetTag(REFINED_FROM_TAG, inputs.coarseSegmentId)
        previous = self.findRefinedSegmentId(segmentationNode, inputs.coarseSegmentId)
        return nodes.put_segment(segmentationNode, segment, previous, REFINED_COLOR)

    def findUncertainSegmentId(self, segmentationNode, refinedSegmentId: str) -> Optional[str]:
        """ID of the "unsure" overlay segment of ``refinedSegmentId``, or None."""
        segmentation = segmentationNode.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            if nodes.segment_tag(segmentation.GetSegment(segmentId), UNCERTAIN_OF_TAG) == refinedSegmentId:
                return segmentId
        return None

    def _writeUncertainSegment(self, inputs: RefineInputs, refinedId: str, mask: np.ndarray) -> str:
        """The voxels where the augmented predictions disagree, as a segment in its own colour
        (magenta), hidden until ``setUncertaintyVisible`` shows it. It goes first in the segment
        list, so that the other segments' outlines are drawn over its fill."""
        segmentationNode = inputs.segmentationNode
        segment = nodes.tumour_segment(inputs.coarseName + UNCERTAIN_SUFFIX, UNCERTAIN_COLOR,
                                       nodes.oriented_image_from_mask(mask, inputs.volumeNode, segmentationNode))
        segment.SetTag(UNCERTAIN_OF_TAG, refinedId)
        previous = self.findUncertainSegmentId(segmentationNode, refinedId)
        segmentId = nodes.put_segment(segmentationNode, segment, previous, UNCERTAIN_COLOR, first=True)
        self.setUncertaintyVisible(segmentationNode, segmentId, False)
        return segmentId

    @staticmethod
    def setUncertaintyVisible(segmentationNode, uncertainSegmentId: str, visible: bool) -> None:
        """Show or hide the "unsure" overlay: a half-transparent fill without outline, so that the
        red, yellow and green outlines stay as they are."""
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
        wasModifying = display.StartModify()
        try:
            display.SetSegmentVisibility(uncertainSegmentId, bool(visible))
            display.SetSegmentVisibility2DOutline(uncertainSegmentId, False)
            display.SetSegmentVisibility2DFill(uncertainSegmentId, True)
            display.SetSegmentOpacity2DFill(uncertainSegmentId, UNCERTAIN_FILL_OPACITY)
        finally:
            display.EndModify(wasModifying)

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
        import vtk

        table = None
        for node in nodes.nodes_by_class(scene, "vtkMRMLTableNode"):
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
    """A refinement running in the worker process (``workerprocess.WorkerJob``).

    The caller (the module's timer on the main thread) polls ``done`` and ``state()`` (both cheap,
    never blocking), may ``cancel()`` (ends the process), and calls ``finish()`` once ``done``: it
    writes the scene on the calling thread, or raises the worker's error (``RefineCancelled``
    after a cancel). The job folder is removed by ``finish``.
    """

    def __init__(self, logic: LiverTumorRefineLogic, inputs: RefineInputs, process: WorkerJob) -> None:
        self.logic, self.inputs, self.process = logic, inputs, process

    def cancel(self) -> None:
        self.process.cancel()

    @property
    def cancelled(self) -> bool:
        return self.process.cancelled

    @property
    def done(self) -> bool:
        return self.process.done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (tests and scripts; the GUI polls ``done`` instead)."""
        return self.process.wait(timeout)

    def state(self) -> tuple[float, str]:
        fraction, message = self.process.state()
        return PREPARE_END + (WORKER_END - PREPARE_END) * fraction, message

    def finish(self) -> LiverTumorRefineResult:
        """Apply the result on this thread (call once ``done``); raises what the worker raised."""
        if not self.process.done:
            raise RuntimeError("RefineJob.finish() called before the worker finished")
        try:
            self.process.check()
            outcome = self.logic.readOutcome(self.inputs)
            seconds = outcome.stats.setdefault("seconds", {})
            seconds["process"] = time.perf_counter() - self.process.started
            return self.logic.apply(self.inputs, outcome)
        finally:
            self.logic.cleanup(self.inputs)


def _is_module(weights: Any) -> bool:
    """True for an in-memory network (``torch.nn.Module``), without importing torch."""
    return weights is not None and hasattr(weights, "state_dict") and hasattr(weights, "patch_config")
