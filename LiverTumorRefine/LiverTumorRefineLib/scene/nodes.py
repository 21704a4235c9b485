"""Slicer scene helpers the logic, the lesion review and the effect share: CT volumes and segments
as arrays on the CT's voxel grid and back, segment tags, and node lookups. Imports ``slicer`` and
``vtk`` inside the functions (never ``qt``), so the engine imports without Slicer."""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from LiverTumorRefineLib import worker
from LiverTumorRefineLib.errors import RefineError

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


def slicer_module():
    """The ``slicer`` package, or a RefineError saying how to get it."""
    try:
        import slicer
    except ImportError:
        raise RefineError("3D Slicer's libraries are not available: run this inside 3D Slicer, or "
                          "`pip install slicer-core` for headless use.") from None
    return slicer


def export_segment_mask(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """Segment ``segmentId`` as a bool (z, y, x) array on ``referenceVolumeNode``'s voxel grid.

    Uses ``ExportSegmentsToLabelmapNode`` with the reference volume, so the segmentation may have
    another spacing, extent, origin or (linear) parent transform. The temporary labelmap and
    the display and colour nodes the export creates are removed again: the scene is unchanged.
    """
    slicer = slicer_module()
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


def accepts_voxel_masks(segmentationNode) -> bool:
    """True when a segment given as a voxel mask (binary labelmap) can be added to the segmentation.

    A segmentation keeps one source representation, and every segment added is converted to it
    (``vtkSegmentation.AddSegment``). Nothing converts a labelmap to planar contours, the source
    representation of a segmentation loaded from an RT structure set (SlicerRT): there the add
    fails."""
    slicer = slicer_module()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    return bool(segmentationNode.GetSegmentation().CanAcceptRepresentation(name))


def check_accepts_voxel_masks(segmentationNode) -> None:
    """Refuse, naming what to do, a segmentation that cannot take a voxel-mask segment."""
    if accepts_voxel_masks(segmentationNode):
        return
    segmentation = segmentationNode.GetSegmentation()
    source = (getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName)()
    raise RefineError(f"The segmentation '{segmentationNode.GetName()}' stores its segments as '{source}' (as an RT "
                      "structure set loads), which a voxel mask cannot be converted to, so no refined segment can be "
                      "added to it. Make 'Binary labelmap' its source representation (Segmentations module, "
                      "Representations: Binary labelmap, Create, then Make source), then refine again.")


def add_segment(segmentationNode, segment, segmentId: str, before: str = "") -> None:
    """``segmentation.AddSegment``, checked: a RefineError instead of a segment silently missing."""
    if not segmentationNode.GetSegmentation().AddSegment(segment, segmentId, before):
        raise RefineError(f"Slicer could not add the segment '{segment.GetName()}' to '{segmentationNode.GetName()}' "
                          "(see the application log): the scene keeps its other segments.")


def put_segment(segmentationNode, segment, previousId: Optional[str], color, first: bool = False) -> str:
    """Add ``segment`` (at the end, or ``first``), or put it in place of ``previousId`` (same ID,
    same position); its ID. Refused before anything is removed when the segmentation cannot take
    a voxel mask."""
    check_accepts_voxel_masks(segmentationNode)
    segmentation = segmentationNode.GetSegmentation()
    wasModifying = segmentationNode.StartModify()
    try:
        if previousId is not None:
            index = segmentation.GetSegmentIndex(previousId)
            segmentation.RemoveSegment(previousId)
            before = segmentation.GetNthSegmentID(index) if index < segmentation.GetNumberOfSegments() else ""
            segmentId = previousId
            add_segment(segmentationNode, segment, segmentId, before or "")
        else:
            segmentId = segmentation.GenerateUniqueSegmentID(segment.GetName())
            before = segmentation.GetNthSegmentID(0) if first and segmentation.GetNumberOfSegments() else ""
            add_segment(segmentationNode, segment, segmentId, before)
        segmentation.GetSegment(segmentId).SetColor(*color)
    finally:
        segmentationNode.EndModify(wasModifying)
    return segmentId


def segment_stamp(segmentationNode, segmentId: str, volumeNode) -> Optional[tuple]:
    """What changes whenever the voxels of segment ``segmentId`` or the CT grid may have: the nodes,
    the modification time of the segment's binary labelmap (VTK's global counter: an edit in place,
    or a labelmap put in its place, gives a later one), and the CT's identity. None when the
    segment has no binary labelmap, or when either node is under a transform (reading the segment
    onto the CT grid then resamples through it, and a transform can change without the segment)."""
    slicer = slicer_module()
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None or volumeNode.GetParentTransformNode() is not None \
            or segmentationNode.GetParentTransformNode() is not None:
        return None
    data = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if data is None:
        return None
    return (segmentationNode.GetID(), segmentId, data.GetMTime(), ct_identity(volumeNode, volume_geometry(volumeNode)))


def segment_is_empty(segmentationNode, segmentId: str) -> bool:
    """True when the segment has no voxel (binary labelmap source) or no geometry (surfaces)."""
    slicer = slicer_module()
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


def oriented_image_from_mask(mask: np.ndarray, volumeNode, segmentationNode, offset_kji=(0, 0, 0)):
    """A vtkOrientedImageData holding ``mask`` on the CT grid, in the segmentation's coordinates;
    ``mask`` may be a crop of that grid whose first voxel is CT voxel ``offset_kji``."""
    slicer = slicer_module()
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    k0, j0, i0 = (int(v) for v in offset_kji)
    image.SetExtent(i0, i0 + mask.shape[2] - 1, j0, j0 + mask.shape[1] - 1, k0, k0 + mask.shape[0] - 1)
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


def tumour_segment(name: str, color, image):
    """A new liver-neoplasm segment with a fixed name and colour that brings its own labelmap
    ``image``: it gets its own layer, so it may overlap the coarse and truth segments, which
    keep every voxel."""
    slicer = slicer_module()
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    segment.SetColor(*color)
    # vtkSegment.SetTerminology exists only from Slicer 5.10: the tag works on every version.
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), LIVER_NEOPLASM_TERMINOLOGY)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image)
    return segment


def direction_lps(volumeNode) -> tuple[float, ...]:
    """The volume's IJK axis directions in LPS, row-major with one column per axis (SimpleITK's
    layout): RAS rows 0 and 1 change sign."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    return tuple((-1.0 if row < 2 else 1.0) * matrix.GetElement(row, col) for row in range(3) for col in range(3))


def check_volume(volumeNode) -> None:
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise RefineError("No CT volume is selected: load the CT and choose it as the input volume.")
    if volumeNode.GetImageData() is None or min(volumeNode.GetImageData().GetDimensions()) < 1:
        raise RefineError(f"The volume '{volumeNode.GetName()}' holds no image data: load the CT again.")
    if volumeNode.GetImageData().GetDimensions()[2] < 2:
        raise RefineError(f"The volume '{volumeNode.GetName()}' is a single slice: refinement needs a 3D CT.")


def ct_array(volumeNode) -> np.ndarray:
    """The CT as a (k, j, i) copy: in its own type when that is a CT's (int16 and the like: half
    the bytes of float32 to copy, write and read in the worker), else float32."""
    array = slicer_module().util.arrayFromVolume(volumeNode)
    image = np.array(array, dtype=worker.job_ct_dtype(array.dtype), copy=True)
    if image.ndim != 3:
        raise RefineError(f"The volume '{volumeNode.GetName()}' is not a single-component 3D image "
                          "(colour or vector volume?): choose the CT.")
    return image


def volume_geometry(volumeNode) -> dict[str, list[float]]:
    """The volume's grid in SimpleITK conventions (LPS; spacing and origin x, y, z; direction
    row-major, one column per axis), as the worker's job file holds it."""
    origin = volumeNode.GetOrigin()
    return {"spacing": [float(s) for s in volumeNode.GetSpacing()],
            "origin": [-float(origin[0]), -float(origin[1]), float(origin[2])],
            "direction": list(direction_lps(volumeNode))}


def ct_identity(volumeNode, geometry: dict[str, list[float]]) -> str:
    """A name of the CT that changes whenever its voxels or its grid do (the node's ID, its image
    data's modification time, its geometry): the kept worker keeps lesion results under it."""
    return f"{volumeNode.GetID()}|{volumeNode.GetImageData().GetMTime()}|{json.dumps(geometry)}"


def nodes_by_class(scene, className: str) -> list:
    """The scene's nodes of ``className``. ``GetNodesByClass`` returns a new reference: it is
    released here (as ``slicer.util.getNodesByClass`` does), or every call leaks a collection."""
    nodes = scene.GetNodesByClass(className)
    nodes.UnRegister(None)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def segment_tag(segment, name: str) -> Optional[str]:
    """The value of tag ``name`` of a vtkSegment, or None when it is unset or empty."""
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(name, value):
        return None
    return str(value) or None
