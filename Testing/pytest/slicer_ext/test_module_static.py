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
    MODULE_SUPPORT,
    PYTORCH_INSTALL_TORCH_PARAMS,
    REPO,
    SCENE_LIB,
    SLICER_DIR,
    SLICER_UTIL_API,
    TASK_MODULES,
    calls_to,
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
    paths = [module_py(module)] + sorted(MODULE_SUPPORT.glob("*.py"))
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
    text = literal_assignment(parse_py(MODULE_SUPPORT / "texts.py"), "ACKNOWLEDGEMENT")
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


def test_common_module_file_stays_thin():
    """BrainFMCommon.py is the hidden module and its self-test only: the widget base, the texts and the
    tables live in their own files of BrainFMModuleSupport (and are re-exported)."""
    tree = parse_py(module_py(COMMON))
    assert len(module_py(COMMON).read_text().splitlines()) < 150
    assert sorted(n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))) == [
        COMMON, f"{COMMON}Test"]
    assert find_class(parse_py(MODULE_SUPPORT / "widget.py"), "BrainFMWidgetBase") is not None
    exported = literal_assignment(tree, "__all__")
    for name in ("BrainFMWidgetBase", "BrainFMLogicBase", "BrainFMRun", "ACKNOWLEDGEMENT", "CONTRIBUTORS", "helpText",
                 "COMMON_WIDGETS", "COMMON_PARAMETERS", "QUALITY_CHOICES", "InputError", "checkInputVolume"):
        assert name in exported, f"BrainFMCommon no longer exports {name}"


# ------------------------------------------------------------------ uses of the real Slicer API
def slicer_side_files():
    """Module files and the Slicer-application layer (the code that runs inside Slicer's Python)."""
    return [module_py(m) for m in ALL_MODULES] + sorted(MODULE_SUPPORT.glob("*.py"))


@pytest.mark.parametrize("path", slicer_side_files(), ids=lambda p: p.name)
def test_slicer_util_calls_match_real_signatures(path):
    """Every ``slicer.util.<f>(...)`` call names a function of SLICER_UTIL_API with parameters it has."""
    for name, call in calls_to(parse_py(path), "slicer.util"):
        assert name in SLICER_UTIL_API, f"{path.name}:{call.lineno}: slicer.util.{name} is not in the checked API table"
        params = SLICER_UTIL_API[name]
        named = [p for p in params if p != "**"]
        assert len(call.args) <= len(named), f"{path.name}:{call.lineno}: too many positional arguments to {name}"
        for kw in call.keywords:
            assert kw.arg in named or "**" in params, (
                f"{path.name}:{call.lineno}: slicer.util.{name}() has no parameter {kw.arg!r} (Slicer 5.8-5.11)")


def test_slicer_util_table_matches_slicer_core():
    """The table above agrees with the real ``slicer/util.py`` shipped in the slicer-core wheel."""
    import inspect

    util = pytest.importorskip("slicer.util", reason="slicer-core wheel not installed")
    for name, params in SLICER_UTIL_API.items():
        parameters = inspect.signature(getattr(util, name)).parameters.values()
        real = [p.name if p.kind != p.VAR_KEYWORD else "**" for p in parameters]
        named = [p for p in params if p != "**"]
        assert real[:len(named)] == named, f"slicer.util.{name}{real} != table {params}"
        assert "**" not in params or "**" in real


def _enclosing_functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _try_with_error_display_blocks(stmts, inside_try=False):
    """(with-statement, is it guarded by a try/except, is it the last statement of its block)."""
    for i, stmt in enumerate(stmts):
        if isinstance(stmt, ast.With) and any("tryWithErrorDisplay" in ast.unparse(item.context_expr)
                                              for item in stmt.items):
            yield stmt, inside_try, i == len(stmts) - 1
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        guarded = inside_try or (isinstance(stmt, ast.Try) and bool(stmt.handlers))
        for field in ("body", "orelse", "finalbody"):
            yield from _try_with_error_display_blocks(getattr(stmt, field, []) or [],
                                                      guarded if field == "body" else inside_try)


@pytest.mark.parametrize("path", slicer_side_files(), ids=lambda p: p.name)
def test_try_with_error_display_is_last_or_guarded(path):
    """``slicer.util.tryWithErrorDisplay`` shows the error and then re-raises it: code after its block
    (progress reset, Apply-button update...) never runs on an error unless the block is inside a try."""
    for func in _enclosing_functions(parse_py(path)):
        for stmt, guarded, last in _try_with_error_display_blocks(func.body):
            assert guarded or last, (f"{path.name}:{stmt.lineno} ({func.name}): statements after a "
                                     "tryWithErrorDisplay block are skipped when it re-raises")


def test_pytorch_utils_install_torch_call():
    """PyTorchUtilsLogic.installTorch(askConfirmation, forceComputationBackend, torchVersionRequirement)
    builds ``"torch" + torchVersionRequirement``: keywords only, and a bare version specifier."""
    tree = parse_py(MODULE_SUPPORT / "logic.py")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "installTorch"]
    assert calls, "installTorch is not called"
    for call in calls:
        assert not call.args and {k.arg for k in call.keywords} <= set(PYTORCH_INSTALL_TORCH_PARAMS)
    requirement = literal_assignment(parse_py(SCENE_LIB / "install.py"), "TORCH_REQUIREMENT")
    assert re.match(r"^(>=|==|~=|<=|>|<|!=)\d", requirement), f"{requirement!r} would give 'torch{requirement}'"


def test_widget_base_initialises_before_the_template_constructor():
    """Without a parent ``ScriptedLoadableModuleWidget.__init__`` calls ``setup()`` at once, so every
    attribute setup() uses must exist before it: the base constructor is the last statement."""
    cls = find_class(parse_py(MODULE_SUPPORT / "widget.py"), "BrainFMWidgetBase")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert ast.unparse(init.body[-1]) == "ScriptedLoadableModuleWidget.__init__(self, parent)"


@pytest.mark.parametrize("module", TASK_MODULES)
def test_self_test_runs_every_test_method_through_run_steps(module):
    """Slicer's Reload-and-Test calls ``<Module>Test().runTest()`` outside unittest: runTest must use
    ``runSteps`` (setUp per step, skips reported, temporary model removed) and list every test_ method."""
    cls = find_class(parse_py(module_py(module)), f"{module}Test")
    tests = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    run = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    assert len(run.body) == 1 and isinstance(run.body[0], ast.Expr), "runTest must be a single runSteps(...) call"
    call = run.body[0].value
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "self.runSteps"
    assert {a.attr for a in call.args if isinstance(a, ast.Attribute)} == tests
