"""The Segment Editor effect "Refine boundary".

Headless (PyPI ``slicer-core``): the effect's logic (``LiverTumorRefineLib.scene.effect``) refines
a segment through the module's Logic and worker process, and its labelmap is written the way the
effect writes it, through Slicer's own segment editor logic (``SaveStateForUndo``,
``ModifySegmentByLabelmap`` in Set mode), which applies the editor's masking settings.

Static: the Qt effect file is read with ``ast`` and checked against Slicer v5.8.1's scripted
effect API (``qSlicerSegmentEditorScriptedEffect``, ``qSlicerSegmentEditorAbstractEffect``,
``AbstractScriptedSegmentEditorEffect``): the tables below were checked by hand at v5.8.1 and are
checked again against the sources wherever a Slicer git mirror is at hand (``SLICER_GIT_DIR``).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverTumorRefine"
EFFECT_DIR = MODULE_DIR / "SegmentEditorRefineBoundaryLib"
EFFECT_FILE = EFFECT_DIR / "SegmentEditorRefineBoundaryEffect.py"
EFFECT_CLASS = "SegmentEditorRefineBoundaryEffect"
TAG = "v5.8.1"
EFFECTS = "Modules/Loadable/Segmentations/EditorEffects"
SCRIPTED_CXX = f"{EFFECTS}/qSlicerSegmentEditorScriptedEffect.cxx"
ABSTRACT_H = f"{EFFECTS}/qSlicerSegmentEditorAbstractEffect.h"
SCRIPTED_H = f"{EFFECTS}/qSlicerSegmentEditorScriptedEffect.h"
ABSTRACT_PY = f"{EFFECTS}/Python/SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py"
EFFECTS_INIT = f"{EFFECTS}/Python/SegmentEditorEffects/__init__.py"

# Python methods qSlicerSegmentEditorScriptedEffect (v5.8.1) calls on the effect, and how many
# arguments it passes (beyond self).
ADAPTOR_METHODS_5_8 = {
    "icon": 0, "helpText": 0, "clone": 0, "activate": 0, "deactivate": 0, "setupOptionsFrame": 0,
    "createCursor": 1, "processInteractionEvents": 3, "processViewNodeEvents": 3, "setMRMLDefaults": 0,
    "referenceGeometryChanged": 0, "sourceVolumeNodeChanged": 0, "masterVolumeNodeChanged": 0,
    "layoutChanged": 0, "interactionNodeModified": 1, "updateGUIFromMRML": 0, "updateMRMLFromGUI": 0,
}
# What an effect must define: clone is mandatory for the adaptor (an effect is cloned into every
# editor widget), the last three are pure virtual in qSlicerSegmentEditorAbstractEffect, and an
# options effect needs its icon, help and options.
REQUIRED = {"clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults", "updateGUIFromMRML",
            "updateMRMLFromGUI"}
# scriptedEffect methods (Q_INVOKABLE or slots) and properties the effect uses, with their 5.8.1 header.
SCRIPTED_EFFECT_CALLS_5_8 = {
    "addLabeledOptionsWidget": ABSTRACT_H, "addOptionsWidget": ABSTRACT_H, "confirmCurrentSegmentVisible": ABSTRACT_H,
    "modifySelectedSegmentByLabelmap": ABSTRACT_H, "parameter": ABSTRACT_H, "parameterSetNode": ABSTRACT_H,
    "referenceGeometryImage": ABSTRACT_H, "saveStateForUndo": ABSTRACT_H, "setParameter": ABSTRACT_H,
    "setParameterDefault": ABSTRACT_H, "setPythonSource": SCRIPTED_H, "self": SCRIPTED_H,
}
SCRIPTED_EFFECT_PROPERTIES_5_8 = {"name", "title", "perSegment", "requireSegments"}


# ---------------------------------------------------------------------------- headless logic
@pytest.fixture(scope="module")
def slicer_modules():
    pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")
    import slicer_testing as st
    from LiverTumorRefineLib.scene import effect, logic, nodes

    return types.SimpleNamespace(st=st, effect=effect, logic=logic, nodes=nodes)


# A coarse outline 2 mm inside the lesion: the refinement grows it, into the "Other" segment.
CASE_SEED, CASE_SHIFT_MM = 0, -2.0
# The gate (config.MIN_KEPT) is about shrinking; min_kept 0 as in test_logic: every change passes.
REFINER_OPTIONS = {"min_kept": 0.0}


def build_editor(m, case):
    """CT, one segmentation with Liver, Tumour (the coarse outline) and Other (a crescent hugging
    the tumour on one side, where the refinement grows) in one shared layer, as painting makes
    them, and Slicer's segment editor logic with Tumour selected."""
    import slicer

    st = m.st
    scene = st.make_app().scene
    matrix = st.ijk_to_ras(case.spacing_zyx, (40.0, 30.0, -55.0))
    volume = st.add_ct(scene, case.image, matrix)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    x = np.indices(case.coarse.shape)[2]
    other = _dilate(case.coarse, 3) & ~case.coarse & (x >= np.flatnonzero(case.coarse.any(axis=(0, 1))).mean())
    liver = case.liver & ~case.coarse & ~other
    ids = {name: st.add_segment(node, mask, name, color, matrix) for name, mask, color in
           (("Liver", liver, (0.8, 0.5, 0.4)), ("Tumour", case.coarse, (1, 1, 0)), ("Other", other, (0, 0, 1)))}
    node.GetSegmentation().CollapseBinaryLabelmaps(False)
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    editorNode = slicer.vtkMRMLSegmentEditorNode()
    scene.AddNode(editorNode)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editorNode)
    editorNode.SetAndObserveSegmentationNode(node)
    editorNode.SetAndObserveSourceVolumeNode(volume)
    editorNode.SetSelectedSegmentID(ids["Tumour"])
    editorNode.SetOverwriteMode(editorNode.OverwriteNone)
    assert editor.UpdateReferenceGeometryImage()
    return types.SimpleNamespace(scene=scene, volume=volume, node=node, ids=ids, editorNode=editorNode, editor=editor,
                                 masks={"Liver": liver, "Tumour": case.coarse, "Other": other}, case=case)


def _dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """In-plane (y, x) dilation by ``voxels`` (a square), enough for a crescent around the lesion."""
    out = mask.copy()
    for _ in range(voxels):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def segment_masks(m, ed) -> dict[str, np.ndarray]:
    return {name: m.nodes.export_segment_mask(ed.node, segmentId, ed.volume) for name, segmentId in ed.ids.items()}


def write_like_the_effect(ed, labelmap) -> None:
    """What the Qt effect does with a refinement: saveStateForUndo, then
    modifySelectedSegmentByLabelmap(labelmap, ModificationModeSet), here through Slicer's segment
    editor logic (the same masking, overwrite and undo rules)."""
    assert ed.editor.SaveStateForUndo()
    ed.editor.ModifySegmentByLabelmap(ed.node, ed.editorNode.GetSelectedSegmentID(), labelmap,
                                      ed.editor.ModificationModeSet, True, False)


def segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def labelmap_array(labelmap) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    dims = labelmap.GetDimensions()
    return vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()


def matrix_of(image) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def run(slicer_modules):
    """One refinement of the Tumour segment in the worker process (the shipped model): the
    scene it ran on, and what the effect's logic handed back."""
    m = slicer_modules
    case = m.st.synthetic_case(CASE_SEED, shift_mm=CASE_SHIFT_MM)
    ed = build_editor(m, case)
    before = m.st.scene_snapshot(ed.scene)
    job = m.effect.start_segment_refine(m.logic.LiverTumorRefineLogic(refinerOptions=REFINER_OPTIONS), ed.volume,
                                        ed.node, ed.ids["Tumour"], "cpu")
    assert job.wait(600), "the worker process did not finish"
    assert job.state()[0] >= m.logic.WORKER_END, job.state()
    refinement = job.finish(ed.editor.GetReferenceGeometryImage())
    assert not job.inputs.folder.exists(), "the job folder was left behind"
    m.st.assert_same_scene(before, m.st.scene_snapshot(ed.scene), "the effect's logic wrote into the scene")
    return types.SimpleNamespace(ed=ed, refinement=refinement, case=case)


def test_refines_the_selected_segment_in_place_and_undo_restores_it(slicer_modules, run):
    m, ed, refinement, case = slicer_modules, run.ed, run.refinement, run.case
    from LiverTumorRefineLib.evaluate.metrics import compute_metrics

    dice = {name: compute_metrics(case.truth, mask, case.spacing_zyx)["dice"]
            for name, mask in (("coarse", case.coarse), ("refined", refinement.mask))}
    assert dice["refined"] > dice["coarse"] + 0.1, dice
    assert (refinement.mask & ~case.coarse).sum() > 100, "the refinement did not grow the shrunk outline"
    assert not refinement.editedMeanwhile and refinement.segmentName == "Tumour"
    assert refinement.coarseMl == pytest.approx(case.coarse.sum() * np.prod(case.spacing_zyx) / 1000)
    assert "Tumour" in m.effect.summary(refinement) and "Undo" in m.effect.summary(refinement)
    segmentIds = segment_ids(ed.node)

    write_like_the_effect(ed, refinement.labelmap)
    after = segment_masks(m, ed)
    assert np.array_equal(after["Tumour"], refinement.mask), "the segment is not the refinement"
    assert (refinement.mask & ed.masks["Other"]).any(), "the test needs a refinement reaching into Other"
    for name in ("Liver", "Other"):
        assert np.array_equal(after[name], ed.masks[name]), f"{name} changed with overwrite off"
    assert segment_ids(ed.node) == segmentIds, "segments were added or removed: the effect refines in place"
    ed.editor.Undo()
    restored = segment_masks(m, ed)
    for name, mask in ed.masks.items():
        assert np.array_equal(restored[name], mask), f"Undo did not restore {name}"


def test_result_is_on_the_editor_grid(run):
    ed, refinement = run.ed, run.refinement
    reference = ed.editor.GetReferenceGeometryImage()
    assert tuple(refinement.labelmap.GetExtent()) == tuple(reference.GetExtent())
    assert np.allclose(matrix_of(refinement.labelmap), matrix_of(reference))
    assert np.array_equal(labelmap_array(refinement.labelmap), refinement.mask.astype(np.uint8))


def test_overwrite_on_takes_exactly_the_refined_voxels_from_other_segments(slicer_modules, run):
    """The counterpart of overwrite off: the same labelmap through the same call, now allowed to
    overwrite, does take voxels from Other (so the overwrite-off check above can fail)."""
    m = slicer_modules
    ed = build_editor(m, run.case)
    ed.editorNode.SetOverwriteMode(ed.editorNode.OverwriteAllSegments)
    write_like_the_effect(ed, run.refinement.labelmap)
    after = segment_masks(m, ed)
    assert np.array_equal(after["Tumour"], run.refinement.mask)
    for name in ("Liver", "Other"):
        assert np.array_equal(after[name], ed.masks[name] & ~run.refinement.mask), name


@pytest.mark.parametrize("setting", ["outside all segments", "intensity range"])
def test_only_the_editable_area_changes(slicer_modules, run, setting):
    import slicer

    m = slicer_modules
    ed = build_editor(m, run.case)
    if setting == "outside all segments":
        ed.editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
        editable = ~(ed.masks["Liver"] | ed.masks["Other"])
    else:
        low, high = -1000.0, 60.0  # the hypodense lesion, not the liver (80-120 HU)
        ed.editorNode.SetSourceVolumeIntensityMask(True)
        ed.editorNode.SetSourceVolumeIntensityMaskRange(low, high)
        ct = np.round(run.case.image).astype(np.int16)  # as the scene holds it
        editable = (ct >= low) & (ct <= high)
    write_like_the_effect(ed, run.refinement.labelmap)
    after = segment_masks(m, ed)
    expected = np.where(editable, run.refinement.mask, ed.masks["Tumour"])
    assert np.array_equal(after["Tumour"], expected), f"{(after['Tumour'] != expected).sum()} voxels differ"
    assert not np.array_equal(expected, run.refinement.mask), "the mask did not hold anything back: a weak test"
    for name in ("Liver", "Other"):
        assert np.array_equal(after[name], ed.masks[name]), name


def test_result_on_an_oversampled_segmentation_grid(slicer_modules, run):
    """A segmentation with twice the CT's resolution (Slicer's oversampling: half the spacing,
    origin a quarter CT voxel back): each CT voxel becomes 2x2x2 voxels of the refinement."""
    import slicer

    m, case, ed = slicer_modules, run.case, run.ed
    ct = matrix_of(ed.editor.GetReferenceGeometryImage())
    fineMatrix = ct.copy()
    fineMatrix[:3, :3] /= 2
    fineMatrix[:3, 3] -= fineMatrix[:3, :3].sum(axis=1) / 2  # a quarter CT voxel along each axis
    fine = slicer.vtkOrientedImageData()
    fine.SetImageToWorldMatrix(m.st.vtk_matrix(fineMatrix))
    shape = case.coarse.shape
    fine.SetExtent(0, 2 * shape[2] - 1, 0, 2 * shape[1] - 1, 0, 2 * shape[0] - 1)
    labelmap = m.effect.refined_labelmap(run.refinement.mask, ed.volume, ed.node, fine)
    assert tuple(labelmap.GetExtent()) == tuple(fine.GetExtent())
    assert np.allclose(matrix_of(labelmap), fineMatrix)
    expected = run.refinement.mask.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert np.array_equal(labelmap_array(labelmap), expected.astype(np.uint8))


def test_result_follows_the_segmentation_transform(slicer_modules, run):
    """The segmentation under a transform (1 CT voxel along R) and the CT not: the labelmap is in
    the segmentation's own coordinates, so the lesion sits one voxel further along I (I runs
    towards L on this CT)."""
    m, ed = slicer_modules, run.ed
    transform = ed.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[0, 3] = run.case.spacing_zyx[2]
    transform.SetMatrixTransformToParent(m.st.vtk_matrix(shift))
    ed.node.SetAndObserveTransformNodeID(transform.GetID())
    try:
        labelmap = m.effect.refined_labelmap(run.refinement.mask, ed.volume, ed.node,
                                             ed.editor.GetReferenceGeometryImage())
    finally:
        ed.node.SetAndObserveTransformNodeID(None)
        ed.scene.RemoveNode(transform)
    expected = np.zeros_like(run.refinement.mask)
    expected[:, :, 1:] = run.refinement.mask[:, :, :-1]
    assert np.array_equal(labelmap_array(labelmap), expected.astype(np.uint8))


def test_cancel_leaves_the_segment_unchanged(slicer_modules):
    m = slicer_modules
    ed = build_editor(m, m.st.synthetic_case(CASE_SEED, shift_mm=CASE_SHIFT_MM))
    before = m.st.scene_snapshot(ed.scene)
    job = m.effect.start_segment_refine(m.logic.LiverTumorRefineLogic(), ed.volume, ed.node, ed.ids["Tumour"], "cpu")
    m.st.cancel_job(job)  # finish() raises RefineCancelled, the process group is gone, no job folder
    m.st.assert_same_scene(before, m.st.scene_snapshot(ed.scene), "cancel")


def test_a_segment_edited_or_deleted_while_refining(slicer_modules):
    """What ``finish`` does when the segment changed under the worker: an edit is reported (the
    effect asks before replacing it), a deleted segment or a closed scene is an error."""
    from LiverTumorRefineLib.errors import RefineError

    m = slicer_modules
    case = m.st.synthetic_case(CASE_SEED, shift_mm=CASE_SHIFT_MM)
    ed = build_editor(m, case)
    logic = m.logic.LiverTumorRefineLogic()
    reference = ed.editor.GetReferenceGeometryImage()
    inputs = logic.prepare(ed.volume, ed.node, ed.ids["Tumour"], device="cpu")  # what start_segment_refine sends
    try:
        result = m.effect.segment_refinement(inputs, case.truth, reference, {}, [], 1.0)
        assert not result.editedMeanwhile
        write_like_the_effect(ed, m.effect.refined_labelmap(case.coarse & (np.indices(case.coarse.shape)[0] < 12),
                                                            ed.volume, ed.node, reference))  # someone erases half
        assert m.effect.segment_refinement(inputs, case.truth, reference, {}, [], 1.0).editedMeanwhile
        ed.node.GetSegmentation().RemoveSegment(ed.ids["Tumour"])
        with pytest.raises(RefineError, match="'Tumour' was deleted while refining"):
            m.effect.segment_refinement(inputs, case.truth, reference, {}, [], 1.0)
        ed.scene.RemoveNode(ed.node)
        with pytest.raises(RefineError, match="closed while refining"):
            m.effect.segment_refinement(inputs, case.truth, reference, {}, [], 1.0)
    finally:
        logic.cleanup(inputs)


def test_bad_inputs_name_the_problem_and_change_nothing(slicer_modules):
    from LiverTumorRefineLib.errors import RefineError

    m = slicer_modules
    ed = build_editor(m, m.st.synthetic_case(CASE_SEED, shift_mm=CASE_SHIFT_MM))
    emptyId = ed.node.GetSegmentation().AddEmptySegment("", "Empty")
    before = m.st.scene_snapshot(ed.scene)
    logic = m.logic.LiverTumorRefineLogic()
    for volume, segmentId, fragment in ((None, ed.ids["Tumour"], "no source volume"),
                                        (ed.volume, emptyId, "'Empty' is empty"),
                                        (ed.volume, "", "no coarse segment")):
        with pytest.raises(RefineError) as error:
            m.effect.start_segment_refine(logic, volume, ed.node, segmentId, "cpu")
        assert fragment.lower() in str(error.value).lower(), str(error.value)
    m.st.assert_same_scene(before, m.st.scene_snapshot(ed.scene), "bad inputs")


def test_segmentation_without_reference_geometry(slicer_modules):
    """``finish`` without the editor's grid uses the segmentation's; without one it says what to do."""
    from LiverTumorRefineLib.errors import RefineError

    m = slicer_modules
    ed = build_editor(m, m.st.synthetic_case(CASE_SEED, shift_mm=CASE_SHIFT_MM))
    image = m.effect.segmentation_reference_geometry(ed.node)
    assert tuple(image.GetExtent()) == tuple(ed.editor.GetReferenceGeometryImage().GetExtent())
    assert np.allclose(matrix_of(image), matrix_of(ed.editor.GetReferenceGeometryImage()))
    bare = ed.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bare")
    with pytest.raises(RefineError, match="no reference geometry.*Segment Editor"):
        m.effect.segmentation_reference_geometry(bare)


# ---------------------------------------------------------------------------- the Qt file, statically
@pytest.fixture(scope="module")
def effect_class() -> ast.ClassDef:
    tree = ast.parse(EFFECT_FILE.read_text(), filename=str(EFFECT_FILE))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert [c.name for c in classes] == [EFFECT_CLASS]
    return classes[0]


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef)}


def _attribute_uses(tree, owner_is) -> tuple[set[str], set[str]]:
    """(methods called, attributes assigned) on expressions ``owner_is`` accepts."""
    called, assigned = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and owner_is(node.func.value):
            called.add(node.func.attr)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and owner_is(target.value):
                    assigned.add(target.attr)
    return called, assigned


def _is_scripted_effect(node) -> bool:
    """``scriptedEffect`` or ``self.scriptedEffect``."""
    return (isinstance(node, ast.Name) and node.id == "scriptedEffect") or \
        (isinstance(node, ast.Attribute) and node.attr == "scriptedEffect")


def test_effect_class_follows_slicers_scripted_effect_api(effect_class):
    source = EFFECT_FILE.read_text()
    assert [b.id for b in effect_class.bases if isinstance(b, ast.Name)] == ["AbstractScriptedSegmentEditorEffect"]
    assert re.search(r"^from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect$", source, re.M)
    # setPythonSource: the module is the folder's name, the class the file's name (+ "Effect").
    assert EFFECT_FILE.stem == EFFECT_CLASS and EFFECT_CLASS.endswith("Effect")
    methods = _methods(effect_class)
    assert REQUIRED <= set(methods), f"missing {sorted(REQUIRED - set(methods))}"
    for name, arity in ADAPTOR_METHODS_5_8.items():
        if name in methods:
            args = methods[name].args
            assert len(args.args) - 1 == arity and not args.vararg, f"{name} must take {arity} argument(s)"
    init = methods["__init__"]
    assert [a.arg for a in init.args.args] == ["self", "scriptedEffect"]
    assert "AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)" in ast.unparse(init)
    clone = ast.unparse(methods["clone"])
    assert "qSlicerSegmentationsEditorEffectsPythonQt" in clone and "setPythonSource(__file__" in clone


def test_editor_calls_exist_in_slicer_5_8(effect_class):
    called, assigned = _attribute_uses(effect_class, _is_scripted_effect)
    unchecked = called - set(SCRIPTED_EFFECT_CALLS_5_8)
    assert not unchecked, f"scriptedEffect calls {sorted(unchecked)}: check them against {TAG} and list them"
    assert assigned <= SCRIPTED_EFFECT_PROPERTIES_5_8, sorted(assigned - SCRIPTED_EFFECT_PROPERTIES_5_8)
    assert {"saveStateForUndo", "modifySelectedSegmentByLabelmap"} <= called, "the result must go through the editor"
    body = ast.unparse(_methods(effect_class)["writeRefinement"])
    assert body.index("saveStateForUndo") < body.index("modifySelectedSegmentByLabelmap"), "undo state first"
    assert "slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet" in body
    # No blocking wait in the GUI: a QTimer polls the job.
    source = EFFECT_FILE.read_text()
    assert "qt.QTimer()" in source and ".wait(" not in source and "time.sleep" not in source


def test_effect_imports_no_qt_into_the_engine():
    text = (MODULE_DIR / "LiverTumorRefineLib" / "scene" / "effect.py").read_text()
    assert not re.search(r"^\s*(import qt|from qt|import ctk)", text, re.M)


def test_registration():
    init = (EFFECT_DIR / "__init__.py").read_text()
    assert f"from .{EFFECT_CLASS} import {EFFECT_CLASS}" in init, "setPythonSource looks for the class in the package"
    assert f'"{EFFECT_FILE.name}"' in init and "setPythonSource(" in init and ".self().register()" in init
    module = (MODULE_DIR / "LiverTumorRefine.py").read_text()
    assert re.search(r'slicer\.app\.connect\("startupCompleted\(\)",.*SegmentEditorRefineBoundaryLib.*registerEffect',
                     module), "the module must register the effect once Slicer has started"
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in ("SegmentEditorRefineBoundaryLib/__init__.py", f"SegmentEditorRefineBoundaryLib/{EFFECT_FILE.name}",
                 "SegmentEditorRefineBoundaryLib/SegmentEditorRefineBoundaryEffect.png"):
        assert path in cmake and (MODULE_DIR / path).is_file(), path


# ---------------------------------------------------------------------------- against v5.8.1's sources
def _slicer_git() -> str | None:
    for candidate in (os.environ.get("SLICER_GIT_DIR"), "/work/.mirror/Slicer+Slicer/repo"):
        if candidate and Path(candidate).is_dir():
            found = subprocess.run(["git", "--git-dir", candidate, "rev-parse", "--verify", "-q", TAG],
                                   capture_output=True)
            if found.returncode == 0:
                return candidate
    return None


def slicer_source(path: str) -> str:
    return subprocess.run(["git", "--git-dir", _slicer_git(), "show", f"{TAG}:{path}"], capture_output=True, text=True,
                          check=True).stdout


needs_sources = pytest.mark.skipif(_slicer_git() is None,
                                   reason=f"no Slicer git mirror with tag {TAG} (set SLICER_GIT_DIR)")


@needs_sources
def test_adaptor_table_matches_slicer_5_8():
    cxx = slicer_source(SCRIPTED_CXX)
    declared = dict(re.findall(r'declareMethod\(Self::(\w+), "(\w+)"\)', cxx))
    assert set(declared.values()) == set(ADAPTOR_METHODS_5_8)
    for enum, name in declared.items():
        # The C++ caller: callMethod(d->XMethod) without arguments, or after PyTuple_New(n).
        call = re.search(rf"(PyTuple_New\((\d+)\)[^{{}}]*?)?callMethod\(d->{enum}\s*(,\s*arguments)?\)", cxx)
        assert call, f"no call of {name} in {SCRIPTED_CXX}"
        assert int(call.group(2) or 0) == ADAPTOR_METHODS_5_8[name], name
    assert 'className.append("Effect")' in cxx and "QFileInfo(newPythonSource).baseName()" in cxx
    assert "sourceDir.dirName()" in cxx  # the module is the folder's name
    assert "Failed to call mandatory clone method" in cxx
    abstract = slicer_source(ABSTRACT_H)
    for name in ("setMRMLDefaults", "updateGUIFromMRML", "updateMRMLFromGUI", "clone"):
        assert re.search(rf"virtual [\w*: ]+ {name}\(\)( const)?\s*=\s*0;", abstract), f"{name} is not pure virtual"


@needs_sources
def test_editor_calls_are_in_slicer_5_8_sources():
    headers = {path: slicer_source(path) for path in set(SCRIPTED_EFFECT_CALLS_5_8.values())}
    for name, path in SCRIPTED_EFFECT_CALLS_5_8.items():
        assert re.search(rf"Q_INVOKABLE [^;]*\b{name}\(", headers[path]) or \
            re.search(rf"public slots:[^}}]*\b{name}\(", headers[path]), f"{name} is not invokable in {TAG}:{path}"
    abstract = headers[ABSTRACT_H]
    for prop in SCRIPTED_EFFECT_PROPERTIES_5_8:
        assert re.search(rf"Q_PROPERTY\(\w+ {prop} READ", abstract), f"property {prop} not in {TAG}"
    assert re.search(r"enum ModificationMode\s*\{\s*ModificationModeSet,", abstract)
    assert re.search(r"modifySelectedSegmentByLabelmap\(vtkOrientedImageData\* modifierLabelmap,\s*"
                     r"ModificationMode modificationMode, bool bypassMasking = false\)", abstract)
    base = slicer_source(ABSTRACT_PY)
    assert "def __init__(self, scriptedEffect):" in base and "def register(self):" in base
    assert "from .AbstractScriptedSegmentEditorEffect import *" in slicer_source(EFFECTS_INIT)
    hollow = slicer_source(f"{EFFECTS}/Python/SegmentEditorEffects/SegmentEditorHollowEffect.py")
    assert "import qSlicerSegmentationsEditorEffectsPythonQt as effects" in hollow
    assert "slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet" in hollow
