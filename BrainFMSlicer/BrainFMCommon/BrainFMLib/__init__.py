"""Former name of ``BrainFMSceneLib`` (the Qt-free scene library), kept for scripts of earlier versions.

``import BrainFMLib`` and ``import BrainFMLib.<module>`` give the modules of ``BrainFMSceneLib``
themselves (same classes, same errors) and emit a ``DeprecationWarning``. New code imports
``BrainFMSceneLib``.
"""
from BrainFMSceneLib.former_names import alias_package

alias_package(__name__, "BrainFMSceneLib")
