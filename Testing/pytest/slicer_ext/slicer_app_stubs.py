"""Minimal stand-ins for the Qt-only parts of Slicer, so the module files import on slicer-core.

The slicer-core wheel has the MRML scene and ``slicer.util`` but not ``qt``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` or ``slicer.i18n``. These stubs
provide just enough of them (base classes, the ``parameterNodeWrapper`` decorator, ``Choice``,
``tr``) to import the BrainFM module files and drive their *logic* classes against a real scene,
the real ``BrainFMSceneLib`` and a real ``brainfm run`` child process. Widgets are not exercised.
"""
from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
MODULE_DIRS = [REPO / "BrainFMSlicer" / m for m in
               ("BrainFMCommon", "BrainFMSegmentation", "BrainFMSynthesis", "BrainFMBiasField", "BrainFMRegistration")]


class _Stub:
    """Accepts any constructor call / attribute (only used for Qt classes the logic never touches)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _Stub()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Stub()


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: Any = None) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__[: -len("Widget")]


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        import slicer

        return slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, *args: Any, **kwargs: Any) -> None:
        print(message)


class Choice:
    """Like ``slicer.parameterNodeWrapper.validators.Choice``: ``validate`` raises ValueError."""

    def __init__(self, choices: Any) -> None:
        self.choices = choices

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


#: names ``parameterNodeWrapper`` adds to the class (a field or method with one of them is refused)
WRAPPER_RESERVED = ("allParameters", "default", "isCached", "dataType", "getValue", "setValue", "connectGui",
                    "connectParametersToGui", "disconnectGui", "StartModify", "EndModify", "AddObserver",
                    "RemoveObserver", "Modified")


def _serializer_default(type_: Any) -> Any:
    """Default of the serializer Slicer would pick (serializers.py) for the types BrainFM uses.

    Raises for types not listed, so a new field type gets checked against serializers.py first.
    """
    import pathlib
    import typing

    import slicer

    if type_ in (int, float):
        return 0
    if type_ is str:
        return ""
    if type_ is bool:
        return False
    if type_ in (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
                 pathlib.PureWindowsPath):
        return type_()
    if isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode):
        return None
    if typing.get_origin(type_) is list and len(typing.get_args(type_)) == 1:
        _serializer_default(typing.get_args(type_)[0])
        return []
    if typing.get_origin(type_) is tuple and typing.get_args(type_):
        return tuple(_serializer_default(t) for t in typing.get_args(type_))
    raise TypeError(f"Unable to create serializer for type: {type_} (not in the stub's checked list)")


def parameterNodeWrapper(cls: Any = None):
    """Stand-in decorator doing the class-time work of the real one (wrapper._processClass).

    Evaluates the annotations with ``typing.get_type_hints(include_extras=True)``, picks a
    serializer per field, validates each default against its ``Choice`` (the real wrapper writes the
    defaults into the parameter node through the validators when it wraps a node), refuses the
    reserved names and sets ``allParameters`` and ``_defaults`` (name -> default). GUI binding is not
    emulated.
    """
    import typing

    def wrap(c: Any) -> Any:
        hints = typing.get_type_hints(c, include_extras=True)
        defaults = {}
        for name, hint in hints.items():
            base, extras = hint, ()
            if typing.get_origin(hint) is typing.Annotated:
                base, *extras = typing.get_args(hint)
            default = getattr(c, name) if hasattr(c, name) else _serializer_default(base)
            _serializer_default(base)
            for extra in extras:
                if isinstance(extra, Choice):
                    extra.validate(default)
            defaults[name] = default
        for reserved in WRAPPER_RESERVED:
            if hasattr(c, reserved):
                raise ValueError(f"Cannot use reserved name '{reserved}' in a parameterNodeWrapper")
        c.allParameters = dict(hints)
        c._is_parameter_node_wrapper = True
        c._defaults = defaults  # what a new parameter node holds (tests start from it)
        return c

    return wrap if cls is None else wrap(cls)


def install() -> None:
    """Register the stubs (idempotent) and put the module folders on ``sys.path``."""
    import slicer
    import slicer.util

    if "slicer.ScriptedLoadableModule" not in sys.modules:
        sl = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest):
            setattr(sl, cls.__name__, cls)
        sys.modules["slicer.ScriptedLoadableModule"] = slicer.ScriptedLoadableModule = sl
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        sys.modules["slicer.i18n"] = slicer.i18n = i18n
        pnw = types.ModuleType("slicer.parameterNodeWrapper")
        pnw.parameterNodeWrapper, pnw.Choice = parameterNodeWrapper, Choice
        sys.modules["slicer.parameterNodeWrapper"] = slicer.parameterNodeWrapper = pnw
    if "qt" not in sys.modules:
        qt = types.ModuleType("qt")
        for name in ("QTimer", "QApplication", "QSettings"):
            setattr(qt, name, _Stub)
        sys.modules["qt"] = qt
    for d in MODULE_DIRS:
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))
