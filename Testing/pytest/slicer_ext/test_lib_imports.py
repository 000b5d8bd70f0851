"""BrainFMLib imports without torch/brainfm (first start in Slicer) and parses as Python 3.9."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[3] / "BrainFMSlicer" / "BrainFMCommon" / "BrainFMLib"


def test_every_module_imports_with_brainfm_and_torch_hidden():
    code = (
        "import sys, importlib, pathlib\n"
        "sys.modules['brainfm'] = None; sys.modules['torch'] = None\n"  # 'import brainfm' now fails
        f"sys.path.insert(0, {str(LIB.parent)!r})\n"
        "names = [p.stem for p in pathlib.Path(" + repr(str(LIB)) + ").glob('*.py') if p.stem != '__init__']\n"
        "for n in sorted(names): importlib.import_module('BrainFMLib.' + n)\n"
        "from BrainFMLib._errors import InputError\n"
        "assert InputError.exit_code == 2 and InputError.__module__ == 'BrainFMLib._errors'\n"
        "from BrainFMLib.registry import ModelRegistry\n"
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
    """BrainFMLib's look-alike errors (used before brainfm is installed) have the engine's names and exit codes."""
    import json

    import brainfm.errors as engine

    expected = {name: cls.exit_code for name, cls in vars(engine).items()
                if isinstance(cls, type) and issubclass(cls, engine.BrainFMError)}
    assert expected["StorageError"] == 5
    code = (
        "import sys, json\n"
        "sys.modules['brainfm'] = None; sys.modules['brainfm.errors'] = None\n"
        f"sys.path.insert(0, {str(LIB.parent)!r})\n"
        "from BrainFMLib._errors import ERROR_TYPES, EXIT_CODE_TYPES\n"
        "print(json.dumps({'types': {n: c.exit_code for n, c in ERROR_TYPES.items()},\n"
        "                  'codes': {str(k): v.__name__ for k, v in EXIT_CODE_TYPES.items()},\n"
        "                  'module': ERROR_TYPES['StorageError'].__module__}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback = json.loads(proc.stdout)
    assert fallback["module"] == "BrainFMLib._errors"
    assert fallback["types"] == expected
    assert fallback["codes"] == {"2": "InputError", "3": "CheckpointError", "4": "ResourceError", "5": "StorageError",
                                 "130": "CancelledError"}
    from BrainFMLib._errors import ERROR_TYPES, StorageError

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
