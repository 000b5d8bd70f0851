"""Parsers shared by the static (no Slicer needed) tests of the BrainFM module files.

They read the ``.ui`` XML (xml.etree), the module Python files (ast) and the CMakeLists files
(regular expressions on the ``set(...)`` lists) so that the tests can compare them.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[3]
SLICER_DIR = REPO / "BrainFMSlicer"
TASK_MODULES = ("BrainFMSynthesis", "BrainFMSegmentation", "BrainFMBiasField", "BrainFMRegistration")
COMMON = "BrainFMCommon"
ALL_MODULES = (COMMON,) + TASK_MODULES
#: the two libraries of the common module: Qt-free (runs on slicer-core) and the Slicer-application layer
SCENE_LIB = SLICER_DIR / COMMON / "BrainFMSceneLib"
MODULE_SUPPORT = SLICER_DIR / COMMON / "BrainFMModuleSupport"


def module_py(module: str) -> Path:
    return SLICER_DIR / module / f"{module}.py"


def module_ui(module: str) -> Path:
    return SLICER_DIR / module / "Resources" / "UI" / f"{module}.ui"


def parse_py(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


# --------------------------------------------------------------------------------------------- .ui
class UiWidget:
    """One ``<widget>`` of a .ui file: class, name, plain properties and dynamic properties."""

    def __init__(self, elem: ET.Element) -> None:
        self.cls = elem.get("class", "")
        self.name = elem.get("name", "")
        self.props: Dict[str, object] = {}
        self.dynamic: Dict[str, object] = {}
        for p in elem.findall("property"):
            value = _prop_value(p)
            (self.dynamic if p.get("stdset") == "0" else self.props)[p.get("name", "")] = value

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"UiWidget({self.cls} {self.name})"


def _prop_value(p: ET.Element) -> object:
    child = list(p)[0] if len(p) else None
    if child is None:
        return None
    if child.tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if child.tag == "bool":
        return (child.text or "").strip() == "true"
    if child.tag == "number":
        return int(child.text or 0)
    return child.text or ""


class UiFile:
    """Everything the tests need from one .ui file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = ET.parse(path).getroot()
        top = self.root.find("widget")
        assert top is not None, f"{path}: no top-level widget"
        self.top = UiWidget(top)
        self.widgets: Dict[str, UiWidget] = {}
        for elem in top.iter("widget"):
            w = UiWidget(elem)
            assert w.name not in self.widgets, f"{path}: duplicate widget name {w.name}"
            self.widgets[w.name] = w
        self.custom_widgets: Dict[str, str] = {
            (c.findtext("class") or ""): (c.findtext("extends") or "") for c in self.root.iter("customwidget")
        }
        self.connections: List[Tuple[str, str, str, str]] = [
            (c.findtext("sender") or "", c.findtext("signal") or "", c.findtext("receiver") or "",
             c.findtext("slot") or "")
            for c in self.root.iter("connection")
        ]

    def parameter_bindings(self) -> Dict[str, UiWidget]:
        """``SlicerParameterName`` value -> widget."""
        out: Dict[str, UiWidget] = {}
        for w in self.widgets.values():
            name = w.dynamic.get("SlicerParameterName")
            if name:
                assert name not in out, f"{self.path}: parameter {name} bound twice"
                out[str(name)] = w
        return out


# --------------------------------------------------------------------------------------------- .py
def find_class(tree: ast.Module, name: str) -> Optional[ast.ClassDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def decorator_names(cls: ast.ClassDef) -> Set[str]:
    out = set()
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name):
            out.add(target.id)
        elif isinstance(target, ast.Attribute):
            out.add(target.attr)
    return out


def parameter_fields(tree: ast.Module, class_name: str) -> Dict[str, ast.expr]:
    """Annotated fields (name -> annotation AST) of a ``@parameterNodeWrapper`` class."""
    cls = find_class(tree, class_name)
    assert cls is not None, f"class {class_name} not found"
    assert "parameterNodeWrapper" in decorator_names(cls), f"{class_name} is not a @parameterNodeWrapper"
    return {
        n.target.id: n.annotation
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }


def base_type_name(annotation: ast.expr) -> str:
    """``Annotated[str, Choice(...)]`` -> ``str``; ``pathlib.Path`` -> ``Path``; ``Optional[X]`` -> X."""
    node = annotation
    while isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        inner = node.slice
        if isinstance(inner, ast.Index):  # pragma: no cover - Python 3.8 AST
            inner = inner.value  # type: ignore[attr-defined]
        if head in ("Annotated", "Optional"):
            node = inner.elts[0] if isinstance(inner, ast.Tuple) else inner
        else:
            break
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ast.dump(node)


def ui_attributes_used(tree: ast.AST) -> Set[str]:
    """Every ``<x>.ui.<name>`` attribute the code touches (``self.ui.applyButton`` -> applyButton)."""
    out = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and not node.attr.startswith("__")):
            out.add(node.attr)
    return out


def literal_assignment(tree: ast.Module, name: str) -> object:
    """Value of a module-level ``NAME = <literal>`` assignment."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Name) and t.id == name and node.value is not None:
                return ast.literal_eval(node.value)
    raise KeyError(f"no module-level literal {name}")


def top_level_imports(tree: ast.Module) -> Set[str]:
    """Root package names imported at module level (including inside top-level try/if blocks)."""
    out: Set[str] = set()

    def visit(stmts: List[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import):
                out.update(a.name.split(".")[0] for a in s.names)
            elif isinstance(s, ast.ImportFrom) and s.module and s.level == 0:
                out.add(s.module.split(".")[0])
            elif isinstance(s, (ast.Try, ast.If, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for sub in getattr(s, block, []) or []:
                        visit(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])

    visit(tree.body)
    return out


# --------------------------------------------------------------------------------------- CMake
_SET_RE = re.compile(r"set\(\s*(MODULE_PYTHON_SCRIPTS|MODULE_PYTHON_RESOURCES)\s+(.*?)\)", re.S)


def cmake_lists(module: str) -> Dict[str, List[str]]:
    """``MODULE_PYTHON_SCRIPTS`` / ``MODULE_PYTHON_RESOURCES`` entries with ``${MODULE_NAME}`` expanded."""
    text = (SLICER_DIR / module / "CMakeLists.txt").read_text(encoding="utf-8")
    m = re.search(r"set\(\s*MODULE_NAME\s+(\w+)\s*\)", text)
    assert m and m.group(1) == module, f"{module}/CMakeLists.txt: MODULE_NAME is not {module}"
    out: Dict[str, List[str]] = {"MODULE_PYTHON_SCRIPTS": [], "MODULE_PYTHON_RESOURCES": []}
    for key, body in _SET_RE.findall(text):
        lines = [ln.split("#", 1)[0] for ln in body.splitlines()]
        out[key] += [e.replace("${MODULE_NAME}", module) for e in " ".join(lines).split()]
    return out


def module_files(module: str) -> Tuple[List[str], List[str]]:
    """(python files, resource files) on disk, relative to the module folder (Testing excluded)."""
    root = SLICER_DIR / module
    py, res = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith("Testing/") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        if rel.startswith("Resources/"):
            res.append(rel)
        elif p.suffix == ".py":
            py.append(rel)
    return py, res


# ------------------------------------------------------------------------- real Slicer API facts
#: The parameterNodeWrapper GUI connectors of Slicer 5.8 - 5.11
#: (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py). Each ``canRepresent`` compares the
#: widget's class *exactly* (``type(widget) == qt.QComboBox``: subclasses such as ``ctkComboBox`` do
#: not bind). Rows: (connector, widget classes, field base types, annotations the connector requires).
#: "stringable" = int/float/str/bool; "node" = a vtkMRML*Node class (or a Union of them).
GUI_CONNECTORS: Tuple[Tuple[str, frozenset, frozenset, Tuple[str, ...]], ...] = (
    ("QCheckBoxToBoolConnector", frozenset({"QCheckBox"}), frozenset({"bool"}), ()),
    ("QCheckablePushButtonToBoolConnector", frozenset({"QPushButton"}), frozenset({"bool"}), ()),
    ("QSliderOrSpinBoxToIntConnector", frozenset({"QSpinBox"}), frozenset({"int"}), ()),
    ("QSliderOrSpinBoxToIntConnector", frozenset({"QSlider"}), frozenset({"int"}), ("bounds",)),
    ("QDoubleSpinBoxCtkSliderWidgetToFloatConnector", frozenset({"QDoubleSpinBox"}), frozenset({"float"}), ()),
    ("QDoubleSpinBoxCtkSliderWidgetToFloatConnector", frozenset({"ctkSliderWidget"}), frozenset({"float"}),
     ("bounds",)),
    ("QComboBoxToStringableConnector", frozenset({"QComboBox"}), frozenset({"int", "float", "str", "bool"}),
     ("Choice",)),
    ("QComboBoxToEnumConnector", frozenset({"QComboBox"}), frozenset({"Enum"}), ()),
    ("QLineEditToStrConnector", frozenset({"QLineEdit"}), frozenset({"str"}), ()),
    ("QTextEditPlainTextToStrConnector", frozenset({"QTextEdit"}), frozenset({"str"}), ()),
    ("ctkRangeWidgetToRangeConnector", frozenset({"ctkRangeWidget"}), frozenset({"FloatRange"}), ("RangeBounds",)),
    ("ctkPathLineEditToPathConnector", frozenset({"ctkPathLineEdit"}), frozenset({"Path", "PurePath"}), ()),
    ("ctkDirectoryButtonToPathConnector", frozenset({"ctkDirectoryButton"}), frozenset({"Path", "PurePath"}), ()),
    ("qMRMLNodeComboBoxToNodeConnector", frozenset({"qMRMLNodeComboBox"}), frozenset({"node"}), ()),
    ("qMRMLSubjectHierarchyTreeViewToNodeConnector", frozenset({"qMRMLSubjectHierarchyTreeView"}),
     frozenset({"node"}), ()),
)


def annotation_names(annotation: ast.expr) -> Set[str]:
    """Names of the calls/classes in ``Annotated[...]`` metadata (``Choice(...)`` -> ``Choice``)."""
    out: Set[str] = set()
    for n in ast.walk(annotation):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def gui_connector(widget_class: str, annotation: ast.expr) -> str:
    """Name of the connector ``connectGui`` would create for a widget bound to a field, else raise
    ``AssertionError`` saying why Slicer would raise ``RuntimeError`` ("Unable to create GUI connector")."""
    base = base_type_name(annotation)
    kind = "node" if base.startswith("vtkMRML") else base
    names = annotation_names(annotation)
    bounded = "WithinRange" in names or {"Minimum", "Maximum"} <= names
    for connector, widgets, types, required in GUI_CONNECTORS:
        if widget_class in widgets and kind in types:
            for need in required:
                ok = bounded if need == "bounds" else need in names
                assert ok, f"{connector} ({widget_class} <-> {base}) needs a {need} annotation"
            return connector
    raise AssertionError(f"no parameterNodeWrapper GUI connector binds a {widget_class} to a {base} field")


#: ``slicer.util`` functions the module code calls, with the parameters all of Slicer 5.8 - 5.11
#: accept (checked against Base/Python/slicer/util.py; ``**`` = extra keywords are passed on to
#: the message box, e.g. ``detailedText``). ``tryWithErrorDisplay`` shows the error and RE-RAISES it.
SLICER_UTIL_API: Dict[str, Tuple[str, ...]] = {
    "addVolumeFromArray": ("narray", "ijkToRAS", "name", "nodeClassName"),
    "arrayFromVolume": ("volumeNode",),
    "arrayFromVTKMatrix": ("vmatrix",),
    "childWidgetVariables": ("widget",),
    "confirmOkCancelDisplay": ("text", "windowTitle", "parent", "**"),
    "errorDisplay": ("text", "windowTitle", "parent", "standardButtons", "**"),
    "getModuleLogic": ("module",),
    "getNode": ("pattern", "index", "scene"),
    "loadUI": ("path",),
    "loadVolume": ("filename", "properties", "returnNode"),
    "mainWindow": (),
    "pip_install": ("requirements",),
    "restart": (),
    "setSliceViewerLayers": ("background", "foreground", "label", "foregroundOpacity", "labelOpacity", "fit",
                             "rotateToVolumePlane"),
    "showStatusMessage": ("message", "duration"),
    "startupEnvironment": (),
    "tryWithErrorDisplay": ("message", "show", "waitCursor"),
}
#: PyTorchUtilsLogic.installTorch (fepegar/SlicerPyTorch): it builds ``"torch" + torchVersionRequirement``,
#: so the requirement is a version specifier without the package name (">=2.1").
PYTORCH_INSTALL_TORCH_PARAMS = ("askConfirmation", "forceComputationBackend", "torchVersionRequirement")


def calls_to(tree: ast.AST, dotted_prefix: str) -> List[Tuple[str, ast.Call]]:
    """``(function name, call)`` for every ``<dotted_prefix>.<name>(...)`` call in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if ast.unparse(node.func.value) == dotted_prefix:
                out.append((node.func.attr, node))
    return out
