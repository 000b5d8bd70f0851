"""BrainFMModuleSupport: what the BrainFM task modules build on inside the Slicer application.

Unlike the Qt-free scene library ``BrainFMSceneLib`` (which it uses for every scene exchange, the
child process and the model choices) it may use Qt, ``slicer.ScriptedLoadableModule`` and the
application (``slicer.util``), so it only runs inside Slicer. Torch and ``brainfm`` are imported
lazily, after the dependency check.

- :mod:`BrainFMModuleSupport.logic`         ``BrainFMLogicBase``: checks, install, run, import
- :mod:`BrainFMModuleSupport.run`           ``BrainFMRun``: one module run (status, outputs by role, cancel)
- :mod:`BrainFMModuleSupport.models`        model choices, the model check before Apply, adding a model file
- :mod:`BrainFMModuleSupport.checks`        input volume, output nodes and model choice checks
- :mod:`BrainFMModuleSupport.widget`        ``BrainFMWidgetBase``: the common panel (Apply/Cancel, progress, log)
- :mod:`BrainFMModuleSupport.model_widget`  the model selector of the panel
- :mod:`BrainFMModuleSupport.finetune`      ``FinetuneLogicMixin``: fine-tune on scans + segmentations, add the model
- :mod:`BrainFMModuleSupport.finetune_widget`  the *Fine-tune* section of a panel (training pairs, steps, name)
- :mod:`BrainFMModuleSupport.texts`         contributors, acknowledgement, help text
- :mod:`BrainFMModuleSupport.ui_contract`   widgets and parameters every task module provides
- :mod:`BrainFMModuleSupport.testing`       ``BrainFMTestBase``: helpers of the in-Slicer self-tests

Earlier versions called this package ``BrainFMModuleLib``; that name still imports and gives these
very modules. The task modules import the common names from ``BrainFMCommon``.
"""
from BrainFMModuleSupport.run import BrainFMRun
from BrainFMModuleSupport.logic import BrainFMLogicBase, runParameters

__all__ = ["BrainFMLogicBase", "BrainFMRun", "runParameters"]
