"""The Segment Editor effect "Refine boundary" without its Qt part: one segment refined in place.

The effect (``SegmentEditorRefineBoundaryLib``, Qt, only in the Slicer application) calls this
module and keeps nothing but widgets and the editor's own calls for itself, so everything here
runs headless on ``slicer-core``:

1. ``start_segment_refine``: the Logic's ``prepare`` reads the selected segment on the source
   volume's grid and writes the job folder; the same worker process as the module's
   (``workerprocess``) refines it. The scene is not touched.
2. ``SegmentRefineJob``: the effect's timer polls ``done`` and ``state()``; ``cancel()`` ends
   the process; ``finish(referenceImage)`` returns the refined mask as a labelmap on the
   editor's reference geometry (``SegmentRefinement``).
3. The effect writes that labelmap through the editor: ``saveStateForUndo`` and
   ``modifySelectedSegmentByLabelmap(labelmap, ModificationModeSet)``. The editor applies its
   masking settings there (editable area, editable intensity range, overwrite other segments:
   with overwrite off no other segment loses a voxel), and Undo restores the previous outline.
   This module never writes a segment itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.scene.logic import LiverTumorRefineLogic, RefineInputs, RefineJob
from LiverTumorRefineLib.scene.nodes import export_segment_mask


@dataclass
class SegmentRefinement:
    """A finished refinement of one segment, ready for the editor to write."""

    labelmap: Any  # vtkOrientedImageData, uint8 0/1 on the reference geometry, in the segmentation's coordinates
    mask: np.ndarray  # the worker's refined mask, (z, y, x) bool on the CT grid
    segmentationNode: Any
    segmentId: str
    segmentName: str
    coarseMl: float  # the segment as it was refined (on the CT grid)
    refinedMl: float  # the refinement before the editor's masking
    editedMeanwhile: bool  # the segment was changed while the worker ran: ask before replacing it
    seconds: float
    device: str
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


class SegmentRefineJob(RefineJob):
    """A refinement of one segment in the worker process; ``finish`` hands back a labelmap
    instead of adding a segment (``RefineJob``'s polling and cancel are reused as they are)."""

    def finish(self, referenceImage=None) -> SegmentRefinement:
        """The refinement on ``referenceImage``'s grid (the editor's ``referenceGeometryImage()``;
        None: the segmentation's reference geometry). Raises what the worker raised
        (``RefineCancelled`` after a cancel); removes the job folder."""
        if not self.process.done:
            raise RuntimeError("SegmentRefineJob.finish() called before the worker finished")
        try:
            self.process.check()
            outcome = self.logic.readOutcome(self.inputs)
            return segment_refinement(self.inputs, outcome.mask, referenceImage, outcome.stats, outcome.notes,
                                      outcome.seconds)
        finally:
            self.logic.cleanup(self.inputs)


def start_segment_refine(logic: LiverTumorRefineLogic, volumeNode, segmentationNode, segmentId: str,
                         device: str = "auto") -> SegmentRefineJob:
    """Refine segment ``segmentId`` of ``segmentationNode`` on the CT ``volumeNode`` (the editor's
    source volume) in the Logic's worker process. Bad inputs raise ``RefineError`` at once."""
    if volumeNode is None:
        raise RefineError("No source volume is selected in the Segment Editor: choose the CT as source volume.")
    inputs = logic.prepare(volumeNode, segmentationNode, segmentId, device=device)
    return SegmentRefineJob(logic, inputs, logic.startWorker(inputs))


def segment_refinement(inputs: RefineInputs, mask: np.ndarray, referenceImage, stats: dict[str, Any],
                       notes: list[str], seconds: float) -> SegmentRefinement:
    """Check the segment is still there and put the worker's ``mask`` (CT grid) on the editor's grid."""
    segmentationNode, segmentId, volumeNode = inputs.segmentationNode, inputs.coarseSegmentId, inputs.volumeNode
    if segmentationNode.GetScene() is None or volumeNode.GetScene() is None:
        raise RefineError("The segmentation or the CT was closed while refining: nothing was changed.")
    if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
        raise RefineError(f"The segment '{inputs.coarseName}' was deleted while refining: nothing was changed.")
    if referenceImage is None:
        referenceImage = segmentation_reference_geometry(segmentationNode)
    coarse = inputs.coarse  # the segment as ``prepare`` exported it and the job refined it
    now = export_segment_mask(segmentationNode, segmentId, volumeNode)
    voxelMl = float(np.prod(volumeNode.GetSpacing())) / 1000.0
    return SegmentRefinement(labelmap=refined_labelmap(mask, volumeNode, segmentationNode, referenceImage), mask=mask,
                             segmentationNode=segmentationNode, segmentId=segmentId, segmentName=inputs.coarseName,
                             coarseMl=float(coarse.sum()) * voxelMl, refinedMl=float(mask.sum()) * voxelMl,
                             editedMeanwhile=not np.array_equal(now, coarse), seconds=seconds,
                             device=str(stats.get("device", "")), notes=list(notes), stats=dict(stats))


def refined_labelmap(mask: np.ndarray, volumeNode, segmentationNode, referenceImage):
    """``mask`` (z, y, x on ``volumeNode``'s grid) as a uint8 0/1 vtkOrientedImageData on
    ``referenceImage``'s geometry and extent, in ``segmentationNode``'s coordinates.

    Nearest-neighbour resampling through the transform between the two nodes' parents, as the
    Segment Editor aligns its source volume: on the usual grid (the segmentation's geometry
    taken from this CT) every voxel is copied unchanged. The editor's intensity mask needs the
    modifier labelmap on exactly this geometry.
    """
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    image.SetImageToWorldMatrix(ijkToRas)
    volumeToSegmentation = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeNode.GetParentTransformNode(),
                                                        segmentationNode.GetParentTransformNode(), volumeToSegmentation)
    out = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, referenceImage, out, False, False, volumeToSegmentation, 0):
        raise RefineError("The refined segment could not be put on the segmentation's grid: harden the transforms "
                          "(Data module, right-click, Harden transform) and refine again.")
    return out


def segmentation_reference_geometry(segmentationNode):
    """The segmentation's reference image geometry (what the editor edits on), without scalars."""
    import slicer

    converter = slicer.vtkSegmentationConverter
    geometry = segmentationNode.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName())
    image = slicer.vtkOrientedImageData()
    if not geometry or not converter.DeserializeImageGeometry(geometry, image, False):
        raise RefineError(f"The segmentation '{segmentationNode.GetName()}' has no reference geometry: open it in the "
                          "Segment Editor with the CT as source volume, then refine.")
    return image


def summary(refinement: SegmentRefinement) -> str:
    """One line for the effect's status label."""
    device = f" on {refinement.device.upper()}" if refinement.device else ""
    return (f"Refined '{refinement.segmentName}' in {refinement.seconds:.1f} s{device}: "
            f"{refinement.coarseMl:.2f} ml -> {refinement.refinedMl:.2f} ml. Undo restores the previous outline.")

