"""BrainFMModuleLib: the Slicer-application layer shared by the BrainFM task modules.

Unlike the Qt-free ``BrainFMLib`` it may use ``slicer.ScriptedLoadableModule`` and the
application (``slicer.util``), so it only runs inside Slicer. Torch and ``brainfm`` are imported
lazily, after the dependency check.

- :mod:`BrainFMModuleLib.run`      ``BrainFMRun``: one module run (status, outputs by role, cancel)
- :mod:`BrainFMModuleLib.logic`    ``BrainFMLogicBase``: checks, install, run, import
- :mod:`BrainFMModuleLib.testing`  ``BrainFMTestBase``: helpers of the in-Slicer self-tests
"""
from BrainFMModuleLib.run import BrainFMRun
from BrainFMModuleLib.logic import BrainFMLogicBase, runParameters

__all__ = ["BrainFMLogicBase", "BrainFMRun", "runParameters"]
