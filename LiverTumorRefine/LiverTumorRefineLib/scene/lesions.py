"""Lesion-by-lesion review of a refinement in the MRML scene (issue 13).

After a refinement the Logic calls ``createReview``: one row per lesion (a connected component of
coarse ∪ refined, computed by ``evaluate.review``) goes into the table node "LiverTumorRefine
lesions". The review's state lives in the scene, so saving and reloading the scene keeps it:

* the table node's attributes: the rows as JSON (``LESIONS_ATTRIBUTE``), the decisions
  (``DECISIONS_ATTRIBUTE``, lesion -> accepted/rejected) and the decision history (for Undo);
* the table's node references: the CT, the segmentation holding the refined segment, and a
  segmentation hidden from editors ("LiverTumorRefine review data") with the coarse and the
  refined mask as the refinement made them.

Rejecting a lesion gives it its coarse voxels back in the refined segment; accepting a rejected
lesion gives it its refined voxels back; only that lesion's voxels (its component of coarse ∪
refined) change, so edits made elsewhere in the refined segment are kept. Each decision first
calls ``vtkMRMLScene.SaveStateForUndo`` with undo enabled on the nodes it changes: in Slicer 5.8
the scene's undo (Edit > Undo) records it when the scene's undo is switched on (it is off by
default, ``vtkMRMLScene.SetUndoOn``); ``undoDecision`` undoes the last decision either way.

Lesion numbers and slice numbers are those of ``evaluate.review`` on the CT reoriented to LPS (as
the worker refines it), so they match ``refine --report`` and the Refiner's per-lesion gate;
slices count axial planes from inferior.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate import review
from LiverTumorRefineLib.refine.boxes import lesion_box
from LiverTumorRefineLib.scene import logic as ltr
from LiverTumorRefineLib.scene import nodes
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

REVIEW_TABLE_NAME = "LiverTumorRefine lesions"
REVIEW_DATA_NAME = "LiverTumorRefine review data"
COARSE_DATA_SEGMENT, PROPOSAL_DATA_SEGMENT = "coarse", "refined as proposed"
VOLUME_ROLE = "LiverTumorRefine.volume"
SEGMENTATION_ROLE = "LiverTumorRefine.segmentation"
DATA_ROLE = "LiverTumorRefine.reviewData"
REFINED_ATTRIBUTE = "LiverTumorRefine.refinedSegmentId"
LESIONS_ATTRIBUTE = "LiverTumorRefine.lesions"
DECISIONS_ATTRIBUTE = "LiverTumorRefine.decisions"
HISTORY_ATTRIBUTE = "LiverTumorRefine.decisionHistory"
ACCEPTED, REJECTED = "accepted", "rejected"
COLUMNS = ("Lesion", "Slices", "Volume (ml)", "Diameters (mm)", "Dice", "Confidence", "Status", "Flags")
ARROW = " → "
# The view shows the lesion with this much room around it (a factor on its largest extent), and
# at least this many mm, so that a 3 mm lesion still shows its surroundings.
ZOOM_MARGIN, MIN_FIELD_OF_VIEW_MM = 2.0, 30.0


@dataclass
class ReviewArrays:
    """A review's masks on the CT grid (k, j, i): the coarse and refined masks as the refinement
    made them, and the lesion numbers (0 outside every lesion)."""

    coarse: np.ndarray
    proposal: np.ndarray
    labels: np.ndarray


def review_rows(coarse: np.ndarray, refined: np.ndarray, geometry: dict[str, list[float]],
                truth: Optional[np.ndarray] = None, refinerLesions: Optional[Sequence[dict[str, Any]]] = None
                ) -> tuple[list[review.LesionReview], np.ndarray]:
    """``evaluate.review`` rows of masks on a CT grid (``logic.volume_geometry``), computed on the
    grid reoriented to LPS as the worker refines it, and the lesion labels back on the CT grid."""
    grid = Geometry(tuple(geometry["spacing"]), tuple(geometry["origin"]), tuple(geometry["direction"]))
    code = io.orientation(grid.direction)

    def lps(mask: np.ndarray) -> Volume:  # bool stays bool: no CT-sized copy on an LPS grid
        return io.reoriented(Volume(np.asarray(mask, dtype=bool), grid), "LPS")

    coarseLps, refinedLps = lps(coarse), lps(refined)
    labels = review.lesion_labels(coarseLps.array, refinedLps.array)
    rows = review.review_lesions(coarseLps.array, refinedLps.array, coarseLps.spacing_zyx,
                                 reference=None if truth is None else lps(truth).array,
                                 refiner_lesions=refinerLesions, geometry=coarseLps.geometry, labels=labels)
    back = io.reoriented(Volume(np.asarray(labels, dtype=np.uint32), coarseLps.geometry), code).array
    return rows, np.asarray(back)


class LesionReviewLogic:
    """Creates, shows and edits lesion reviews (see the module docstring). Keeps each review's
    arrays in memory once read (``arrays``); everything else is read from the scene."""

    def __init__(self) -> None:
        # table ID -> (the table node, its arrays): after a scene was closed and loaded again a new
        # table may have the same ID, so the node itself is compared too
        self._arrays: dict[str, tuple[Any, ReviewArrays]] = {}

    # ---------------------------------------------------------------- creating
    def createReview(self, volumeNode, segmentationNode, refinedSegmentId: str, coarse: np.ndarray,
                     refined: np.ndarray, truth: Optional[np.ndarray] = None,
                     refinerLesions: Optional[Sequence[dict[str, Any]]] = None):
        """Fill the lesion table of a refinement (``coarse``, ``refined``, ``truth``: bool (k, j, i)
        arrays on ``volumeNode``'s grid; ``refinerLesions``: the Refiner's ``stats["lesions"]``).
        Replaces an earlier review of the same refined segment; returns the table node."""
        scene = volumeNode.GetScene()
        rows, labels = review_rows(coarse, refined, nodes.volume_geometry(volumeNode), truth, refinerLesions)
        table = self.findReview(segmentationNode, refinedSegmentId)
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", REVIEW_TABLE_NAME)
        data = table.GetNodeReference(DATA_ROLE)
        if data is None:
            data = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", REVIEW_DATA_NAME)
            data.SetHideFromEditors(True)  # the review's own copy: not for editing, never shown
        data.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = data.GetSegmentation()
        box, offset = _bounding_box(np.asarray(coarse, bool) | np.asarray(refined, bool))
        for name, mask in ((COARSE_DATA_SEGMENT, coarse), (PROPOSAL_DATA_SEGMENT, refined)):
            if segmentation.GetSegment(name) is not None:
                segmentation.RemoveSegment(name)
            image = nodes.oriented_image_from_mask(np.asarray(mask)[box], volumeNode, data, offset)
            segmentation.AddSegment(nodes.tumour_segment(name, ltr.COARSE_COLOR, image), name)
        wasModifying = table.StartModify()
        try:
            table.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
            table.SetNodeReferenceID(SEGMENTATION_ROLE, segmentationNode.GetID())
            table.SetNodeReferenceID(DATA_ROLE, data.GetID())
            table.SetAttribute(REFINED_ATTRIBUTE, refinedSegmentId)
            table.SetAttribute(LESIONS_ATTRIBUTE, json.dumps([self._rowRecord(row, volumeNode) for row in rows]))
            table.SetAttribute(DECISIONS_ATTRIBUTE, "{}")
            table.SetAttribute(HISTORY_ATTRIBUTE, "[]")
            self._fillTable(table)
        finally:
            table.EndModify(wasModifying)
        self._arrays[table.GetID()] = (table, ReviewArrays(np.asarray(coarse, bool), np.asarray(refined, bool), labels))
        return table

    @staticmethod
    def _rowRecord(row: review.LesionReview, volumeNode) -> dict[str, Any]:
        """The row as JSON, with its centre in world RAS and the field of view that shows it."""
        record = row.to_dict()
        l, p, s = row.centre_lps if row.centre_lps is not None else (0.0, 0.0, 0.0)
        record["centre_ras"] = _volume_to_world(volumeNode, (-l, -p, s))
        extent = max(row.coarse_diameter_mm, row.refined_diameter_mm)
        record["field_of_view_mm"] = round(max(ZOOM_MARGIN * extent, MIN_FIELD_OF_VIEW_MM), 2)
        return record

    def findReview(self, segmentationNode, refinedSegmentId: str):
        """The review table of ``refinedSegmentId`` in ``segmentationNode``, or None."""
        scene = segmentationNode.GetScene()
        for node in nodes.nodes_by_class(scene, "vtkMRMLTableNode"):
            if (node.GetNodeReferenceID(SEGMENTATION_ROLE) == segmentationNode.GetID()
                    and node.GetAttribute(REFINED_ATTRIBUTE) == refinedSegmentId):
                return node
        return None

    # ---------------------------------------------------------------- reading
    @staticmethod
    def lesions(table) -> list[dict[str, Any]]:
        """The review's rows (``LesionReview.to_dict()`` plus ``centre_ras``, ``field_of_view_mm``
        and ``decision``: accepted, rejected or None)."""
        rows = json.loads(table.GetAttribute(LESIONS_ATTRIBUTE) or "[]")
        decisions = LesionReviewLogic.decisions(table)
        for row in rows:
            row["decision"] = decisions.get(row["lesion"])
        return rows

    @staticmethod
    def decisions(table) -> dict[int, str]:
        """Lesion number -> ACCEPTED or REJECTED, for the lesions decided so far."""
        return {int(k): v for k, v in json.loads(table.GetAttribute(DECISIONS_ATTRIBUTE) or "{}").items()}

    @staticmethod
    def status(row: dict[str, Any]) -> str:
        """What the table's Status column shows: the decision, else what the refinement did."""
        return row.get("decision") or row["status"]

    def arrays(self, table) -> ReviewArrays:
        """The review's masks and lesion labels on the CT grid, read from the review data node
        the first time (after a scene was loaded) and kept."""
        cached = self._arrays.get(table.GetID())
        if cached is not None and cached[0] is table:
            return cached[1]
        volumeNode, data = table.GetNodeReference(VOLUME_ROLE), table.GetNodeReference(DATA_ROLE)
        if volumeNode is None or data is None:
            raise RefineError(f"The lesion review '{table.GetName()}' lost its CT or its review data (deleted?): "
                              "refine again to review the lesions.")
        coarse = nodes.export_segment_mask(data, COARSE_DATA_SEGMENT, volumeNode)
        proposal = nodes.export_segment_mask(data, PROPOSAL_DATA_SEGMENT, volumeNode)
        _, labels = review_rows(coarse, proposal, nodes.volume_geometry(volumeNode))
        self._arrays[table.GetID()] = (table, ReviewArrays(coarse, proposal, labels))
        return self._arrays[table.GetID()][1]

    # ---------------------------------------------------------------- decisions
    def setDecision(self, table, lesion: int, decision: str) -> None:
        """Accept or reject ``lesion`` (see the module docstring); one undo step."""
        self._decide(table, {lesion: decision})

    def acceptAll(self, table) -> None:
        """Accept every lesion (rejected ones get their refined voxels back); one undo step."""
        self._decide(table, {row["lesion"]: ACCEPTED for row in self.lesions(table)})

    @staticmethod
    def canUndo(table) -> bool:
        """Whether ``undoDecision`` has a decision to undo."""
        return bool(json.loads(table.GetAttribute(HISTORY_ATTRIBUTE) or "[]"))

    def undoDecision(self, table) -> bool:
        """Undo the last decision (or Accept all); False when there is none."""
        history = json.loads(table.GetAttribute(HISTORY_ATTRIBUTE) or "[]")
        if not history:
            return False
        previous = {int(k): v for k, v in history.pop().items()}
        self._decide(table, previous, history)
        return True

    def _decide(self, table, wanted: dict[int, Optional[str]], history: Optional[list] = None) -> None:
        decisions = self.decisions(table)
        known = {row["lesion"] for row in self.lesions(table)}
        for lesion, decision in wanted.items():
            if lesion not in known:
                raise RefineError(f"Lesion {lesion} is not in the review '{table.GetName()}': the lesions are "
                                  f"numbered 1 to {len(known)}.")
            if decision not in (ACCEPTED, REJECTED, None):
                raise RefineError(f"Unknown decision {decision!r} for lesion {lesion}: accept or reject it.")
        segmentationNode, volumeNode = table.GetNodeReference(SEGMENTATION_ROLE), table.GetNodeReference(VOLUME_ROLE)
        refinedId = table.GetAttribute(REFINED_ATTRIBUTE)
        if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(refinedId or "") is None:
            raise RefineError("The refined segment of this review was deleted: refine again to review the lesions.")
        # Voxels change only where a lesion goes to or leaves "rejected" (accepting a lesion that
        # was never rejected keeps whatever the segment holds, edits included).
        flips = {k: v for k, v in wanted.items() if (v == REJECTED) != (decisions.get(k) == REJECTED)}
        scene = table.GetScene()
        self._enableUndo(table, segmentationNode)
        scene.SaveStateForUndo()  # a no-op unless the scene's undo is on
        if flips:
            arrays = self.arrays(table)
            refined = nodes.export_segment_mask(segmentationNode, refinedId, volumeNode)
            for lesion, decision in flips.items():
                region = arrays.labels == lesion
                refined[region] = (arrays.coarse if decision == REJECTED else arrays.proposal)[region]
            self._writeSegment(segmentationNode, refinedId, refined, volumeNode)
        if history is None:
            history = json.loads(table.GetAttribute(HISTORY_ATTRIBUTE) or "[]")
            history.append({str(k): decisions.get(k) for k in wanted})
        for lesion, decision in wanted.items():
            if decision is None:
                decisions.pop(lesion, None)
            else:
                decisions[lesion] = decision
        wasModifying = table.StartModify()
        try:
            table.SetAttribute(DECISIONS_ATTRIBUTE, json.dumps({str(k): v for k, v in sorted(decisions.items())}))
            table.SetAttribute(HISTORY_ATTRIBUTE, json.dumps(history))
            self._fillTable(table)
        finally:
            table.EndModify(wasModifying)

    @staticmethod
    def _enableUndo(table, segmentationNode) -> None:
        """Let the scene's undo record the nodes a decision changes (and the nodes they refer to)."""
        for node in (table, segmentationNode, segmentationNode.GetDisplayNode(), segmentationNode.GetStorageNode(),
                     table.GetStorageNode()):
            if node is not None:
                node.SetUndoEnabled(True)

    @staticmethod
    def _writeSegment(segmentationNode, segmentId: str, mask: np.ndarray, volumeNode) -> None:
        slicer = nodes.slicer_module()
        image = nodes.oriented_image_from_mask(mask, volumeNode, segmentationNode)
        moduleLogic = slicer.vtkSlicerSegmentationsModuleLogic
        if not moduleLogic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, moduleLogic.MODE_REPLACE):
            raise RefineError(f"Could not write the decision into segment '{segmentId}'.")

    # ---------------------------------------------------------------- the table
    def _fillTable(self, table) -> None:
        import vtk

        table.RemoveAllColumns()
        columns = []
        for title in COLUMNS:
            column = vtk.vtkStringArray()
            column.SetName(title)
            columns.append(column)
        for row in self.lesions(table):
            for column, value in zip(columns, table_cells(row)):
                column.InsertNextValue(value)
        for column in columns:
            table.AddColumn(column)
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetLocked(True)  # results: decisions go through the buttons
        table.Modified()

    # ---------------------------------------------------------------- navigation
    def lesionView(self, table, lesion: int) -> tuple[tuple[float, float, float], float]:
        """The lesion's centre (world RAS) and the field of view (mm) that shows it."""
        for row in self.lesions(table):
            if row["lesion"] == lesion:
                return tuple(row["centre_ras"]), float(row["field_of_view_mm"])  # type: ignore[return-value]
        raise RefineError(f"Lesion {lesion} is not in the review '{table.GetName()}'.")

    def jumpToLesion(self, table, lesion: int, sliceNodes: Optional[Sequence[Any]] = None) -> tuple[float, float, float]:
        """Centre every slice view (or ``sliceNodes``) on the lesion and zoom so that it fills
        about half the view; returns the centre (RAS)."""
        centre, fieldOfView = self.lesionView(table, lesion)
        if sliceNodes is None:
            sliceNodes = nodes.nodes_by_class(table.GetScene(), "vtkMRMLSliceNode")
        for sliceNode in sliceNodes:
            sliceNode.JumpSliceByCentering(*centre)
            width, height, _ = sliceNode.GetDimensions()
            old = sliceNode.GetFieldOfView()
            # the shorter side of the view spans fieldOfView; the other keeps the view's aspect
            scale = fieldOfView / max(min(width, height), 1)
            sliceNode.SetFieldOfView(width * scale, height * scale, old[2])
        return centre


def table_cells(row: dict[str, Any]) -> list[str]:
    """The table's text for one row (see ``COLUMNS``): before → after for volume, diameters and Dice."""
    def pair(a: Optional[float], b: Optional[float], fmt: str) -> str:
        return "" if a is None and b is None else f"{'-' if a is None else format(a, fmt)}{ARROW}" \
                                                  f"{'-' if b is None else format(b, fmt)}"

    diameters = (f"{row['coarse_diameter_mm']:.1f} × {row['coarse_perpendicular_mm']:.1f}{ARROW}"
                 f"{row['refined_diameter_mm']:.1f} × {row['refined_perpendicular_mm']:.1f}")
    confidence = "" if row.get("confidence") is None else f"{row['confidence']:.2f}"
    return [str(row["lesion"]), f"{row['first_slice']}-{row['last_slice']}",
            pair(row["coarse_ml"], row["refined_ml"], ".2f"), diameters,
            pair(row.get("coarse_dice"), row.get("refined_dice"), ".3f"), confidence,
            LesionReviewLogic.status(row), "; ".join(row.get("flags") or [])]


def _bounding_box(mask: np.ndarray) -> tuple[tuple[slice, ...], tuple[int, int, int]]:
    """The crop of ``mask`` around its voxels (one voxel when empty) and its first voxel: the
    review's copy of the masks is stored cropped, not CT-sized."""
    if not mask.any():
        return (slice(0, 1),) * 3, (0, 0, 0)
    box = lesion_box(mask, (0, 0, 0))
    return box, tuple(b.start for b in box)  # type: ignore[return-value]


def _volume_to_world(volumeNode, point: Sequence[float]) -> list[float]:
    """A point of the volume's own RAS space in world RAS (through its parent transforms)."""
    slicer = nodes.slicer_module()
    import vtk

    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeNode.GetParentTransformNode(), None, toWorld)
    return [round(float(v), 3) for v in toWorld.TransformPoint([float(v) for v in point])]
