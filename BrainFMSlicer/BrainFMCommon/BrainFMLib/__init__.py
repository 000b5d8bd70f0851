"""BrainFMLib: the Qt-free part of the BrainFM Slicer extension.

Modules (each importable on its own; none imports Qt, torch or ``brainfm`` at import time):

- :mod:`BrainFMLib.volume_nodes`   node <-> ``array[i, j, k]`` + RAS affine / ``brainfm.volume.Volume``
- :mod:`BrainFMLib.volume_files`   export a node for the child process, import result files
- :mod:`BrainFMLib.label_tables`   label names / colors / terminology (``brainfm.labels`` or CSV)
- :mod:`BrainFMLib.segmentation_nodes`  label map -> segmentation node (+ optional labelmap node)
- :mod:`BrainFMLib.transform_nodes`     displacement field -> grid transform node (RAS mm)
- :mod:`BrainFMLib.table_nodes`    structure volumes -> table node
- :mod:`BrainFMLib.results`        import a ``brainfm run`` case folder into nodes
- :mod:`BrainFMLib.job`            ``BrainFMJob``: export -> child process -> import, poll/wait/cancel
- :mod:`BrainFMLib.scene_utils`    subject-hierarchy placement, node removal
- :mod:`BrainFMLib.process`        ``ProcessRunner``: child process, progress, cancel, result
- :mod:`BrainFMLib.parameters`     ``RunParameters`` dataclass (is_valid, as_arg_list)
- :mod:`BrainFMLib.registry`       model choices (``list_models``: store, bundled, best default), checksums
- :mod:`BrainFMLib.model_add`      ``AddModelJob``: ``brainfm models add`` in a child process
- :mod:`BrainFMLib.install`        ``InstallLogic``: dependency checks and installation
- :mod:`BrainFMLib.diagnostics`    environment report (dict + text)
- :mod:`BrainFMLib.signals`        tiny pure-Python ``Signal``
- :mod:`BrainFMLib._errors`        the engine's error types (look-alikes before brainfm is installed)

>>> import BrainFMLib
>>> BrainFMLib.__version__
'0.1.0'
"""
from __future__ import annotations

#: version of the library; the Slicer extension pins ``brainfm==`` this same version.
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "diagnostics",
    "install",
    "job",
    "label_tables",
    "model_add",
    "parameters",
    "process",
    "registry",
    "results",
    "scene_utils",
    "segmentation_nodes",
    "signals",
    "table_nodes",
    "transform_nodes",
    "volume_files",
    "volume_nodes",
]
