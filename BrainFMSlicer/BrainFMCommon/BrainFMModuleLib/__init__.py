"""Former name of ``BrainFMModuleSupport`` (the module-support layer), kept for scripts of earlier versions.

``import BrainFMModuleLib`` and ``import BrainFMModuleLib.<module>`` give the modules of
``BrainFMModuleSupport`` themselves and emit a ``DeprecationWarning``. It needs the Slicer
application, like ``BrainFMModuleSupport``. New code imports ``BrainFMModuleSupport`` (or the
names that ``BrainFMCommon`` exports).
"""
from BrainFMSceneLib.former_names import alias_package

alias_package(__name__, "BrainFMModuleSupport")
