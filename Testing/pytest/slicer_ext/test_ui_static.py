"""Static checks of the module .ui files against the module code (no Slicer needed).

Slicer is not available in CI, so these checks stand in for "open the module and click": every
widget the code touches exists with the class the code expects, every parameter binding names a
field of the module's ``@parameterNodeWrapper`` class with a widget that can represent its type,
and the selectors are set up the way the modules rely on (create-new outputs, scene connections).
"""
from __future__ import annotations

import ast
import re

import pytest

from slicer_static_helpers import (
    MODULE_SUPPORT,
    find_class,
    TASK_MODULES,
    GUI_CONNECTORS,
    UiFile,
    base_type_name,
    gui_connector,
    literal_assignment,
    module_py,
    module_ui,
    parameter_fields,
    parse_py,
    ui_attributes_used,
)

#: object-name suffix -> classes a widget with that name may have (the naming convention the code uses)
NAME_CLASSES = {
    "Selector": {"qMRMLNodeComboBox"},
    "ComboBox": {"QComboBox"},
    "PathLineEdit": {"ctkPathLineEdit"},
    "LineEdit": {"QLineEdit"},
    "SpinBox": {"QSpinBox"},
    "ListWidget": {"QListWidget"},
    "CheckBox": {"QCheckBox"},
    "TextEdit": {"QPlainTextEdit", "QTextEdit"},
    "ProgressBar": {"QProgressBar"},
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Show3DButton": {"qMRMLSegmentationShow3DButton"},
    "Button": {"QPushButton"},
    "Label": {"QLabel"},
}


def expected_classes(name: str) -> set:
    lowered = name[0].upper() + name[1:]
    for suffix, classes in NAME_CLASSES.items():
        if lowered.endswith(suffix):
            return classes
    raise AssertionError(f"widget name {name!r} follows no naming convention of {sorted(NAME_CLASSES)}")


@pytest.fixture(scope="module")
def common_tree():
    """The widget base of BrainFMModuleSupport, its mixins (they use the same ``self.ui``) and the table
    of the widgets every module provides (``ui_contract.py``)."""
    tree = parse_py(MODULE_SUPPORT / "widget.py")
    for name in ("model_widget.py", "ui_contract.py"):
        tree.body.extend(parse_py(MODULE_SUPPORT / name).body)
    return tree


def module_tree(name: str):
    """The module file, plus the files of the BrainFMModuleSupport mixins its widget uses (their ``self.ui``
    is the module's panel)."""
    tree = parse_py(module_py(name))
    if "FinetuneWidgetMixin" in ast.unparse(tree):
        tree.body.extend(parse_py(MODULE_SUPPORT / "finetune_widget.py").body)
    return tree


@pytest.fixture(scope="module", params=TASK_MODULES)
def module(request):
    name = request.param
    return name, UiFile(module_ui(name)), module_tree(name)


def test_top_level_is_qmrmlwidget_with_three_sections(module):
    name, ui, _ = module
    assert ui.top.cls == "qMRMLWidget" and ui.top.name == name
    sections = {w.props.get("text"): w for w in ui.widgets.values() if w.cls == "ctkCollapsibleButton"}
    for title in ("Inputs", "Outputs", "Advanced"):
        assert title in sections, f"{name}.ui has no {title} section"
    assert sections["Advanced"].props.get("collapsed") is True, "Advanced must start collapsed"
    for cls, extends in ui.custom_widgets.items():
        assert extends, f"{name}.ui: custom widget {cls} without <extends>"
    used = {w.cls for w in ui.widgets.values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= set(ui.custom_widgets)


def test_every_ui_attribute_used_by_code_exists_with_expected_class(module, common_tree):
    name, ui, tree = module
    used = ui_attributes_used(tree) | ui_attributes_used(common_tree)
    assert "applyButton" in used
    for attr in sorted(used):
        assert attr in ui.widgets, f"{name}.py (or the widget base) uses self.ui.{attr}, missing in {name}.ui"
        assert ui.widgets[attr].cls in expected_classes(attr), (
            f"{name}.ui: {attr} is a {ui.widgets[attr].cls}, expected {sorted(expected_classes(attr))}")


def test_common_widgets_present(module, common_tree):
    name, ui, _ = module
    common = literal_assignment(common_tree, "COMMON_WIDGETS")
    assert set(ui_attributes_used(common_tree)) <= set(common), "the widget base uses a widget not in COMMON_WIDGETS"
    for attr, cls in common.items():
        assert attr in ui.widgets, f"{name}.ui lacks the common widget {attr}"
        assert ui.widgets[attr].cls == cls, f"{name}.ui: {attr} is {ui.widgets[attr].cls}, expected {cls}"
    assert ui.widgets["applyButton"].props.get("text") == "Apply"
    for box in ("logTextEdit", "diagnosticsTextEdit"):
        assert ui.widgets[box].props.get("readOnly") is True, f"{name}.ui: {box} must be read-only"


def test_parameter_bindings_match_parameter_node_fields(module, common_tree):
    name, ui, tree = module
    fields = parameter_fields(tree, f"{name}ParameterNode")
    bindings = ui.parameter_bindings()
    assert bindings, f"{name}.ui binds no widget to the parameter node"
    for param, widget in bindings.items():
        assert param in fields, (f"{name}.ui: {widget.name} has SlicerParameterName={param!r}, "
                                 f"not a field of {name}ParameterNode ({sorted(fields)})")
        connector = gui_connector(widget.cls, fields[param])  # what connectGui would pick, or why it raises
        type_name = base_type_name(fields[param])
        if connector == "qMRMLNodeComboBoxToNodeConnector":
            # the connector overwrites nodeTypes with the field type: keep the .ui saying the same thing
            assert widget.props.get("nodeTypes") == [type_name], (
                f"{name}.ui: {widget.name} nodeTypes {widget.props.get('nodeTypes')} != field type {type_name}")
    common = literal_assignment(common_tree, "COMMON_PARAMETERS")
    for param, type_name in common.items():
        assert param in fields and base_type_name(fields[param]) == type_name, (
            f"{name}ParameterNode lacks the common parameter {param}: {type_name}")


def _annotation(source: str) -> ast.expr:
    return ast.parse(f"x: {source}").body[0].annotation


@pytest.mark.parametrize("widget_class, annotation, expected", [
    ("QComboBox", "Annotated[str, Choice(['a', 'b'])]", "QComboBoxToStringableConnector"),
    ("QComboBox", "str", "Choice"),  # Slicer: "ComboBoxToStringableConnector requires the Choice annotation"
    ("ctkComboBox", "Annotated[str, Choice(['a'])]", "no parameterNodeWrapper GUI connector"),  # exact class
    ("QPlainTextEdit", "str", "no parameterNodeWrapper GUI connector"),  # only QTextEdit binds to str
    ("QLineEdit", "pathlib.Path", "no parameterNodeWrapper GUI connector"),
    ("ctkPathLineEdit", "pathlib.Path", "ctkPathLineEditToPathConnector"),
    ("ctkPathLineEdit", "str", "no parameterNodeWrapper GUI connector"),
    ("ctkSliderWidget", "float", "bounds"),
    ("ctkSliderWidget", "Annotated[float, WithinRange(0, 1)]", "QDoubleSpinBoxCtkSliderWidgetToFloatConnector"),
    ("QSpinBox", "float", "no parameterNodeWrapper GUI connector"),
    ("QCheckBox", "bool", "QCheckBoxToBoolConnector"),
    ("qMRMLNodeComboBox", "vtkMRMLScalarVolumeNode", "qMRMLNodeComboBoxToNodeConnector"),
    ("qMRMLNodeComboBox", "str", "no parameterNodeWrapper GUI connector"),
])
def test_connector_table_matches_slicer_rules(widget_class, annotation, expected):
    """The table behind the binding test says what guiConnectors.py does, failures included."""
    try:
        got = gui_connector(widget_class, _annotation(annotation))
    except AssertionError as e:
        got = str(e)
    assert expected in got
    assert len({row[0] for row in GUI_CONNECTORS}) == 13  # one row group per connector class in Slicer


def test_unbound_combo_boxes_are_filled_by_code(module, common_tree):
    """A QComboBox without SlicerParameterName gets no items from connectGui: the code must fill it."""
    name, ui, tree = module
    bound = {w.name for w in ui.parameter_bindings().values()}
    source = ast.unparse(tree) + ast.unparse(common_tree)
    for w in ui.widgets.values():
        if w.cls == "QComboBox" and w.name not in bound:
            assert re.search(rf"ui\.{w.name}\b", source) and ".addItem(" in source, (
                f"{name}.ui: {w.name} is neither bound to a Choice parameter nor filled by the module code")


def test_node_selectors(module):
    name, ui, _ = module
    selectors = [w for w in ui.widgets.values() if w.cls == "qMRMLNodeComboBox"]
    connected = {rcv for snd, sig, rcv, slot in ui.connections
                 if snd == name and sig == "mrmlSceneChanged(vtkMRMLScene*)" and slot == "setMRMLScene(vtkMRMLScene*)"}
    for w in selectors:
        assert w.props.get("nodeTypes"), f"{name}.ui: {w.name} has no nodeTypes"
        assert w.name in connected, f"{name}.ui: {w.name} is not connected to mrmlSceneChanged"
        if w.name.startswith("output"):
            for flag in ("noneEnabled", "addEnabled", "renameEnabled"):
                assert w.props.get(flag) is True, f"{name}.ui: output selector {w.name} needs {flag}"
        else:
            assert w.props.get("addEnabled") is False and w.props.get("showChildNodeTypes") is False, (
                f"{name}.ui: input selector {w.name} must not create nodes nor list label maps")
    assert any(w.name.startswith("output") for w in selectors), f"{name}.ui has no output selector"


def test_ui_is_designer_compatible(module):
    name, ui, _ = module
    text = module_ui(name).read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert ui.root.tag == "ui" and ui.root.get("version") == "4.0"
    assert ui.root.findtext("class") == name
    for w in ui.widgets.values():
        assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", w.name), f"{name}.ui: bad object name {w.name!r}"


def test_segmentation_fine_tune_section():
    """The Segmentation module's collapsed *Fine-tune* section: a segmentation selector bound to the parameter
    node, Add pair / the pair list / Remove, steps (default 500 in the .ui and in the parameter node), the
    model name, "Train: decoder too" and the Fine-tune button, all inside the section."""
    name = "BrainFMSegmentation"
    ui, tree = UiFile(module_ui(name)), module_tree(name)
    section = next(e for e in ui.root.iter("widget") if e.get("name") == "finetuneCollapsibleButton")
    inside = {e.get("name"): e.get("class") for e in section.iter("widget")}
    assert inside == {
        "finetuneCollapsibleButton": "ctkCollapsibleButton", "finetuneLayoutLabelSegmentation": "QLabel",
        "finetuneSegmentationSelector": "qMRMLNodeComboBox", "finetuneAddPairButton": "QPushButton",
        "finetunePairsListWidget": "QListWidget", "finetuneRemovePairButton": "QPushButton",
        "finetuneLayoutLabelSteps": "QLabel", "finetuneStepsSpinBox": "QSpinBox", "finetuneLayoutLabelName": "QLabel",
        "finetuneModelNameLineEdit": "QLineEdit", "finetuneLayoutLabelDecoder": "QLabel",
        "finetuneDecoderCheckBox": "QCheckBox", "finetuneButton": "QPushButton"}
    widgets = ui.widgets
    assert widgets["finetuneCollapsibleButton"].props == {**widgets["finetuneCollapsibleButton"].props,
                                                          "text": "Fine-tune", "collapsed": True}
    assert widgets["finetuneButton"].props.get("text") == "Fine-tune"
    assert widgets["finetuneAddPairButton"].props.get("text") == "Add pair"
    assert widgets["finetuneRemovePairButton"].props.get("text") == "Remove"
    bindings = {param: w.name for param, w in ui.parameter_bindings().items()}
    assert {k: bindings.get(k) for k in ("finetuneSegmentation", "finetuneSteps", "finetuneModelName",
                                         "finetuneDecoder")} == {
        "finetuneSegmentation": "finetuneSegmentationSelector", "finetuneSteps": "finetuneStepsSpinBox",
        "finetuneModelName": "finetuneModelNameLineEdit", "finetuneDecoder": "finetuneDecoderCheckBox"}
    fields = parameter_fields(tree, f"{name}ParameterNode")
    steps = next(n for n in find_class(tree, f"{name}ParameterNode").body
                 if isinstance(n, ast.AnnAssign) and n.target.id == "finetuneSteps")
    assert base_type_name(fields["finetuneSteps"]) == "int" and ast.unparse(steps.value) == "FINETUNE_STEPS"
    steps_default = literal_assignment(parse_py(MODULE_SUPPORT / "finetune.py"), "FINETUNE_STEPS")
    assert steps_default == 500 == widgets["finetuneStepsSpinBox"].props["value"]
    assert widgets["finetuneStepsSpinBox"].props["minimum"] == 1
    used = ui_attributes_used(tree)
    assert {w for w in inside if not w.startswith(("finetuneLayoutLabel", "finetuneCollapsible"))} - used == {
        "finetuneSegmentationSelector", "finetuneStepsSpinBox", "finetuneModelNameLineEdit",
        "finetuneDecoderCheckBox"}  # bound, not touched
