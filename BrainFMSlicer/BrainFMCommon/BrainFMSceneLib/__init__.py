"""BrainFMSceneLib: the Qt-free scene library of the BrainFM Slicer extension.

Everything the BrainFM front ends share that needs neither Qt nor the Slicer application: the
exchange between MRML nodes and the files of ``brainfm run`` (exact geometry), the child process
that runs the engine (progress, cancel, errors), the model choices, the dependency installer and
the diagnostics. It runs inside Slicer, on the MRML scene of the ``slicer-core`` wheel (tests,
BrainFM Web) and in ``Slicer --python-script`` batches. The Slicer-application layer on top of it
is ``BrainFMModuleSupport`` (module logic and widget base).

Modules (each importable on its own; none imports Qt, torch or ``brainfm`` at import time):

- :mod:`BrainFMSceneLib.volume_nodes`        node <-> ``array[i, j, k]`` + RAS affine / ``brainfm.volume.Volume``
- :mod:`BrainFMSceneLib.volume_files`        export a node for the child process, import result files
- :mod:`BrainFMSceneLib.label_tables`        label names / colors / terminology (``brainfm.labels`` or CSV)
- :mod:`BrainFMSceneLib.segmentation_nodes`  label map -> segmentation node (+ optional labelmap node)
- :mod:`BrainFMSceneLib.transform_nodes`     displacement field -> grid transform node (RAS mm)
- :mod:`BrainFMSceneLib.table_nodes`         structure volumes -> table node
- :mod:`BrainFMSceneLib.results`             import a ``brainfm run`` case folder into nodes
- :mod:`BrainFMSceneLib.job`                 ``BrainFMJob``: export -> child process -> import, poll/wait/cancel
- :mod:`BrainFMSceneLib.scene_utils`         subject-hierarchy placement, node removal
- :mod:`BrainFMSceneLib.process`             ``ProcessRunner``: child process, progress, cancel, result
- :mod:`BrainFMSceneLib.parameters`          ``RunParameters`` dataclass (is_valid, as_arg_list)
- :mod:`BrainFMSceneLib.registry`            model choices (``list_models``: store, bundled, best default), checksums
- :mod:`BrainFMSceneLib.model_add`           ``AddModelJob``: ``brainfm models add`` in a child process
- :mod:`BrainFMSceneLib.training_pairs`      scans + segmentations of the scene -> ``brainfm finetune`` data folder
- :mod:`BrainFMSceneLib.finetune_job`        ``FinetuneJob``: ``brainfm finetune``, then ``models add``, in child processes
- :mod:`BrainFMSceneLib.install`             ``InstallLogic``: dependency checks and installation
- :mod:`BrainFMSceneLib.diagnostics`         environment report (dict + text)
- :mod:`BrainFMSceneLib.signals`             tiny pure-Python ``Signal``
- :mod:`BrainFMSceneLib._errors`             the engine's error types (look-alikes before brainfm is installed)
- :mod:`BrainFMSceneLib.former_names`        keeps the names of earlier versions importable (``BrainFMLib``)

Earlier versions called this package ``BrainFMLib``; that name still imports and gives these
very modules (``import BrainFMLib.registry`` is ``BrainFMSceneLib.registry``).

>>> import BrainFMSceneLib
>>> BrainFMSceneLib.__version__
'0.1.0'
"""
from __future__ import annotations

#: version of the library; the Slicer extension pins ``brainfm==`` this same version.
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "diagnostics",
    "finetune_job",
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
    "training_pairs",
    "transform_nodes",
    "volume_files",
    "volume_nodes",
]
