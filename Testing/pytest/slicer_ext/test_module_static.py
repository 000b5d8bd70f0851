"""Static checks of the Slicer module files, CMake lists and icons (no Slicer needed).

The module files import ``qt``/``slicer.ScriptedLoadableModule`` and cannot run outside Slicer;
these tests read them with ``ast`` (Python 3.9 grammar, what Slicer 5.8 ships) and check the
structure Slicer relies on: class names, module metadata, keyword-only logic API, lazy torch
imports, and that CMake installs every file.
"""
from __future__ import annotations

import ast
import re

import numpy as np
import pytest
from PIL import Image

from slicer_static_helpers import (
    ALL_MODULES,
    COMMON,
    REPO,
    SLICER_DIR,
    TASK_MODULES,
    cmake_lists,
    decorator_names,
    find_class,
    literal_assignment,
    module_files,
    module_py,
    parameter_fields,
    parse_py,
    top_level_imports,
)

COMMON_PROCESS_KWARGS = {"device", "quality", "model", "waitForCompletion", "progressCallback"}
PROCESS_KWARGS = {
    "BrainFMSegmentation": {"outputSegmentation", "outputLabelmap", "outputTable"},
    "BrainFMSynthesis": {"contrast", "superResolution", "outputVolume"},
    "BrainFMBiasField": {"outputFieldVolume", "outputCorrectedVolume"},
    "BrainFMRegistration": {"outputTransform", "outputAtlasVolume", "outputResampledVolume", "atlasPath"},
}
HEAVY = {"torch", "brainfm"}


def all_python_files():
    files = [p for m in ALL_MODULES for p in (SLICER_DIR / m).rglob("*.py") if "__pycache__" not in p.parts]
    files += [SLICER_DIR / "batch_example.py", SLICER_DIR / "Utilities" / "make_icons.py"]
    return sorted(files)


@pytest.mark.parametrize("path", all_python_files(), ids=lambda p: p.relative_to(SLICER_DIR).as_posix())
def test_python_39_grammar(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    assert not any(isinstance(n, ast.Match) for n in ast.walk(tree)) if hasattr(ast, "Match") else True
    if "from __future__ import annotations" not in source:
        # annotations are evaluated at import time here: X | Y would fail on Python 3.9
        for node in ast.walk(tree):
            ann = getattr(node, "annotation", None) or getattr(node, "returns", None)
            if ann is not None:
                assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)), (
                    f"{path.name}:{node.lineno}: 'X | Y' annotation needs Python 3.10")


@pytest.mark.parametrize("module", ALL_MODULES)
def test_no_heavy_import_at_module_level(module):
    """torch / brainfm are imported lazily (after the dependency check), never when Slicer loads the module."""
    paths = [module_py(module)] + sorted((SLICER_DIR / COMMON / "BrainFMModuleLib").glob("*.py"))
    for path in paths:
        heavy = top_level_imports(parse_py(path)) & HEAVY
        assert not heavy, f"{path.relative_to(REPO)} imports {heavy} at module level"


def test_batch_example_imports_nothing_heavy():
    assert not top_level_imports(parse_py(SLICER_DIR / "batch_example.py")) & HEAVY


def _assigned_parent_attrs(cls: ast.ClassDef):
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    out = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute) and t.value.attr == "parent":
                    out[t.attr] = node.value
    return out


@pytest.mark.parametrize("module", ALL_MODULES)
def test_module_classes_and_metadata(module):
    tree = parse_py(module_py(module))
    cls = find_class(tree, module)
    assert cls is not None and any(getattr(b, "id", "") == "ScriptedLoadableModule" for b in cls.bases)
    attrs = _assigned_parent_attrs(cls)
    for name in ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText"):
        assert name in attrs, f"{module}: parent.{name} not set"
    assert ast.unparse(attrs["categories"]) == "[_('BrainFM')]"
    test_cls = find_class(tree, f"{module}Test")
    assert test_cls is not None, f"{module}Test missing (runTest looks it up by name)"
    if module == COMMON:
        assert ast.unparse(attrs["hidden"]) == "True"
        assert ast.literal_eval(attrs["dependencies"]) == []
        return
    assert ast.literal_eval(attrs["dependencies"]) == [COMMON]
    for suffix in ("Widget", "Logic", "ParameterNode"):
        assert find_class(tree, module + suffix) is not None, f"{module}{suffix} missing"
    assert "parameterNodeWrapper" in decorator_names(find_class(tree, f"{module}ParameterNode"))
    assert any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in test_cls.body)


def test_acknowledgement_cites_the_papers():
    text = literal_assignment(parse_py(module_py(COMMON)), "ACKNOWLEDGEMENT")
    for needle in ("BrainFM", "arXiv:2509.00549", "Brain-ID", "ECCV 2024", "PEPSI", "MICCAI 2024", "CIFL",
                   "Sequence-Invariant"):
        assert needle in text, f"acknowledgement does not cite {needle}"


@pytest.mark.parametrize("module", TASK_MODULES)
def test_logic_process_is_keyword_only(module):
    tree = parse_py(module_py(module))
    logic = find_class(tree, f"{module}Logic")
    process = next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == "process")
    assert [a.arg for a in process.args.args] == ["self", "inputVolume"], "only the input may be positional"
    kwonly = {a.arg for a in process.args.kwonlyargs}
    missing = (COMMON_PROCESS_KWARGS | PROCESS_KWARGS[module]) - kwonly
    assert not missing, f"{module}Logic.process lacks keyword-only {missing}"
    defaults = {a.arg: ast.unparse(d) for a, d in zip(process.args.kwonlyargs, process.args.kw_defaults)}
    assert defaults["waitForCompletion"] == "True" and defaults["device"] == "'auto'"
    assert ast.get_docstring(process) and ":param inputVolume:" in ast.get_docstring(process)
    outputs = literal_assignment_in_class(logic, "OUTPUTS")
    fields = parameter_fields(tree, f"{module}ParameterNode")
    assert set(outputs) <= set(fields), f"{module}Logic.OUTPUTS roles {set(outputs) - set(fields)} are not parameters"
    assert set(outputs) <= kwonly, "every output role must be a keyword of process()"


def literal_assignment_in_class(cls: ast.ClassDef, name: str):
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{cls.name}.{name} not found")


@pytest.mark.parametrize("module", ALL_MODULES)
def test_cmake_lists_every_file(module):
    lists = cmake_lists(module)
    py, res = module_files(module)
    scripts, resources = lists["MODULE_PYTHON_SCRIPTS"], lists["MODULE_PYTHON_RESOURCES"]
    assert sorted(set(py) - set(scripts)) == [], f"{module}/CMakeLists.txt does not install these scripts"
    assert sorted(set(res) - set(resources)) == [], f"{module}/CMakeLists.txt does not install these resources"
    for entry in scripts + resources:
        assert (SLICER_DIR / module / entry).is_file(), f"{module}/CMakeLists.txt lists missing {entry}"
    text = (SLICER_DIR / module / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert (SLICER_DIR / module / "Testing" / "CMakeLists.txt").read_text().strip() == "add_subdirectory(Python)"
    assert (SLICER_DIR / module / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_top_level_cmake():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(BrainFM\)", text, re.M)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({var} "[^"]+"\)', text), f"{var} missing or empty"
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    icon = re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', text).group(1)
    assert icon.startswith("https://raw.githubusercontent.com/") and icon.endswith(".png")
    rel = icon.split("/main/", 1)[1]
    assert (REPO / rel).is_file(), f"icon URL points to {rel}, not in the repository"
    subdirs = re.findall(r"add_subdirectory\(BrainFMSlicer/(\w+)\)", text)
    assert subdirs[0] == COMMON and set(subdirs) == set(ALL_MODULES)
    assert text.index("## NEXT_MODULE") > text.rindex("add_subdirectory(")
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text


@pytest.mark.parametrize("module", ALL_MODULES)
def test_icon_is_128_png_and_reproducible(module):
    path = SLICER_DIR / module / "Resources" / "Icons" / f"{module}.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (128, 128)
        on_disk = np.asarray(img.convert("RGBA"), np.float32)
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_icons", SLICER_DIR / "Utilities" / "make_icons.py")
    make_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_icons)
    drawn = np.asarray(make_icons.draw_icon(module), np.float32)
    assert np.abs(drawn - on_disk).mean() < 2.0, "icon differs from make_icons.py output; rerun the script"


@pytest.mark.parametrize("module", TASK_MODULES)
def test_task_module_files_stay_thin(module):
    assert len(module_py(module).read_text().splitlines()) < 250
