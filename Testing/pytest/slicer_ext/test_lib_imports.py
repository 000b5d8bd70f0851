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
