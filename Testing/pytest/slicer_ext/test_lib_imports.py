"""BrainFMSceneLib imports without torch/brainfm (first start in Slicer) and parses as Python 3.9."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[3] / "BrainFMSlicer" / "BrainFMCommon" / "BrainFMSceneLib"


def test_every_module_imports_with_brainfm_and_torch_hidden():
    code = (
        "import sys, importlib, pathlib\n"
        "sys.modules['brainfm'] = None; sys.modules['torch'] = None\n"  # 'import brainfm' now fails
        f"sys.path.insert(0, {str(LIB.parent)!r})\n"
        "names = [p.stem for p in pathlib.Path(" + repr(str(LIB)) + ").glob('*.py') if p.stem != '__init__']\n"
        "for n in sorted(names): importlib.import_module('BrainFMSceneLib.' + n)\n"
        "from BrainFMSceneLib._errors import InputError\n"
        "assert InputError.exit_code == 2 and InputError.__module__ == 'BrainFMSceneLib._errors'\n"
        "from BrainFMSceneLib.registry import ModelRegistry\n"
        "c = ModelRegistry(custom_file=pathlib.Path(sys.argv[1])).bundled_choice()\n"
        "assert not c.available and 'not installed' in c.message, c\n"
        "print('OK', len(names))\n"
    )
    tmp = Path(__file__).parent / "__missing__.json"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("OK")
    assert not tmp.exists()


def test_error_copies_match_the_engine_with_and_without_brainfm():
    """BrainFMSceneLib's look-alike errors (used before brainfm is installed) have the engine's names and exit codes."""
    import json

    import brainfm.errors as engine

    expected = {name: cls.exit_code for name, cls in vars(engine).items()
                if isinstance(cls, type) and issubclass(cls, engine.BrainFMError)}
    #: the built-in exceptions each error also is (``except ValueError`` catches an InputError)
    expected_bases = {name: sorted(b.__name__ for b in cls.__mro__ if b.__module__ == "builtins")
                      for name, cls in vars(engine).items()
                      if isinstance(cls, type) and issubclass(cls, engine.BrainFMError)}
    assert expected["StorageError"] == 5
    code = (
        "import sys, json\n"
        "sys.modules['brainfm'] = None; sys.modules['brainfm.errors'] = None\n"
        f"sys.path.insert(0, {str(LIB.parent)!r})\n"
        "from BrainFMSceneLib._errors import ERROR_TYPES, EXIT_CODE_TYPES\n"
        "print(json.dumps({'types': {n: c.exit_code for n, c in ERROR_TYPES.items()},\n"
        "                  'codes': {str(k): v.__name__ for k, v in EXIT_CODE_TYPES.items()},\n"
        "                  'module': ERROR_TYPES['StorageError'].__module__,\n"
        "                  'bases': {n: sorted(b.__name__ for b in c.__mro__ if b.__module__ == 'builtins')\n"
        "                            for n, c in ERROR_TYPES.items()}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback = json.loads(proc.stdout)
    assert fallback["module"] == "BrainFMSceneLib._errors"
    assert fallback["types"] == expected
    assert fallback["bases"] == expected_bases and "ValueError" in expected_bases["InputError"]
    for code, name in fallback["codes"].items():  # the class the look-alike picks for an exit code has that code
        assert expected[name] == int(code)
    assert {int(c) for c in fallback["codes"]} == set(expected.values()) - {1}
    assert fallback["codes"] == {"2": "InputError", "3": "CheckpointError", "4": "ResourceError", "5": "StorageError",
                                 "130": "CancelledError"}
    from BrainFMSceneLib._errors import ERROR_TYPES, StorageError

    assert StorageError is engine.StorageError and {n: c.exit_code for n, c in ERROR_TYPES.items()} == expected


def test_sources_parse_as_python39_and_avoid_forbidden_calls():
    files = sorted(LIB.glob("*.py"))
    assert len(files) >= 15
    for path in files:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        assert len(source.splitlines()) < 420, f"{path.name} is too long"
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in ("qt", "ctk", "torch") for a in node.names), path.name
        assert "weights_only=False" not in source
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"


def test_former_name_brainfmlib_gives_the_same_modules():
    """Scripts of earlier versions import ``BrainFMLib``: they get the very modules of BrainFMSceneLib
    (same classes, so ``except BrainFMLib._errors.InputError`` still catches), and a DeprecationWarning
    that points at their own import line."""
    code = (
        "import sys, warnings\n"
        f"sys.path.insert(0, {str(LIB.parent)!r})\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import BrainFMLib.registry\n"
        "    from BrainFMLib._errors import InputError\n"
        "    from BrainFMLib import volume_nodes\n"
        "import BrainFMSceneLib, BrainFMSceneLib._errors, BrainFMSceneLib.registry, BrainFMSceneLib.volume_nodes\n"
        "assert BrainFMLib is BrainFMSceneLib and BrainFMLib.registry is BrainFMSceneLib.registry\n"
        "assert InputError is BrainFMSceneLib._errors.InputError and volume_nodes is BrainFMSceneLib.volume_nodes\n"
        "assert sys.modules['BrainFMLib.process'] is sys.modules['BrainFMSceneLib.process']\n"
        "assert BrainFMLib.registry.list_models()[0].id == 'default'\n"
        "deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]\n"
        "assert len(deprecations) == 1, [str(w.message) for w in caught]\n"
        "assert 'BrainFMSceneLib' in str(deprecations[0].message), deprecations[0].message\n"
        "assert deprecations[0].filename == '<string>', deprecations[0].filename\n"
        "print('OK', BrainFMLib.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["OK", "0.1.0"]
