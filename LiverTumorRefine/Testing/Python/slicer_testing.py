"""Shared test body for the Slicer module: run by ``LiverTumorRefineTest`` inside 3D Slicer and by
``Testing/test_logic.py`` and ``Testing/test_slicer_render.py`` on the PyPI ``slicer-core``.

Also holds the headless bootstrap (``make_app``) and the offscreen slice-view renderer. Like
``logic`` it talks to Slicer; it imports ``slicer``/``vtk`` inside its functions, so importing it
costs nothing, and the engine and CLI never import it.

The ``check_*`` functions use plain ``assert`` with messages, so they work as unittest bodies in
Slicer and as pytest bodies; each takes the scene to work on and a ``LiverTumorRefineLogic``
(the self-test passes one with the shipped model, pytest may pass one with a test model).
"""
from __future__ import annotations

import os
import types
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from LiverTumorRefineLib import worker
from LiverTumorRefineLib.scene import lesions
from LiverTumorRefineLib.scene import logic as ltr
from LiverTumorRefineLib.scene import nodes as scene_nodes
from LiverTumorRefineLib.scene.clicks import defined_indices
from LiverTumorRefineLib.volume.atomic import atomic_path
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics, dice
from LiverTumorRefineLib.training.case import RefineCase

# An axial CT as Slicer loads it from DICOM: IJK axes along -R, -A, +S (i.e. LPS-aligned).
LPS_ALIGNED_DIRECTIONS = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
OTHER_SEGMENT_COLOR = (0.85, 0.55, 0.4)
TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName()


# ---------------------------------------------------------------------------- bootstrap
def make_app():
    """A headless MRML scene with the application and module logics Slicer's helpers expect.

    Sets ``slicer.mrmlScene`` and ``slicer.modules`` (what ``slicer.util`` looks up in the
    application) and returns a namespace with ``scene``, ``app`` and the module logics.
    """
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app)
    slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app)
    logics = {}
    for name, moduleLogic in [("Colors", slicer.vtkMRMLColorLogic()), ("Volumes", slicer.vtkSlicerVolumesLogic()),
                              ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
                              ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())]:
        moduleLogic.SetMRMLScene(scene)
        moduleLogic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, moduleLogic)
        logics[name] = moduleLogic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{k.lower(): types.SimpleNamespace(logic=(lambda m=v: m))
                                              for k, v in logics.items()})
    return types.SimpleNamespace(scene=scene, app=app, **logics)


# ---------------------------------------------------------------------------- synthetic case
# The case type is the engine's RefineCase (CT, truth, coarse, spacing; here also the liver).


def synthetic_case(seed: int = 0, shape=(24, 80, 80), spacing_zyx=(2.5, 0.8, 0.8), shift_mm: Optional[float] = None) -> RefineCase:
    """A lobulated hypodense lesion in liver-like tissue with noise; the coarse mask is the truth
    grown (or shrunk, ``shift_mm`` < 0) by 1.5-3 mm, the bias a coarse network shows."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_zyx, dtype=np.float32)
    z, y, x = np.indices(shape).astype(np.float32) * spacing[:, None, None, None]
    centre = np.array(shape) * spacing / 2 + rng.uniform(-3, 3, 3)
    radius = rng.uniform(9, 13)
    angle = np.arctan2(y - centre[1], x - centre[2])
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    lobes = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.cos(5 * angle)
    signed = r - radius * lobes  # mm, negative inside
    truth = signed < 0
    shift = shift_mm if shift_mm is not None else rng.choice([-1, 1]) * rng.uniform(1.5, 3.0)
    coarse = signed < shift
    # The liver fills most of the field, so every boundary patch sees liver around the lesion.
    liver = ((y - centre[1]) / 42) ** 2 + ((x - centre[2]) / 42) ** 2 + ((z - centre[0]) / 40) ** 2 < 1
    liver_hu, contrast = rng.uniform(80, 120), rng.uniform(35, 70)
    image = np.where(liver, liver_hu, 40.0)
    image = np.where(truth, liver_hu - contrast, image) + rng.normal(0, 12, shape)
    return RefineCase(f"synthetic{seed}", image.astype(np.float32), truth, coarse, tuple(map(float, spacing_zyx)),
                      liver=liver & ~truth)


# ---------------------------------------------------------------------------- scene building
def ijk_to_ras(spacing_zyx, origin_ras, directions=LPS_ALIGNED_DIRECTIONS) -> np.ndarray:
    """4x4 IJK-to-RAS matrix; ``directions`` are the I, J, K axis unit vectors in RAS."""
    m = np.eye(4)
    spacing_xyz = (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    for axis in range(3):
        m[:3, axis] = np.asarray(directions[axis], dtype=float) * spacing_xyz[axis]
    m[:3, 3] = origin_ras
    return m


def vtk_matrix(m: np.ndarray):
    """A vtkMatrix4x4 holding the 4x4 numpy matrix ``m``."""
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def add_ct(scene, image: np.ndarray, matrix: np.ndarray, name: str = "CT"):
    """A scalar volume (int16 HU) with the given IJK-to-RAS matrix."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.round(image).astype(np.int16))
    node.SetIJKToRASMatrix(vtk_matrix(matrix))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(400, 40)
    return node


def add_segment(segmentationNode, mask: np.ndarray, name: str, color, matrix: np.ndarray) -> str:
    """Add ``mask`` (z, y, x) on the grid ``matrix`` (IJK-to-RAS) as a segment in its own layer."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    image.SetImageToWorldMatrix(vtk_matrix(matrix))
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image)
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GenerateUniqueSegmentID(name)
    segmentation.AddSegment(segment, segmentId)
    segmentation.GetSegment(segmentId).SetColor(*color)
    return segmentId


def fine_grid(mask: np.ndarray, matrix: np.ndarray, start=(3, 5, 7)) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` on a grid with half the spacing, cropped from odd ``start`` (fine voxels, z, y, x).

    Fine voxel 2i of the uncropped grid sits exactly on CT voxel i, so nearest-neighbour
    resampling back onto the CT is exact; the crop gives another extent and an origin offset
    by an odd number of half-voxels. Returns the fine mask and its IJK-to-RAS matrix.
    """
    fine = mask.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    hits = [np.flatnonzero(fine.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    stop = [min(int(h[-1]) + 1 + 8, n) for h, n in zip(hits, fine.shape)]
    if any(int(h[0]) < s for h, s in zip(hits, start)):
        raise ValueError("the mask reaches into the cropped border")
    cropped = fine[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    fineToCt = np.diag([0.5, 0.5, 0.5, 1.0])
    fineToCt[:3, 3] = [start[2] / 2, start[1] / 2, start[0] / 2]  # (i, j, k) = (x, y, z)
    return cropped, matrix @ fineToCt


@dataclass
class SceneCase:
    case: RefineCase
    volumeNode: Any
    segmentationNode: Any
    coarseId: str
    truthSegmentationNode: Any
    truthId: str
    otherId: str  # a liver segment that must keep its own (filled) display
    matrix: np.ndarray


def build_scene_case(scene, case: RefineCase, separate_truth: bool = False, fine_segmentation: bool = False,
                     origin_ras=(40.0, 30.0, -55.0)) -> SceneCase:
    """Put ``case`` in ``scene``: CT, a segmentation with coarse ("Tumour") and liver segments, and
    the truth segment ("Tumour truth") in the same or a separate segmentation node.

    With ``fine_segmentation`` the segments live on another grid (half the spacing, other extent,
    an origin that is not on the CT's grid) than the CT.
    """
    matrix = ijk_to_ras(case.spacing_zyx, origin_ras)
    volumeNode = add_ct(scene, case.image, matrix, f"{case.name} CT")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case.name} segmentation")
    segmentationNode.CreateDefaultDisplayNodes()

    def put(node, mask, name, color):
        if fine_segmentation:
            fine, fineMatrix = fine_grid(mask, matrix)
            return add_segment(node, fine, name, color, fineMatrix)
        return add_segment(node, mask, name, color, matrix)

    if not fine_segmentation:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    otherId = add_segment(segmentationNode, case.liver, "Liver", OTHER_SEGMENT_COLOR, matrix)  # on the CT grid
    segmentationNode.GetDisplayNode().SetSegmentOpacity2DFill(otherId, 0.3)  # a user's own display choice
    coarseId = put(segmentationNode, case.coarse, "Tumour", (0.2, 0.4, 1.0))
    truthNode = segmentationNode
    if separate_truth:
        truthNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case.name} truth")
        truthNode.CreateDefaultDisplayNodes()
    truthId = put(truthNode, case.truth, "Tumour truth", (0.5, 0.5, 0.5))
    return SceneCase(case, volumeNode, segmentationNode, coarseId, truthNode, truthId, otherId, matrix)


# ---------------------------------------------------------------------------- scene snapshots
def segment_voxels(segmentationNode, segmentId: str) -> tuple[np.ndarray, tuple, tuple]:
    """The segment's own voxels in its internal labelmap (no scene nodes are created):
    (bool array, extent, image-to-world matrix)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId)
    image = segment.GetRepresentation("Binary labelmap")
    extent = tuple(image.GetExtent())
    dims = image.GetDimensions()
    values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    matrix = tuple(m.GetElement(r, c) for r in range(4) for c in range(4))
    return values == segment.GetLabelValue(), extent, matrix


def scene_snapshot(scene) -> dict:
    """Everything a refinement could change: nodes, segments (ids, names, colours, tags, voxels),
    segment display settings, volume voxels and table contents."""
    import slicer

    snap: dict[str, Any] = {"nodes": [], "segments": {}, "display": {}, "volumes": {}, "tables": {}}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        snap["nodes"].append((node.GetID(), node.GetClassName(), node.GetName()))
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            segments = []
            for k in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(k)
                segment = segmentation.GetSegment(segmentId)
                tagValues = (scene_nodes.segment_tag(segment, TERMINOLOGY_TAG), scene_nodes.segment_tag(segment, ltr.REFINED_FROM_TAG))
                voxels, extent, matrix = segment_voxels(node, segmentId)
                segments.append((segmentId, segment.GetName(), tuple(segment.GetColor()), tagValues,
                                 segmentation.GetLayerIndex(segmentId), extent, matrix, voxels.copy()))
            snap["segments"][node.GetID()] = segments
            display = node.GetDisplayNode()
            if display is not None:
                perSegment = tuple(
                    (sid, display.GetSegmentVisibility(sid), display.GetSegmentVisibility2DFill(sid),
                     display.GetSegmentVisibility2DOutline(sid), display.GetSegmentOpacity2DOutline(sid))
                    for sid, *_ in segments)
                snap["display"][node.GetID()] = (display.GetVisibility(), display.GetVisibility2DFill(),
                                                 display.GetVisibility2DOutline(),
                                                 display.GetSliceIntersectionThickness(), perSegment)
        elif node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            snap["volumes"][node.GetID()] = slicer.util.arrayFromVolume(node).copy()
        elif node.IsA("vtkMRMLTableNode"):
            table = node.GetTable()
            snap["tables"][node.GetID()] = [
                (table.GetColumnName(c), [table.GetValue(r, c).ToString() for r in range(table.GetNumberOfRows())])
                for c in range(table.GetNumberOfColumns())]
    shNode = scene.GetSubjectHierarchyNode() if hasattr(scene, "GetSubjectHierarchyNode") else None
    snap["shItems"] = shNode.GetNumberOfItems() if shNode is not None else None
    return snap


def assert_same_scene(before: dict, after: dict, context: str = "") -> None:
    where = f" ({context})" if context else ""
    assert before["nodes"] == after["nodes"], f"scene nodes changed{where}: {before['nodes']} -> {after['nodes']}"
    assert before["shItems"] == after["shItems"], f"subject hierarchy changed{where}"
    assert before["tables"] == after["tables"], f"a table changed{where}"
    assert before["display"] == after["display"], f"segment display changed{where}"
    for nodeId, arr in before["volumes"].items():
        assert np.array_equal(arr, after["volumes"][nodeId]), f"voxels of volume {nodeId} changed{where}"
    assert before["segments"].keys() == after["segments"].keys()
    for nodeId, segments in before["segments"].items():
        others = after["segments"][nodeId]
        assert [s[:7] for s in segments] == [s[:7] for s in others], f"segments of {nodeId} changed{where}"
        for a, b in zip(segments, others):
            assert np.array_equal(a[7], b[7]), f"voxels of segment {a[1]!r} changed{where}"


def _segment_state(segmentationNode, segmentId):
    voxels, extent, matrix = segment_voxels(segmentationNode, segmentId)
    return voxels.copy(), extent, matrix


def _assert_same_segment(before, after, name):
    assert before[1] == after[1] and before[2] == after[2], f"geometry of segment {name!r} changed"
    assert np.array_equal(before[0], after[0]), f"voxels of segment {name!r} changed"


# ---------------------------------------------------------------------------- checks
def check_refine(scene, logic, sc: SceneCase):
    """Refine with a truth segment and check names, colours, terminology, layers, outlines,
    untouched inputs and the metrics table (values equal to the engine's compute_metrics)."""
    segmentation = sc.segmentationNode.GetSegmentation()
    coarseName = segmentation.GetSegment(sc.coarseId).GetName()
    ct = sc.volumeNode
    ctBefore = _array(ct).copy()
    coarseBefore = _segment_state(sc.segmentationNode, sc.coarseId)
    truthBefore = _segment_state(sc.truthSegmentationNode, sc.truthId)
    otherDisplay = _segment_display(sc.segmentationNode, sc.otherId)
    nodesBefore = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    seen = []
    result = logic.refine(ct, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId, device="cpu",
                          progress=lambda f, m: seen.append((f, m)))
    # Progress: monotonic, from 0 to 1.
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0, f"progress should run 0 -> 1, got {fractions[:3]}...{fractions[-3:]}"
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), "progress went backwards"

    refinedId = result.refinedSegmentId
    refined = segmentation.GetSegment(refinedId)
    assert refined is not None, "the refined segment is not in the coarse segment's segmentation"
    assert refined.GetName() == coarseName + " refined", f"refined segment is named {refined.GetName()!r}"
    terminology = scene_nodes.segment_tag(refined, TERMINOLOGY_TAG)  # vtkSegment.GetTerminology is missing in Slicer 5.8
    assert terminology == scene_nodes.LIVER_NEOPLASM_TERMINOLOGY, f"terminology {terminology!r}"
    assert "SCT^108369006^Neoplasm" in terminology and "SCT^10200004^Liver" in terminology
    assert tuple(refined.GetColor()) == ltr.REFINED_COLOR, f"refined colour {refined.GetColor()}"
    assert tuple(segmentation.GetSegment(sc.coarseId).GetColor()) == ltr.COARSE_COLOR
    truthSegment = sc.truthSegmentationNode.GetSegmentation().GetSegment(sc.truthId)
    assert tuple(truthSegment.GetColor()) == ltr.TRUTH_COLOR
    assert segmentation.GetLayerIndex(refinedId) != segmentation.GetLayerIndex(sc.coarseId), \
        "the refined segment shares the coarse segment's labelmap layer"
    if sc.truthSegmentationNode is sc.segmentationNode:
        assert segmentation.GetLayerIndex(refinedId) != segmentation.GetLayerIndex(sc.truthId)

    # Display: the three tumour segments as outlines only, thickness 2; the liver as before.
    for node, ids in ((sc.segmentationNode, (sc.coarseId, refinedId)), (sc.truthSegmentationNode, (sc.truthId,))):
        display = node.GetDisplayNode()
        assert display.GetVisibility() and display.GetVisibility2DOutline(), "2D outlines are switched off"
        assert display.GetSliceIntersectionThickness() == ltr.OUTLINE_THICKNESS, "outline thickness is not 2"
        for segmentId in ids:
            assert display.GetSegmentVisibility(segmentId)
            assert display.GetSegmentVisibility2DOutline(segmentId), f"{segmentId}: outline hidden"
            assert not display.GetSegmentVisibility2DFill(segmentId), f"{segmentId}: still filled in 2D"
    assert _segment_display(sc.segmentationNode, sc.otherId) == otherDisplay, "another segment's display changed"

    # Inputs untouched, voxel for voxel; only the table node is new in the scene.
    assert np.array_equal(_array(ct), ctBefore), "the CT changed"
    _assert_same_segment(coarseBefore, _segment_state(sc.segmentationNode, sc.coarseId), coarseName)
    _assert_same_segment(truthBefore, _segment_state(sc.truthSegmentationNode, sc.truthId), "truth")
    nodesAfter = {scene.GetNthNode(i).GetID(): scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    assert nodesBefore <= set(nodesAfter), "nodes were removed"
    added = {nodesAfter[i] for i in set(nodesAfter) - nodesBefore}
    assert added <= {ltr.METRICS_TABLE_NAME, lesions.REVIEW_TABLE_NAME, lesions.REVIEW_DATA_NAME}, \
        f"besides the metrics and lesion tables and the review data, nodes were added: {sorted(added)}"

    # The refined segment holds what the engine returned, on the CT grid.
    refinedMask = scene_nodes.export_segment_mask(sc.segmentationNode, refinedId, ct)
    coarseMask = scene_nodes.export_segment_mask(sc.segmentationNode, sc.coarseId, ct)
    truthMask = scene_nodes.export_segment_mask(sc.truthSegmentationNode, sc.truthId, ct)
    assert refinedMask.any() and not np.array_equal(refinedMask, coarseMask), "refinement changed nothing"
    assert result.patches > 0 and result.seconds.get("total", 0) > 0 and result.seconds["overall"] > 0

    # Metrics table: rows coarse, refined; values exactly the engine's compute_metrics.
    table = result.tableNode
    assert table is not None and table.GetName() == ltr.METRICS_TABLE_NAME
    spacing = tuple(reversed(ct.GetSpacing()))
    expected = {"coarse": compute_metrics(truthMask, coarseMask, spacing),
                "refined": compute_metrics(truthMask, refinedMask, spacing)}
    assert_table(table, expected)
    assert result.metrics == expected
    check_refine_review(result, sc, coarseMask, refinedMask, truthMask)
    return result


def check_refine_review(result, sc: SceneCase, coarseMask, refinedMask, truthMask) -> None:
    """The refinement's lesion table: one row per lesion of coarse ∪ refined with Dice against the
    truth and the confidence of the Refiner's per-lesion gate; the "unsure" overlay is hidden."""
    table = result.reviewTable
    assert table is not None and table.GetName() == lesions.REVIEW_TABLE_NAME, "no lesion table"
    rows = lesions.LesionReviewLogic.lesions(table)
    expected, _ = lesions.review_rows(coarseMask, refinedMask, scene_nodes.volume_geometry(sc.volumeNode), truthMask,
                                      result.stats.get("lesions"))
    assert [row["lesion"] for row in rows] == [row.lesion for row in expected] and rows, "lesion rows"
    for row, want in zip(rows, expected):
        for key in ("first_slice", "last_slice", "refined_ml", "refined_diameter_mm", "refined_dice", "status"):
            assert row[key] == getattr(want, key), f"lesion {row['lesion']} {key}: {row[key]} != {getattr(want, key)}"
    if result.stats.get("lesions"):
        assert all(row["confidence"] is not None for row in rows), "the Refiner's confidence is missing"
    assert table.GetTable().GetNumberOfRows() == len(rows)
    if result.uncertainSegmentId is not None:
        segment = sc.segmentationNode.GetSegmentation().GetSegment(result.uncertainSegmentId)
        assert tuple(segment.GetColor()) == ltr.UNCERTAIN_COLOR
        assert not sc.segmentationNode.GetDisplayNode().GetSegmentVisibility(result.uncertainSegmentId), \
            "the unsure overlay is not off by default"


def assert_table(table, expected: dict[str, dict[str, float]]) -> None:
    vtable = table.GetTable()
    headers = [vtable.GetColumnName(c) for c in range(vtable.GetNumberOfColumns())]
    assert headers == [ltr.ROW_HEADER] + [title for title, _ in ltr.METRIC_COLUMNS], f"table columns {headers}"
    rows = [vtable.GetValue(r, 0).ToString() for r in range(vtable.GetNumberOfRows())]
    assert rows == ["coarse", "refined"], f"table rows {rows}"
    for r, row in enumerate(rows):
        for c, (title, key) in enumerate(ltr.METRIC_COLUMNS, start=1):
            value = vtable.GetValue(r, c).ToDouble()
            assert value == expected[row][key] or (np.isnan(value) and np.isnan(expected[row][key])), \
                f"table {row}/{title} = {value!r}, compute_metrics gives {expected[row][key]!r}"


def check_rerun_replaces(scene, logic, sc: SceneCase) -> None:
    """A second run replaces the refined segment (same ID, same place) and reuses the table."""
    segmentation = sc.segmentationNode.GetSegmentation()
    first = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId, "cpu")
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    coarseBefore = _segment_state(sc.segmentationNode, sc.coarseId)
    nodes = scene.GetNumberOfNodes()
    second = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId, "cpu")
    assert second.refinedSegmentId == first.refinedSegmentId, "re-running made a new segment instead of replacing"
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ids, \
        "re-running changed the segment list or order"
    assert scene.GetNumberOfNodes() == nodes, "re-running added nodes (a second metrics table?)"
    assert second.tableNode is first.tableNode
    _assert_same_segment(coarseBefore, _segment_state(sc.segmentationNode, sc.coarseId), "coarse")
    assert segmentation.GetSegment(sc.coarseId).GetName() == "Tumour", "the coarse segment was renamed"
    refined = scene_nodes.export_segment_mask(sc.segmentationNode, second.refinedSegmentId, sc.volumeNode)
    assert refined.any()
    assert logic.findRefinedSegmentId(sc.segmentationNode, sc.coarseId) == first.refinedSegmentId


def check_cancel_leaves_scene_unchanged(scene, logic, sc: SceneCase) -> None:
    """Cancelling at any point, directly or in the worker process, leaves the scene as it was,
    also when an earlier refined segment and table exist."""

    def cancel_when(predicate):
        return lambda fraction, message: not predicate(fraction, message)

    points = {
        "at once": cancel_when(lambda f, m: True),
        "while exporting": cancel_when(lambda f, m: f >= ltr.PREPARE_END and "exported" in m),
        "inside the engine": cancel_when(lambda f, m: ltr.PREPARE_END < f < ltr.WORKER_END and "patches" in m),
        "before writing": cancel_when(lambda f, m: "Adding the refined segment" in m),
    }
    import glob
    import shutil
    import tempfile

    def job_folders():
        return set(glob.glob(os.path.join(tempfile.gettempdir(), ltr.JOB_FOLDER_PREFIX + "*")))

    # Job folders go to a temporary folder of this check's own, so that other programs' jobs in the
    # shared temporary folder cannot look like ours.
    shared, tempfile.tempdir = tempfile.tempdir, tempfile.mkdtemp(prefix="ltr-cancel-check-")
    try:
        _cancel_rounds(scene, logic, sc, points, job_folders)
    finally:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)
        tempfile.tempdir = shared


def _cancel_rounds(scene, logic, sc: SceneCase, points, job_folders) -> None:
    """``check_cancel_leaves_scene_unchanged``'s rounds: on a fresh scene, then after a first run."""
    for rounds in ("fresh scene", "after a first run"):
        before, folders = scene_snapshot(scene), job_folders()
        for label, progress in points.items():
            try:
                logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId,
                             "cpu", progress)
            except RefineCancelled:
                pass
            else:
                raise AssertionError(f"cancel {label} ({rounds}) did not raise RefineCancelled")
            assert_same_scene(before, scene_snapshot(scene), f"cancel {label}, {rounds}")
            assert job_folders() <= folders, f"cancel {label} ({rounds}) left a job folder behind"
        job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode,
                                sc.truthId, "cpu")
        cancel_job(job)
        assert_same_scene(before, scene_snapshot(scene), f"worker cancel, {rounds}")
        if rounds == "fresh scene":
            logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId, "cpu")


def cancel_job(job, after: float = 0.0, timeout: float = 300.0) -> None:
    """Cancel ``job`` once its progress passed ``after`` (0: at once); its worker process and
    everything in its process group must be gone and ``finish`` must raise RefineCancelled."""
    import time

    deadline = time.monotonic() + timeout
    while after > 0 and job.state()[0] < after and not job.done:
        assert time.monotonic() < deadline, f"the worker never got past {after} ({job.state()})"
        time.sleep(0.01)
    assert not job.done, f"the job ended before it could be cancelled at {after}"
    job.cancel()
    assert job.wait(60), "the worker process did not stop after cancel"
    try:
        job.finish()
    except RefineCancelled:
        pass
    else:
        raise AssertionError("a cancelled RefineJob wrote its result")
    assert job.process.process.returncode is not None, "the worker process is still running"
    if os.name == "posix":
        try:
            os.killpg(job.process.process.pid, 0)
        except ProcessLookupError:
            pass
        else:
            raise AssertionError("a process of the cancelled worker's group is still running")
    assert not job.inputs.folder.exists(), "the job folder was left behind"


def check_worker_job(scene, logic, sc: SceneCase):
    """The worker process gives what the in-process call gives, reports progress, and leaves no
    job folder behind."""
    job = logic.startRefine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId,
                            "cpu")
    assert job.wait(300), "the worker process did not finish"
    fraction, message = job.state()
    assert fraction >= ltr.WORKER_END, f"worker stopped at {fraction} ({message})"
    result = job.finish()
    assert not job.inputs.folder.exists(), "the job folder was left behind"
    refined = scene_nodes.export_segment_mask(sc.segmentationNode, result.refinedSegmentId, sc.volumeNode)
    direct = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId, "cpu")
    assert direct.refinedSegmentId == result.refinedSegmentId
    assert np.array_equal(refined, scene_nodes.export_segment_mask(sc.segmentationNode, direct.refinedSegmentId, sc.volumeNode))
    assert result.metrics == direct.metrics, (result.metrics, direct.metrics)
    assert "lesions" in result.stats and "parenchyma_hu" in result.stats, sorted(result.stats)
    return result


def expect_error(call, *fragments: str) -> str:
    """Run ``call``; it must raise RefineError whose message holds every fragment (case-insensitive)."""
    try:
        call()
    except RefineError as exc:
        message = str(exc)
        for fragment in fragments:
            assert fragment.lower() in message.lower(), f"error message {message!r} lacks {fragment!r}"
        return message
    raise AssertionError(f"expected a RefineError mentioning {fragments}")


def check_errors(scene, logic, sc: SceneCase) -> None:
    """Problems a radiologist can fix give a message naming the problem and the fix, and leave
    the scene unchanged."""
    seg, vol = sc.segmentationNode, sc.volumeNode
    emptyId = seg.GetSegmentation().AddEmptySegment("", "Empty lesion")
    farMatrix = sc.matrix.copy()
    farMatrix[:3, 3] += (500.0, 500.0, 500.0)  # half a metre away from the CT
    outsideId = add_segment(seg, sc.case.coarse, "Elsewhere", (0, 0, 1), farMatrix)
    before = scene_snapshot(scene)
    expect_error(lambda: logic.refine(None, seg, sc.coarseId), "no ct volume", "input volume")
    expect_error(lambda: logic.refine(seg, seg, sc.coarseId), "no ct volume")  # wrong node type
    expect_error(lambda: logic.refine(vol, None, sc.coarseId), "no segmentation")
    expect_error(lambda: logic.refine(vol, seg, ""), "no coarse segment")
    expect_error(lambda: logic.refine(vol, seg, "NoSuchSegment"), "no longer in")
    expect_error(lambda: logic.refine(vol, seg, emptyId), "'Empty lesion' is empty", "draw or import")
    expect_error(lambda: logic.refine(vol, seg, outsideId), "'Elsewhere' lies outside the CT", "belongs to this CT")
    expect_error(lambda: logic.refine(vol, seg, sc.coarseId, sc.truthSegmentationNode, None), "no segment in it")
    expect_error(lambda: logic.refine(vol, seg, sc.coarseId, seg, sc.coarseId), "same segment")
    expect_error(lambda: logic.refine(vol, seg, sc.coarseId, seg, emptyId), "reference (truth) segment", "is empty")
    expect_error(lambda: logic.refine(vol, seg, sc.coarseId, seg, outsideId), "lies outside the CT")
    expect_error(lambda: logic.refine(vol, seg, sc.coarseId, device="tpu"), "unknown device", "auto, cpu or cuda")
    assert_same_scene(before, scene_snapshot(scene), "after errors")
    seg.GetSegmentation().RemoveSegment(emptyId)
    seg.GetSegmentation().RemoveSegment(outsideId)


def check_geometry_differs(scene, logic, case: RefineCase) -> None:
    """Segments on another grid than the CT (half the spacing, other extent, origin off the CT
    grid), truth in a separate segmentation: exported exactly, refined segment on the CT grid."""
    sc = build_scene_case(scene, case, separate_truth=True, fine_segmentation=True)
    ct = sc.volumeNode
    coarse = scene_nodes.export_segment_mask(sc.segmentationNode, sc.coarseId, ct)
    truth = scene_nodes.export_segment_mask(sc.truthSegmentationNode, sc.truthId, ct)
    assert np.array_equal(coarse, case.coarse), f"coarse export off the CT grid ({(coarse != case.coarse).sum()} voxels)"
    assert np.array_equal(truth, case.truth), "truth export off the CT grid"
    coarseBefore = _segment_state(sc.segmentationNode, sc.coarseId)
    result = check_refine(scene, logic, sc)
    _assert_same_segment(coarseBefore, _segment_state(sc.segmentationNode, sc.coarseId), "coarse (fine grid)")
    # The refined labelmap is stored on the CT's own grid.
    _, extent, matrix = segment_voxels(sc.segmentationNode, result.refinedSegmentId)
    assert np.allclose(np.array(matrix).reshape(4, 4), sc.matrix), "refined segment is not on the CT grid"
    return result


def check_refined_beats_coarse(result, margin: float = 0.0) -> None:
    scores = {row: result.metrics[row]["dice"] for row in ("coarse", "refined")}
    assert scores["refined"] > scores["coarse"] + margin, \
        f"refined Dice {scores['refined']:.4f} does not beat coarse {scores['coarse']:.4f}"


def deepest_voxel(mask: np.ndarray) -> tuple[int, int, int]:
    """The (k, j, i) voxel of ``mask`` farthest from its surface: where a reader would click."""
    import SimpleITK as sitk

    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                                insideIsPositive=True, squaredDistance=True))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), mask.shape))


def check_seeded_coarse(scene, logic, sc: SceneCase):
    """One point in the lesion (its point list under a transform, with a point still being placed
    and one whose position is unset beside it) gives a new coarse segment, refined in the same job.
    The coarse segment never goes into the segmentation holding the reference: a new node is made;
    the user's segments keep every voxel; a second run adds a second coarse segment to the chosen
    segmentation and leaves the first as it was."""
    import vtk

    case = sc.case
    ids = (sc.coarseId, sc.otherId, sc.truthId) if sc.truthSegmentationNode is sc.segmentationNode else (sc.coarseId, sc.otherId)
    before = {sid: segment_voxels(sc.segmentationNode, sid)[0].copy() for sid in ids}
    k, j, i = deepest_voxel(case.truth)
    ras = sc.matrix @ np.array([i, j, k, 1.0])
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 25.0)  # the point list is under a transform: its world position is what counts
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(shift)
    points.SetAndObserveTransformNodeID(transform.GetID())
    points.AddControlPoint([float(ras[0]) - 25.0, float(ras[1]), float(ras[2])])
    corner = sc.matrix @ np.array([1.0, 1.0, 1.0, 1.0])  # in the CT but outside the lesion: would add a blob
    preview = points.AddControlPoint([float(corner[0]) - 25.0, float(corner[1]), float(corner[2])])
    points.SetNthControlPointPosition(preview, float(corner[0]) - 25.0, float(corner[1]), float(corner[2]),
                                      slicer_position_status("PositionPreview"))
    unset = points.AddControlPoint([900.0, 900.0, 900.0])  # outside the CT: an error if it were used
    points.UnsetNthControlPointPosition(unset)
    assert defined_indices(points) == [0]

    result = logic.refine(sc.volumeNode, sc.segmentationNode, "", sc.truthSegmentationNode, sc.truthId, "cpu",
                          coarseSource="seeds", seedsNode=points)
    node, coarseId = result.segmentationNode, result.coarseSegmentId
    if sc.truthSegmentationNode is sc.segmentationNode:
        assert node is not sc.segmentationNode, "the coarse segment went into the reference segmentation"
    else:
        assert node is sc.segmentationNode, "the coarse segment went into another segmentation"
    segment = node.GetSegmentation().GetSegment(coarseId)
    assert segment.GetName() == "Tumour (seeded coarse)", segment.GetName()
    assert tuple(segment.GetColor()) == ltr.COARSE_COLOR
    assert node.GetSegmentation().GetSegment(result.refinedSegmentId).GetName() == "Tumour (seeded coarse) refined"
    coarse = scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode)
    coarse_dice = dice(coarse, case.truth)
    assert coarse_dice > 0.8, f"seeded coarse Dice {coarse_dice:.3f}"
    for sid, voxels in before.items():
        assert np.array_equal(segment_voxels(sc.segmentationNode, sid)[0], voxels), f"segment {sid} changed"
    assert result.metrics["refined"]["dice"] > 0.8, f"refined Dice {result.metrics['refined']['dice']:.3f}"
    again = logic.refine(sc.volumeNode, node, "", sc.truthSegmentationNode, sc.truthId, "cpu", coarseSource="seeds",
                         seedsNode=points)
    assert again.segmentationNode is node, "the second coarse segment did not go into the chosen segmentation"
    assert again.coarseSegmentId != coarseId
    assert node.GetSegmentation().GetSegment(again.coarseSegmentId).GetName() == "Tumour (seeded coarse) 2"
    assert np.array_equal(scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode), coarse), "first coarse segment changed"
    return result


def _ras(sc: SceneCase, kji) -> list[float]:
    k, j, i = kji
    return [float(v) for v in (sc.matrix @ np.array([i, j, k, 1.0]))[:3]]


def _segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def check_negative_clicks(scene, logic, sc: SceneCase) -> dict:
    """Issue 16: negative points reach the worker's job file (only those with a defined position:
    a point being placed and one whose position is unset are skipped), and a corrective run with
    one more (negative) click replaces the seeded coarse and refined segments in place: same IDs,
    same segment list, no new node; the negative click's voxel leaves the coarse mask, which
    shrinks. Its points all carry their lesion numbers, so the result it replaces is not exported
    into the job. Returns the two coarse masks."""
    import json

    case = sc.case
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    positive.AddControlPoint(_ras(sc, deepest_voxel(case.truth)))
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative clicks")
    preview = negative.AddControlPoint(_ras(sc, (1, 1, 1)))
    negative.SetNthControlPointPosition(preview, *_ras(sc, (1, 1, 1)), slicer_position_status("PositionPreview"))
    unset = negative.AddControlPoint([900.0, 900.0, 900.0])  # outside the CT: an error if it were used
    negative.UnsetNthControlPointPosition(unset)

    first = logic.refine(sc.volumeNode, sc.segmentationNode, "", sc.truthSegmentationNode, sc.truthId, "cpu",
                         coarseSource="seeds", seedsNode=positive, negativeSeedsNode=negative)
    node, coarseId, refinedId = first.segmentationNode, first.coarseSegmentId, first.refinedSegmentId
    before = scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode)
    # the "leak": the coarse voxel farthest from the positive click
    kji = np.argwhere(before)
    far = tuple(int(v) for v in kji[np.argmax(((kji - np.array(deepest_voxel(case.truth))) ** 2).sum(1))])
    shrink = tuple(int(round(a + 0.25 * (b - a))) for a, b in zip(far, deepest_voxel(case.truth)))  # just inside
    negative.AddControlPoint(_ras(sc, shrink))
    assert defined_indices(negative) == [2]

    inputs = logic.prepare(sc.volumeNode, node, coarseId, sc.truthSegmentationNode, sc.truthId, "cpu",
                           coarseSource="seeds", seedsNode=positive, negativeSeedsNode=negative,
                           replaceCoarseSegmentId=coarseId)
    try:
        job = json.loads(inputs.jobPath.read_text())
        assert np.allclose(job["coarse"]["negative_seeds_ras"], [_ras(sc, shrink)], atol=1e-3), job["coarse"]
        assert len(job["coarse"]["seeds_ras"]) == 1 and job["coarse"]["seed_lesions"] == [1]
        assert "previous" not in job["coarse"]  # every point numbered: the replaced result is not exported
        assert inputs.replaceCoarseId == coarseId
    finally:
        logic.cleanup(inputs)

    ids, nodes = _segment_ids(node), [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]
    again = logic.refine(sc.volumeNode, node, coarseId, sc.truthSegmentationNode, sc.truthId, "cpu",
                         coarseSource="seeds", seedsNode=positive, negativeSeedsNode=negative,
                         replaceCoarseSegmentId=coarseId)
    assert again.segmentationNode is node and again.coarseSegmentId == coarseId, "the coarse segment was not replaced"
    assert again.refinedSegmentId == refinedId, "the refined segment was not replaced"
    assert _segment_ids(node) == ids, f"the segment list changed: {ids} -> {_segment_ids(node)}"
    assert [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())] == nodes, "nodes were added"
    assert node.GetSegmentation().GetSegment(coarseId).GetName() == "Tumour (seeded coarse)"
    after = scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode)
    assert before[shrink] and not after[shrink], "the negative click's voxel is still in the coarse segment"
    assert after.sum() < before.sum(), f"the negative click did not shrink the coarse mask ({before.sum()} -> {after.sum()})"
    return {"positive_only": before, "with_negative": after}


def check_positive_click_groups(scene, logic, sc: SceneCase) -> dict:
    """Issue 16: a positive point placed after a seeded result corrects the lesion it touches
    instead of growing a lesion of its own. Apply numbers the first point ("lesion 1" in its
    description); a click update sends the points' numbers and the result it replaces, and the
    worker puts an unnumbered point next to that result into lesion 1, a point far from it into a
    new lesion 2; the numbers are written back into the points. Returns the job's coarse fields
    and the descriptions."""
    import json

    from scipy import ndimage

    from LiverTumorRefineLib.coarse.grouping import GROUP_REACH_MM

    case = sc.case
    seed = deepest_voxel(case.truth)
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    positive.AddControlPoint(_ras(sc, seed))
    first = logic.refine(sc.volumeNode, sc.segmentationNode, "", device="cpu", coarseSource="seeds", seedsNode=positive)
    node, coarseId = first.segmentationNode, first.coarseSegmentId
    assert positive.GetNthControlPointDescription(0) == "lesion 1", positive.GetNthControlPointDescription(0)
    coarse = scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode)
    spacing = np.array(sc.volumeNode.GetSpacing()[::-1])
    # a missed part right next to the result, and a point far from it (a lesion of its own)
    edt = ndimage.distance_transform_edt(~coarse, sampling=spacing)
    near = tuple(int(v) for v in np.argwhere((edt > 0) & (edt <= 2.0))[0])
    far_candidates = np.argwhere(edt > GROUP_REACH_MM + 5.0)
    far = tuple(int(v) for v in far_candidates[len(far_candidates) // 2])
    positive.AddControlPoint(_ras(sc, near))
    positive.AddControlPoint(_ras(sc, far))
    inputs = logic.prepare(sc.volumeNode, node, coarseId, device="cpu", coarseSource="seeds", seedsNode=positive,
                           replaceCoarseSegmentId=coarseId)
    try:
        job = json.loads(inputs.jobPath.read_text())
        assert job["coarse"]["seed_lesions"] == [1, None, None], job["coarse"]
        assert job["coarse"]["ct_identity"] == scene_nodes.ct_identity(sc.volumeNode, job["geometry"])
        assert np.array_equal(worker.load_mask(inputs.folder / job["coarse"]["previous"]), coarse)
    finally:
        logic.cleanup(inputs)
    logic.refine(sc.volumeNode, node, coarseId, device="cpu", coarseSource="seeds", seedsNode=positive,
                 replaceCoarseSegmentId=coarseId)
    descriptions = [positive.GetNthControlPointDescription(n) for n in range(3)]
    assert descriptions == ["lesion 1", "lesion 1", "lesion 2"], descriptions
    after = scene_nodes.export_segment_mask(node, coarseId, sc.volumeNode)
    assert after[near] and after[far], "a positive click is not in the coarse segment"
    return {"job": job["coarse"], "descriptions": descriptions}


def slicer_position_status(name: str) -> int:
    """A ``vtkMRMLMarkupsNode`` position status (``PositionPreview``, ...) by name."""
    import slicer

    return int(getattr(slicer.vtkMRMLMarkupsNode, name))


def run_self_test(scene, logic=None, seed: int = 0, case: Optional[RefineCase] = None, appLogic=None,
                  folder: Optional[str] = None) -> dict:
    """The whole module test on ``scene`` (cleared by the caller), as run in Slicer: by default
    with the shipped model on ``default_model_case``. ``appLogic`` (the application logic, for
    saving and loading the scene; Slicer's own by default) and ``folder`` (where the scene is
    saved; a temporary folder by default) are for the lesion review checks."""
    import tempfile

    logic = logic or ltr.LiverTumorRefineLogic()
    if appLogic is None:
        import slicer

        appLogic = slicer.app.applicationLogic()

    case = case if case is not None else default_model_case(seed)
    sc = build_scene_case(scene, case)
    result = check_refine(scene, logic, sc)
    check_refined_beats_coarse(result)
    check_rerun_replaces(scene, logic, sc)
    check_cancel_leaves_scene_unchanged(scene, logic, sc)
    check_errors(scene, logic, sc)
    geometry = check_geometry_differs(scene, logic, synthetic_case(seed + 1))
    check_seeded_coarse(scene, logic, build_scene_case(scene, synthetic_case(seed + 2)))
    check_worker_job(scene, logic, build_scene_case(scene, synthetic_case(seed + 3)))
    check_negative_clicks(scene, logic, build_scene_case(scene, synthetic_case(seed + 2)))
    check_positive_click_groups(scene, logic, build_scene_case(scene, synthetic_case(seed + 2)))
    with tempfile.TemporaryDirectory(prefix="LiverTumorRefine-selftest-") as temporary:
        run_lesion_review_checks(scene, appLogic, logic, folder or temporary)  # last: it reloads the scene
    return {"dice": {row: result.metrics[row]["dice"] for row in ("coarse", "refined")},
            "geometry_dice": {row: geometry.metrics[row]["dice"] for row in ("coarse", "refined")}}


def default_model_case(seed: int = 0) -> RefineCase:
    """The case used with the shipped model: the project's phantom CT (``phantom.make_phantom``)
    with a coarse mask from ``coarse.simulate_coarse`` (the data the default model is trained
    for), cropped around the lesions to keep the scene small. Falls back to ``synthetic_case``
    where those modules are absent."""
    try:
        from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse
        from LiverTumorRefineLib.training.phantom import make_phantom
    except ImportError:
        return synthetic_case(seed)
    phantom = make_phantom(seed, n_tumours=2)
    labels = np.asarray(phantom.label.array)
    truth = labels == 2
    if not truth.any():
        raise RuntimeError(f"{phantom.name} has no tumour: pick another seed")
    spacing = tuple(float(s) for s in phantom.image.spacing_zyx)
    image = np.asarray(phantom.image.array, dtype=np.float32)
    coarse = simulate_coarse(truth, spacing, np.random.default_rng(seed), image)
    margin = (3, 32, 32)  # slices, rows, columns around the lesions
    box = []
    for axis in range(3):
        hits = np.flatnonzero((truth | coarse).any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin[axis], 0), min(int(hits[-1]) + 1 + margin[axis], truth.shape[axis])))
    box = tuple(box)
    liver = (labels == 1) & ~truth
    return RefineCase(phantom.name, image[box], truth[box], coarse[box], spacing, liver=liver[box])


def _segment_display(segmentationNode, segmentId):
    display = segmentationNode.GetDisplayNode()
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    return (tuple(segment.GetColor()), display.GetSegmentVisibility(segmentId),
            display.GetSegmentVisibility2DFill(segmentId), display.GetSegmentVisibility2DOutline(segmentId),
            display.GetSegmentOpacity2DFill(segmentId), display.GetVisibility2DFill())


def _array(volumeNode) -> np.ndarray:
    import slicer

    return slicer.util.arrayFromVolume(volumeNode)


# ---------------------------------------------------------------------------- offscreen slice rendering
class SliceRenderer:
    """The red slice view rendered offscreen with Slicer's own displayable managers (EGL).

    Needs ``make_app()``'s application logic. Keep the object alive while rendering: the
    displayable manager group must stay referenced.
    """

    def __init__(self, app, width: int = 512, height: int = 512, layoutName: str = "Red") -> None:
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        import slicer
        import vtk

        self.width, self.height = width, height
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        for name in ("vtkMRMLSegmentationsDisplayableManager2D",):
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(width, height)
        # As in Slicer's slice views: the blended volume layers in a bottom renderer, the
        # displayable managers (segment outlines and fills) in a renderer on top, so that
        # semi-transparent fills blend over the CT instead of over black.
        self.window.SetNumberOfLayers(2)
        self.imageRenderer = vtk.vtkRenderer()
        self.imageRenderer.SetLayer(0)
        self.imageRenderer.SetBackground(0, 0, 0)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetLayer(1)
        self.window.AddRenderer(self.imageRenderer)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # without one, rendering crashes
        self.interactor.SetRenderWindow(self.window)
        self.sliceLogic = slicer.vtkMRMLSliceLogic()
        self.sliceLogic.SetMRMLApplicationLogic(app.app)
        self.sliceLogic.SetMRMLScene(app.scene)
        app.app.GetSliceLogics().AddItem(self.sliceLogic)
        self.sliceNode = self.sliceLogic.AddSliceNode(layoutName)
        self.sliceNode.SetOrientation("Axial")
        self.sliceNode.SetDimensions(width, height, 1)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.managers.SetMRMLDisplayableNode(self.sliceNode)
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.background = vtk.vtkActor2D()
        self.background.SetMapper(self.mapper)
        self.background.GetProperty().SetDisplayLocationToBackground()
        self.imageRenderer.AddViewProp(self.background)

    def show(self, volumeNode, sliceZ_ras: float | None = None) -> None:
        """Put ``volumeNode`` in the background, fit it to the view, and go to ``sliceZ_ras``."""
        composite = self.sliceLogic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(volumeNode.GetID())
        self.sliceLogic.FitSliceToBackground(self.width, self.height)
        if sliceZ_ras is not None:
            self.sliceLogic.SetSliceOffset(sliceZ_ras)

    def render(self) -> np.ndarray:
        """The view as an (height, width, 3) uint8 RGB array, first row at the top."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        # The slice logic rebuilds its blend pipeline when layers change: connect its current output.
        self.mapper.SetInputConnection(self.sliceLogic.GetImageDataConnection())
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
        return np.ascontiguousarray(pixels[::-1])

    def pixel_to_ijk(self, volumeNode, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """CT voxel indices (k, j, i) under the given pixels (rows from the top)."""
        import vtk

        xyToRas = self.sliceNode.GetXYToRAS()
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        m = _np_matrix(rasToIjk) @ _np_matrix(xyToRas)
        xy = np.stack([cols + 0.5, (self.height - 1 - rows) + 0.5, np.zeros_like(cols, dtype=float),
                       np.ones_like(cols, dtype=float)])
        ijk = (m @ xy)[:3]
        return np.round(ijk[::-1]).astype(int).T


def _np_matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def color_pixels(rgb: np.ndarray, color, tolerance: int = 40) -> np.ndarray:
    """Mask of pixels within ``tolerance`` (per channel) of ``color`` given as 0-1 floats."""
    target = np.round(np.asarray(color, dtype=float) * 255).astype(int)
    return np.all(np.abs(rgb.astype(int) - target) <= tolerance, axis=-1)


def write_png(rgb: np.ndarray, path: str) -> None:
    """Write an RGB uint8 array as PNG with VTK (no extra dependency)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    h, w, _ = rgb.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    scalars = numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True)
    scalars.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(scalars)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetInputData(image)
    with atomic_path(path, ".png") as tmp:
        writer.SetFileName(tmp)
        writer.Write()


# ---------------------------------------------------------------------------- lesion review (issue 13)
# Ellipsoid lesions with known semi-axes (mm, z, y, x) before and after "refinement", centred on
# voxel centres so that their diameters between voxel centres are exact: A grows by 30% (flagged),
# B crosses the 10 mm measurability threshold (9.6 -> 11.2 mm, +17%: that flag only), C is unchanged.
REVIEW_SPACING = (2.0, 0.8, 0.7)
REVIEW_SHAPE = (32, 96, 110)
REVIEW_LESIONS = {  # name: (centre voxel (k, j, i), coarse semi-axes, refined semi-axes)
    "A": ((16, 30, 35), (8.0, 6.4, 9.8), (8.0, 8.0, 12.6)),
    "B": ((16, 70, 40), (6.0, 4.8, 4.2), (6.0, 5.6, 4.9)),
    "C": ((16, 50, 85), (6.0, 8.0, 7.0), (6.0, 8.0, 7.0)),
}
# I along +R (not LPS): the review reorients to LPS and must map its lesions back exactly.
REVIEW_DIRECTIONS = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass
class ReviewCase:
    volumeNode: Any
    segmentationNode: Any
    coarseId: str
    refinedId: str
    coarse: np.ndarray
    refined: np.ndarray
    truth: np.ndarray
    regions: dict  # lesion name -> bool (k, j, i) mask of its coarse ∪ refined voxels
    matrix: np.ndarray


def ellipsoid(shape, spacing_zyx, centre_kji, semi_axes_mm) -> np.ndarray:
    """Voxels whose centres lie in the axis-aligned ellipsoid (semi-axes in mm, z, y, x)."""
    grid = np.indices(shape).astype(float)
    return sum(((grid[a] - centre_kji[a]) * spacing_zyx[a] / semi_axes_mm[a]) ** 2 for a in range(3)) <= 1 + 1e-9


def build_review_case(scene) -> ReviewCase:
    """A CT with the three ellipsoid lesions of ``REVIEW_LESIONS``; coarse and "refined" segments
    (the refined one as a refinement would leave it); truth = refined for A, coarse for B and C."""
    coarse, refined, truth = (np.zeros(REVIEW_SHAPE, bool) for _ in range(3))
    regions = {}
    for name, (centre, before, after) in REVIEW_LESIONS.items():
        c, r = ellipsoid(REVIEW_SHAPE, REVIEW_SPACING, centre, before), ellipsoid(REVIEW_SHAPE, REVIEW_SPACING, centre, after)
        coarse |= c
        refined |= r
        truth |= r if name == "A" else c
        regions[name] = c | r
    matrix = ijk_to_ras(REVIEW_SPACING, (-30.0, 45.0, -80.0), REVIEW_DIRECTIONS)
    image = np.where(refined, 40.0, 100.0).astype(np.float32)
    volumeNode = add_ct(scene, image, matrix, "Review CT")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Review segmentation")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    coarseId = add_segment(segmentationNode, coarse, "Tumour", ltr.COARSE_COLOR, matrix)
    refinedId = add_segment(segmentationNode, refined, "Tumour refined", ltr.REFINED_COLOR, matrix)
    return ReviewCase(volumeNode, segmentationNode, coarseId, refinedId, coarse, refined, truth, regions, matrix)


def _lesion_numbers(rows, rc: ReviewCase) -> dict:
    """Lesion name -> the review's lesion number, by which region holds the row's centre."""
    numbers = {}
    for row in rows:
        k, j, i = (int(round(v)) for v in np.linalg.solve(rc.matrix, [*row["centre_ras"], 1.0])[:3][::-1])
        names = [name for name, region in rc.regions.items() if region[k, j, i]]
        assert len(names) == 1, f"lesion {row['lesion']}'s centre lies in {names}"
        numbers[names[0]] = row["lesion"]
    assert sorted(numbers) == sorted(REVIEW_LESIONS), f"lesions found: {numbers}"
    return numbers


def check_lesion_table(scene, logic, rc: ReviewCase):
    """The review's rows and table text against the known ellipsoids: diameters within one
    voxel, slice ranges, volumes, Dice, status and flags."""
    from LiverTumorRefineLib.evaluate import review
    from LiverTumorRefineLib.scene import lesions

    table = logic.review.createReview(rc.volumeNode, rc.segmentationNode, rc.refinedId, rc.coarse, rc.refined, rc.truth)
    assert table.GetName() == lesions.REVIEW_TABLE_NAME
    rows = logic.review.lesions(table)
    assert [row["lesion"] for row in rows] == [1, 2, 3], f"lesion numbers {[row['lesion'] for row in rows]}"
    numbers = _lesion_numbers(rows, rc)
    voxel = max(REVIEW_SPACING[1:])
    ml = float(np.prod(REVIEW_SPACING)) / 1000
    for name, (centre, before, after) in REVIEW_LESIONS.items():
        row = rows[numbers[name] - 1]
        for which, axes in (("coarse", before), ("refined", after)):
            longest, perpendicular = 2 * max(axes[1:]), 2 * min(axes[1:])
            assert abs(row[f"{which}_diameter_mm"] - longest) <= voxel, \
                f"{name} {which} longest diameter {row[f'{which}_diameter_mm']} mm, the ellipsoid's is {longest}"
            assert abs(row[f"{which}_perpendicular_mm"] - perpendicular) <= voxel, \
                f"{name} {which} perpendicular {row[f'{which}_perpendicular_mm']} mm, the ellipsoid's is {perpendicular}"
        region = rc.regions[name]
        slices = np.flatnonzero(region.any(axis=(1, 2)))
        assert (row["first_slice"], row["last_slice"]) == (slices[0], slices[-1]), f"{name} slices"
        assert abs(row["coarse_ml"] - np.count_nonzero(rc.coarse & region) * ml) < 1e-3
        assert abs(row["refined_ml"] - np.count_nonzero(rc.refined & region) * ml) < 1e-3
        assert abs(row["refined_dice"] - dice(rc.refined & region, rc.truth & region)) < 1e-3, f"{name} Dice"
        assert abs(row["coarse_dice"] - dice(rc.coarse & region, rc.truth & region)) < 1e-3, f"{name} Dice"
        assert row["decision"] is None
    a, b, c = (rows[numbers[n] - 1] for n in "ABC")
    assert a["flags"] == [review.FLAG_DIAMETER] and a["status"] == review.REFINED, a
    assert b["flags"] == [review.FLAG_MEASURABLE], b
    assert c["flags"] == [] and c["status"] == review.UNCHANGED, c
    assert a["refined_dice"] == 1.0 and b["coarse_dice"] == 1.0
    # The table shows the same rows, as text.
    vtable = table.GetTable()
    assert [vtable.GetColumnName(col) for col in range(vtable.GetNumberOfColumns())] == list(lesions.COLUMNS)
    assert vtable.GetNumberOfRows() == 3
    for r, row in enumerate(rows):
        cells = [vtable.GetValue(r, col).ToString() for col in range(vtable.GetNumberOfColumns())]
        assert cells == lesions.table_cells(row), f"table row {r}: {cells}"
    assert lesions.table_cells(a)[3] == (f"{a['coarse_diameter_mm']:.1f} × {a['coarse_perpendicular_mm']:.1f} → "
                                         f"{a['refined_diameter_mm']:.1f} × {a['refined_perpendicular_mm']:.1f}")
    return table, numbers


def _refined_now(rc: ReviewCase) -> np.ndarray:
    return scene_nodes.export_segment_mask(rc.segmentationNode, rc.refinedId, rc.volumeNode)


def _write_refined(rc: ReviewCase, mask: np.ndarray) -> None:
    """Replace the refined segment's voxels (as a user's edit in the Segment Editor would)."""
    import slicer

    image = scene_nodes.oriented_image_from_mask(mask, rc.volumeNode, rc.segmentationNode)
    moduleLogic = slicer.vtkSlicerSegmentationsModuleLogic
    assert moduleLogic.SetBinaryLabelmapToSegment(image, rc.segmentationNode, rc.refinedId, moduleLogic.MODE_REPLACE)


def check_lesion_decisions(scene, logic, rc: ReviewCase, table, numbers) -> None:
    """Accept, reject, accept all and undo change exactly the lesion's voxels (an edit elsewhere
    in the refined segment survives) and show in the table's Status column; the scene's own undo
    (when switched on) takes a decision back too."""
    from LiverTumorRefineLib.scene import lesions

    review = logic.review
    edit = np.zeros_like(rc.refined)
    edit[2:5, 2:6, 2:6] = True  # the user's own edit, outside every lesion
    _write_refined(rc, rc.refined | edit)
    proposal = rc.refined | edit
    a, b = rc.regions["A"], rc.regions["B"]

    def status(name):
        vtable = table.GetTable()
        return vtable.GetValue(numbers[name] - 1, lesions.COLUMNS.index("Status")).ToString()

    review.setDecision(table, numbers["A"], lesions.ACCEPTED)  # never rejected: nothing changes
    assert np.array_equal(_refined_now(rc), proposal), "accepting an unrejected lesion changed voxels"
    assert status("A") == lesions.ACCEPTED
    review.setDecision(table, numbers["A"], lesions.REJECTED)
    expected = np.where(a, rc.coarse, proposal)
    now = _refined_now(rc)
    assert np.array_equal(now, expected), f"rejecting A: {np.count_nonzero(now != expected)} voxels differ"
    assert np.array_equal(now[~a], proposal[~a]), "rejecting A changed voxels outside A"
    assert status("A") == lesions.REJECTED and review.decisions(table) == {numbers["A"]: lesions.REJECTED}
    review.setDecision(table, numbers["B"], lesions.REJECTED)
    assert np.array_equal(_refined_now(rc), np.where(a | b, rc.coarse, proposal))
    review.setDecision(table, numbers["A"], lesions.ACCEPTED)  # A's refinement comes back
    assert np.array_equal(_refined_now(rc), np.where(b, rc.coarse, proposal))
    review.acceptAll(table)
    assert np.array_equal(_refined_now(rc), proposal), "accept all did not restore every refined lesion"
    assert set(review.decisions(table).values()) == {lesions.ACCEPTED} and len(review.decisions(table)) == 3
    assert review.undoDecision(table), "accept all could not be undone"
    assert np.array_equal(_refined_now(rc), np.where(b, rc.coarse, proposal)), "undo did not give B back its coarse"
    assert review.decisions(table) == {numbers["A"]: lesions.ACCEPTED, numbers["B"]: lesions.REJECTED}
    # The scene's undo (off by default in Slicer; Edit > Undo when on) records each decision.
    wasOn = scene.GetUndoFlag()
    scene.SetUndoOn()
    try:
        before = _refined_now(rc)
        review.setDecision(table, numbers["A"], lesions.REJECTED)
        assert not np.array_equal(_refined_now(rc), before)
        scene.Undo()
        assert np.array_equal(_refined_now(rc), before), "the scene's undo did not restore the refined segment"
        assert review.decisions(table)[numbers["A"]] == lesions.ACCEPTED, "the scene's undo kept the decision"
        assert status("A") == lesions.ACCEPTED
    finally:
        scene.SetUndoFlag(wasOn)
        scene.ClearUndoStack()
    expect_error(lambda: review.setDecision(table, 99, lesions.REJECTED), "Lesion 99", "numbered 1 to 3")


def slice_nodes(scene) -> list:
    """The scene's slice nodes; headless (no views) Red, Yellow and Green are added first."""
    import slicer

    nodes = scene_nodes.nodes_by_class(scene, "vtkMRMLSliceNode")
    if nodes:
        return nodes
    sliceLogic = slicer.vtkMRMLSliceLogic()
    sliceLogic.SetMRMLScene(scene)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = sliceLogic.AddSliceNode(name)
        node.SetOrientation(orientation)
        node.SetDimensions(400, 300, 1)
    return scene_nodes.nodes_by_class(scene, "vtkMRMLSliceNode")


def check_jump_to_lesion(scene, logic, rc: ReviewCase, table, numbers) -> None:
    """Jumping centres every slice view on the lesion's centroid and zooms to show all of it."""
    nodes = slice_nodes(scene)
    for name in REVIEW_LESIONS:
        centroid = np.argwhere(rc.regions[name]).mean(axis=0)  # (k, j, i)
        expected = (rc.matrix @ [centroid[2], centroid[1], centroid[0], 1.0])[:3]
        centre = logic.review.jumpToLesion(table, numbers[name])
        assert np.allclose(centre, expected, atol=0.01), f"{name}: centre {centre}, centroid {expected}"
        row = logic.review.lesions(table)[numbers[name] - 1]
        size = max(row["coarse_diameter_mm"], row["refined_diameter_mm"])
        for node in nodes:
            m = node.GetSliceToRAS()
            position = [m.GetElement(r, 3) for r in range(3)]
            assert np.allclose(position, expected, atol=0.01), f"{node.GetName()} view centre {position} for {name}"
            width, height, _ = node.GetFieldOfView()[:3]
            assert size <= min(width, height) <= max(3 * size, 30.0), \
                f"{node.GetName()} field of view {width:.1f} x {height:.1f} mm for a {size:.1f} mm lesion"


def check_review_saved_with_scene(scene, appLogic, logic, rc: ReviewCase, table, numbers, folder: str) -> None:
    """Decisions, the table and the review's own data are saved with the scene: after saving it
    as a Slicer data bundle, clearing and loading it again, the same decisions and voxels are
    there and a decision still changes exactly that lesion."""
    from LiverTumorRefineLib.scene import lesions

    logic.review.setDecision(table, numbers["B"], lesions.REJECTED)
    decisions, rows = logic.review.decisions(table), logic.review.lesions(table)
    refinedLps = _lps(_refined_now(rc), rc.volumeNode)
    proposalLps = _lps(rc.refined, rc.volumeNode)
    regionLps = _lps(rc.regions["B"], rc.volumeNode)
    segmentationName = rc.segmentationNode.GetName()  # the scene may hold other reviews (the self-test's)
    os.makedirs(folder, exist_ok=True)
    assert appLogic.SaveSceneToSlicerDataBundleDirectory(folder), "saving the scene failed"
    mrml = [name for name in os.listdir(folder) if name.endswith(".mrml")]
    scene.Clear(0)
    scene.SetURL(os.path.join(folder, mrml[0]))
    assert scene.Import(), "loading the scene failed"
    tables = [n for n in scene_nodes.nodes_by_class(scene, "vtkMRMLTableNode") if n.GetName() == lesions.REVIEW_TABLE_NAME
              and n.GetNodeReference(lesions.SEGMENTATION_ROLE) is not None
              and n.GetNodeReference(lesions.SEGMENTATION_ROLE).GetName() == segmentationName]
    assert len(tables) == 1, f"{len(tables)} lesion tables of '{segmentationName}' after loading"
    loaded = tables[0]
    assert logic.review.decisions(loaded) == decisions, "decisions were not saved with the scene"
    assert logic.review.lesions(loaded) == rows, "lesion rows were not saved with the scene"
    segmentationNode = loaded.GetNodeReference(lesions.SEGMENTATION_ROLE)
    volumeNode = loaded.GetNodeReference(lesions.VOLUME_ROLE)
    refinedId = loaded.GetAttribute(lesions.REFINED_ATTRIBUTE)
    assert loaded.GetNodeReference(lesions.DATA_ROLE).GetHideFromEditors()
    now = scene_nodes.export_segment_mask(segmentationNode, refinedId, volumeNode)
    assert np.array_equal(_lps(now, volumeNode), refinedLps), "the refined segment changed through save and load"
    logic.review.setDecision(loaded, numbers["B"], lesions.ACCEPTED)
    after = _lps(scene_nodes.export_segment_mask(segmentationNode, refinedId, volumeNode), volumeNode)
    assert np.array_equal(after, np.where(regionLps, proposalLps, refinedLps)), \
        "after loading, accepting B did not give exactly B's refined voxels back"


def _lps(mask: np.ndarray, volumeNode) -> np.ndarray:
    """A (k, j, i) mask of ``volumeNode``'s grid reoriented to LPS (grids compare across a save
    and load, which may store the volume with another axis order)."""
    from LiverTumorRefineLib.volume import io
    from LiverTumorRefineLib.volume.geometry import Geometry, Volume

    g = scene_nodes.volume_geometry(volumeNode)
    grid = Geometry(tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    return io.reoriented(Volume(np.asarray(mask, dtype=np.uint8), grid), "LPS").array.astype(bool)


def run_lesion_review_checks(scene, appLogic, logic, folder: str) -> None:
    """The lesion review checks on ``scene`` (the self-test's body for issue 13)."""
    rc = build_review_case(scene)
    table, numbers = check_lesion_table(scene, logic, rc)
    check_lesion_decisions(scene, logic, rc, table, numbers)
    check_jump_to_lesion(scene, logic, rc, table, numbers)
    check_review_saved_with_scene(scene, appLogic, logic, rc, table, numbers, folder)
