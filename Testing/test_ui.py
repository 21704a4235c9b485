"""The .ui file, the module's Python and the CMake files agree (no Slicer application needed).

The Widget only runs inside Slicer (``qt``, ``slicer.parameterNodeWrapper`` are absent here), so
the module file is read with ``ast`` and the .ui with an XML parser:

* every ``self.ui.<name>`` the Python uses exists in the .ui with the class its use needs;
* every parameter-node field is bound: by a ``SlicerParameterName`` on a widget connectGui can
  connect to that type, or by hand through ``MANUAL_BINDINGS`` (written and read in the code);
* MRML widgets get the scene; CMake lists every script and resource.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverTumorRefine"
MODULE_PY = MODULE_DIR / "LiverTumorRefine.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverTumorRefine.ui"
LIB_DIR = MODULE_DIR / "LiverTumorRefineLib"
# Qt code that does not fit the thin module file (a package: Slicer would load a second top-level
# .py as a module); it uses the same self.ui widgets, checked the same way.
GUI_DIR = MODULE_DIR / "LiverTumorRefineGui"
GUI_FILES = sorted(GUI_DIR.glob("*.py"))
EFFECT_DIR = MODULE_DIR / "SegmentEditorRefineBoundaryLib"  # the Segment Editor effect "Refine boundary"

# What each widget must be, given how LiverTumorRefine.py uses it.
EXPECTED_CLASSES = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "coarseSegmentSelector": "qMRMLSegmentSelectorWidget",
    "truthSegmentSelector": "qMRMLSegmentSelectorWidget",
    "deviceComboBox": "QComboBox",
    "outlinesOnlyCheckBox": "QCheckBox",
    "intensityGateCheckBox": "QCheckBox",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "metricsTableView": "qMRMLTableView",
    "openSegmentEditorButton": "QPushButton",
    "seedPointsLabel": "QLabel",
    "automaticNoteLabel": "QLabel",
    "seedPointsSelector": "qMRMLNodeComboBox",
    "seedPlaceWidget": "qSlicerMarkupsPlaceWidget",
    "negativePointsLabel": "QLabel",
    "negativePointsSelector": "qMRMLNodeComboBox",
    "negativePlaceWidget": "qSlicerMarkupsPlaceWidget",
    "updateOnClickCheckBox": "QCheckBox",
    "lesionTableView": "qMRMLTableView",
    "previousLesionButton": "QPushButton",
    "nextLesionButton": "QPushButton",
    "acceptLesionButton": "QPushButton",
    "rejectLesionButton": "QPushButton",
    "acceptAllLesionsButton": "QPushButton",
    "undoDecisionButton": "QPushButton",
    "showUncertaintyCheckBox": "QCheckBox",
    "lesionStatusLabel": "QLabel",
}
# Signals and methods the Python calls, and the classes that have them.
SIGNAL_CLASSES = {
    "clicked(bool)": {"QPushButton", "QToolButton", "QCheckBox"},
    "toggled(bool)": {"QCheckBox", "QPushButton", "QRadioButton"},
    "currentNodeChanged(vtkMRMLNode*)": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "currentSegmentChanged(QString)": {"qMRMLSegmentSelectorWidget"},
    "selectionChanged()": {"qMRMLTableView"},
}
METHOD_CLASSES = {
    "setCurrentSegmentID": {"qMRMLSegmentSelectorWidget"},
    "currentSegmentID": {"qMRMLSegmentSelectorWidget"},
    "setCurrentNode": {"qMRMLSegmentSelectorWidget", "qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget"},
    "currentNode": {"qMRMLSegmentSelectorWidget", "qMRMLNodeComboBox"},
    "setMRMLTableNode": {"qMRMLTableView"},
    "mrmlTableNode": {"qMRMLTableView"}, "currentIndex": {"qMRMLTableView"}, "selectRow": {"qMRMLTableView"},
    "hide": None, "show": None,  # any widget
}
PROPERTY_CLASSES = {
    "text": {"QPushButton", "QLabel", "QCheckBox"},
    "value": {"QProgressBar"},
    "format": {"QProgressBar"},
    "enabled": None, "toolTip": None, "visible": None,
    "checked": {"QCheckBox"},
}
# connectGui connectors (slicer/parameterNodeWrapper/guiConnectors.py): widget class per type.
CONNECTOR_FOR_TYPE = {"node": {"qMRMLNodeComboBox"}, "bool": {"QCheckBox", "QPushButton"},
                      "choice": {"QComboBox"}, "str": {"QLineEdit", "QTextEdit", "QComboBox"},
                      "int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"}}


@pytest.fixture(scope="module")
def ui():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    return root, widgets


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def _ui_uses(tree):
    """{widget name: [(kind, detail)]} for every ``self.ui.<name>...`` in the module."""
    uses: dict[str, list[tuple[str, str]]] = {}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            name, parent = node.attr, parents.get(node)
            use = ("bare", "")
            if isinstance(parent, ast.Attribute):
                grand = parents.get(parent)
                if isinstance(grand, ast.Call) and grand.func is parent:
                    if parent.attr == "connect" and grand.args and isinstance(grand.args[0], ast.Constant):
                        use = ("signal", grand.args[0].value)
                    else:
                        use = ("method", parent.attr)
                else:
                    use = ("property", parent.attr)
            uses.setdefault(name, []).append(use)
    return uses


def _parameter_fields(tree):
    """{field: kind} of the @parameterNodeWrapper class; kind in node, bool, choice, str, int, float."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    text = ast.unparse(item.annotation)
                    if text.startswith("vtkMRML"):
                        kind = "node"
                    elif "Choice(" in text:
                        kind = "choice"
                    else:
                        kind = re.sub(r"^Annotated\[(\w+),.*", r"\1", text)
                    fields[item.target.id] = kind
            return fields
    raise AssertionError("no @parameterNodeWrapper class in LiverTumorRefine.py")


def _module_constant(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in LiverTumorRefine.py")


def test_every_ui_name_exists_with_the_expected_class(ui, module_ast):
    _, widgets = ui
    sources = [("LiverTumorRefine.py", module_ast)] + [(p.name, ast.parse(p.read_text(), filename=str(p))) for p in GUI_FILES]
    for filename, tree in sources:
        _check_ui_uses(widgets, _ui_uses(tree), filename)
    panel = dict(sources)["lesionpanel.py"]
    assert "lesionTableView" in _ui_uses(panel), "the lesion panel uses no self.ui widgets?"


def _check_ui_uses(widgets, uses, filename):
    if filename == "LiverTumorRefine.py":
        assert uses, "the module uses no self.ui widgets?"
    for name, how in uses.items():
        assert name in widgets, f"self.ui.{name} is used in {filename} but missing from the .ui"
        cls = widgets[name].get("class")
        assert name in EXPECTED_CLASSES, f"self.ui.{name}: add it to EXPECTED_CLASSES"
        assert cls == EXPECTED_CLASSES[name], f"{name} is a {cls} in the .ui, expected {EXPECTED_CLASSES[name]}"
        for kind, detail in how:
            table = {"signal": SIGNAL_CLASSES, "method": METHOD_CLASSES, "property": PROPERTY_CLASSES}.get(kind)
            if table is None:
                continue
            assert detail in table, f"self.ui.{name}: unchecked {kind} {detail!r}; add it to the test's table"
            allowed = table[detail]
            assert allowed is None or cls in allowed, f"{name} ({cls}) has no {kind} {detail!r}"


def test_every_parameter_is_bound(ui, module_ast):
    _, widgets = ui
    fields = _parameter_fields(module_ast)
    manual = _module_constant(module_ast, "MANUAL_BINDINGS")
    bound = {w.get("name"): w.find("property[@name='SlicerParameterName']/string").text
             for w in widgets.values() if w.find("property[@name='SlicerParameterName']") is not None}
    by_parameter = {}
    for widget, parameter in bound.items():
        assert parameter in fields, f"{widget} is bound to {parameter!r}, which is not a parameter-node field"
        assert parameter not in by_parameter, f"{parameter!r} is bound to two widgets"
        by_parameter[parameter] = widget
    source = MODULE_PY.read_text()
    for field, kind in fields.items():
        if field in by_parameter:
            assert field not in manual, f"{field} is bound in the .ui and by hand"
            cls = widgets[by_parameter[field]].get("class")
            assert cls in CONNECTOR_FOR_TYPE[kind], f"connectGui cannot bind a {kind} parameter to a {cls}"
        else:
            assert field in manual, f"parameter {field!r} is bound to no widget (SlicerParameterName or MANUAL_BINDINGS)"
            widget = manual[field]
            assert widget in widgets, f"MANUAL_BINDINGS maps {field} to missing widget {widget}"
            assert f"self.ui.{widget}" in source, f"{widget} is never used, so {field} is not synced"
            assert re.search(rf"\.{field} = ", source), f"{field} is never written from the GUI"
            assert re.search(rf"\.{field}\b(?! = )", source), f"{field} is never read back into the GUI"
    for field in manual:
        assert field in fields, f"MANUAL_BINDINGS names {field!r}, which is not a parameter-node field"


def test_device_choices_match_combo_and_logic(ui, module_ast):
    _, widgets = ui
    devices = _module_constant(module_ast, "DEVICES")
    items = [i.find("property/string").text for i in widgets["deviceComboBox"].findall("item")]
    assert items == list(devices), f"combo items {items} differ from DEVICES {list(devices)}"
    assert set(devices.values()) == {"auto", "cpu", "cuda"}
    assert "Choice(list(DEVICES))" in MODULE_PY.read_text()


def test_coarse_source_choices_match_combo_and_logic(ui, module_ast):
    from LiverTumorRefineLib.scene.logic import COARSE_SEGMENT_NAMES

    _, widgets = ui
    sources = _module_constant(module_ast, "COARSE_SOURCES")
    items = [i.find("property/string").text for i in widgets["coarseSourceComboBox"].findall("item")]
    assert items == list(sources), f"combo items {items} differ from COARSE_SOURCES {list(sources)}"
    assert set(sources.values()) - {"mask"} == set(COARSE_SEGMENT_NAMES)
    assert "Choice(list(COARSE_SOURCES))" in MODULE_PY.read_text()


def test_mrml_widgets_receive_the_scene(ui):
    root, widgets = ui
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top.get("name") and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {name for name, w in widgets.items() if w.get("class", "").startswith(("qMRML", "qSlicer")) and w is not top}
    assert mrml <= receivers, f"MRML widgets without the scene: {sorted(mrml - receivers)}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in widgets.values() if not w.get("class", "").startswith("Q")}
    assert used <= declared, f"custom widgets not declared: {sorted(used - declared)}"


def test_module_file_is_thin_and_reexports_logic(module_ast):
    names = {alias.asname or alias.name for node in ast.walk(module_ast) if isinstance(node, ast.ImportFrom)
             and node.module == "LiverTumorRefineLib.scene.logic" for alias in node.names}
    assert "LiverTumorRefineLogic" in names
    classes = {node.name for node in module_ast.body if isinstance(node, ast.ClassDef)}
    assert {"LiverTumorRefine", "LiverTumorRefineWidget", "LiverTumorRefineTest"} <= classes
    assert "LiverTumorRefineLogic" not in classes, "the logic belongs in LiverTumorRefineLib/scene/logic.py"
    assert len(MODULE_PY.read_text().splitlines()) < 340
    # Slicer loads every top-level .py of a scripted module's folder as a module (and reports an
    # error for a helper file): helpers go into packages such as LiverTumorRefineGui.
    assert [p.name for p in MODULE_DIR.glob("*.py")] == ["LiverTumorRefine.py"]


def _cmake_list(text, variable):
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def test_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = {s.replace("${MODULE_NAME}", "LiverTumorRefine") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = ({"LiverTumorRefine.py", "Testing/Python/slicer_testing.py"}
               | {f"LiverTumorRefineGui/{p.name}" for p in GUI_FILES}
               | {f"{EFFECT_DIR.name}/{p.name}" for p in EFFECT_DIR.glob("*.py")}
               | {f"LiverTumorRefineLib/{p.relative_to(LIB_DIR).as_posix()}" for p in LIB_DIR.rglob("*.py")})
    assert on_disk - scripts == set(), f"LiverTumorRefine/CMakeLists.txt misses {sorted(on_disk - scripts)}"
    assert scripts - on_disk == set(), f"LiverTumorRefine/CMakeLists.txt lists missing {sorted(scripts - on_disk)}"
    resources = {s.replace("${MODULE_NAME}", "LiverTumorRefine") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    for resource in ("Resources/Icons/LiverTumorRefine.png", "Resources/UI/LiverTumorRefine.ui",
                     f"{EFFECT_DIR.name}/SegmentEditorRefineBoundaryEffect.png"):
        assert resource in resources and (MODULE_DIR / resource).is_file(), resource
    assert "${MODULE_MODEL_FILES}" in resources and "Resources/Models/*.pt" in text
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert values.get(key), f"{key} is empty"
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    assert values["EXTENSION_ICONURL"].endswith("Resources/Icons/LiverTumorRefine.png")
    assert (ROOT / "Resources" / "Icons" / "LiverTumorRefine.png").is_file()
    assert values["EXTENSION_SCREENSHOTURLS"].endswith("Resources/Screenshots/slice_outlines.png")
    assert (ROOT / "Resources" / "Screenshots" / "slice_outlines.png").is_file()
    assert "add_subdirectory(LiverTumorRefine)" in text


# Issue 12, items 3, 4, 7 and 8: what can be seen without a Slicer application is checked on the
# source; the behaviour itself (dialogs, re-entering the module) only a real Slicer can show.
def _method(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"no method {name} in LiverTumorRefine.py")


def _calls_in(node):
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def test_gui_is_connected_once_per_parameter_node(module_ast):
    """Item 3: on Slicer 5.8 connectGui returns None, so disconnectGui(tag) disconnects nothing."""
    users = {node.name for node in ast.walk(module_ast) if isinstance(node, ast.FunctionDef)
             and any(c.endswith(("connectGui", "disconnectGui")) for c in _calls_in(node))}
    assert users == {"setParameterNode"}, f"connectGui/disconnectGui called from {sorted(users)}"
    setter = _method(module_ast, "setParameterNode")
    first = setter.body[0]
    assert isinstance(first, ast.If) and "parameterNode is self._parameterNode.parameterNode" in ast.unparse(first.test)
    assert isinstance(first.body[-1], ast.Return), "the same parameter node must not be connected again"


def test_every_failure_of_apply_reaches_a_dialog(module_ast):
    """Item 4: any exception (a failed PyTorch install, a bug) gives a dialog, not only a traceback."""
    for name in ("onApplyButton", "_poll"):
        handlers = [h for t in ast.walk(_method(module_ast, name)) if isinstance(t, ast.Try) for h in t.handlers]
        assert any(h.type is not None and ast.unparse(h.type) == "Exception" for h in handlers), name
    apply = _method(module_ast, "onApplyButton")
    guarded = [t for t in ast.walk(apply) if isinstance(t, ast.Try)
               and any(ast.unparse(h.type) == "Exception" for h in t.handlers if h.type is not None)]
    assert any("ensure_torch" in _calls_in(t) and "self.logic.startRefine" in _calls_in(t) for t in guarded)
    dependencies = ast.parse((MODULE_DIR / "LiverTumorRefineGui" / "dependencies.py").read_text())
    handler = next(n for n in ast.walk(dependencies) if isinstance(n, ast.FunctionDef) and n.name == "ensure_torch")
    install = [t for t in ast.walk(handler) if isinstance(t, ast.Try)
               and any(c.endswith("installTorch") for c in _calls_in(t))]
    assert install and any(ast.unparse(h.type) == "Exception" for h in install[0].handlers if h.type is not None)
    assert "_showError" in {n.name for n in ast.walk(module_ast) if isinstance(n, ast.FunctionDef)}
    assert "slicer.util.errorDisplay" in _calls_in(_method(module_ast, "_showError"))


def test_stale_segment_ids_are_dropped_and_apply_asks_the_logic(module_ast):
    """Item 7: IDs go through the Logic's validSegmentId both ways; Apply is enabled by canRefine."""
    for name in ("_onParameterNodeModified", "_segmentSelectorsToParameterNode"):
        calls = [c for c in _calls_in(_method(module_ast, name)) if c == "self.logic.validSegmentId"]
        assert calls, f"{name} does not drop stale segment IDs"
    assert "self.logic.canRefine" in _calls_in(_method(module_ast, "_updateButtons"))


def test_new_coarse_segments_can_go_into_a_new_segmentation(ui, module_ast):
    """Item 8: "None" is selectable for the coarse segmentation, and the Logic (which never writes a
    made coarse segment into the reference's segmentation) gets the source and the seeds."""
    _, widgets = ui
    assert widgets["coarseSegmentSelector"].find("property[@name='noneEnabled']/bool").text == "true"
    start = [n for n in ast.walk(_method(module_ast, "onApplyButton"))
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "self.logic.startRefine"]
    assert start and "COARSE_SOURCES[p.coarseSource]" in ast.unparse(start[0]) and "p.seedPoints" in ast.unparse(start[0])


def test_negative_points_and_click_updates_are_bound(ui, module_ast):
    """Issue 16: the negative list and "Update on each click" are parameters bound to their widgets,
    shown only for the Seed points source; Apply passes the negative list, a click passes the seeded
    coarse segment to replace; the click panel polls the headless-tested trigger."""
    _, widgets = ui
    for name, parameter in (("negativePointsSelector", "negativePoints"), ("updateOnClickCheckBox", "updateOnClick")):
        assert widgets[name].find("property[@name='SlicerParameterName']/string").text == parameter
    assert widgets["updateOnClickCheckBox"].find("property[@name='checked']") is None, "the option is off by default"
    assert "updateOnClick: bool = False" in MODULE_PY.read_text()
    start = [n for n in ast.walk(_method(module_ast, "onApplyButton"))
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "self.logic.startRefine"]
    call = ast.unparse(start[0])
    assert "p.negativePoints" in call and "p.coarseSegmentId if replace else None" in call
    synced = ast.unparse(_method(module_ast, "_onParameterNodeModified"))
    for name in ("negativePointsLabel", "negativePointsSelector", "negativePlaceWidget", "updateOnClickCheckBox"):
        assert f"self.ui.{name}" in synced, f"{name} is not shown/hidden with the Seed points source"
    assert "self.ui.negativePlaceWidget.setCurrentNode(p.negativePoints)" in synced
    assert "self.clickPanel.update(p.seedPoints, p.negativePoints" in synced
    panel = (GUI_DIR / "clickpanel.py").read_text()
    assert "self.trigger.due(self.running())" in panel and "ClickTrigger()" in panel
