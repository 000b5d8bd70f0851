"""Checks shared by the BrainFM modules: input volume, output nodes and the model choice.

Each raises ``brainfm.errors.InputError`` with a message the GUI shows as is (the Apply button's
tooltip, or the error dialog) and scripts get as an exception.

>>> modelSpec(MODEL_DEFAULT)
'default'
"""
import os
from typing import Dict

try:
    from slicer.i18n import tr
except ImportError:  # pragma: no cover - outside the Slicer application
    def tr(text: str) -> str:
        return text

from BrainFMSceneLib._errors import InputError

QUALITY_CHOICES = ["Full", "Fast"]
MODEL_DEFAULT = "Bundled default"
MODEL_OFFICIAL = "Official BrainFM file (.pth)"
MODEL_CUSTOM = "Custom weights file"
MODEL_CHOICES = [MODEL_DEFAULT, MODEL_OFFICIAL, MODEL_CUSTOM]


def checkInputVolume(volumeNode) -> None:
    """Raise :class:`InputError` unless ``volumeNode`` is a single-component 3D scalar volume.

    >>> checkInputVolume(slicer.util.getNode("MRHead"))  # doctest: +SKIP
    """
    if volumeNode is None:
        raise InputError(tr("No input volume is selected. Load a brain MRI or CT scan and select it "
                            "as input."))
    name = volumeNode.GetName()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(tr(f"'{name}' is a label map, not an image. Select the MRI/CT scan as input "
                            "(a label map can be converted in Volumes > Volume information > "
                            "Convert to scalar volume)."))
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(tr(f"'{name}' is a {volumeNode.GetClassName()}; BrainFM needs a scalar volume."))
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(tr(f"'{name}' has no voxels (the volume is empty)."))
    components = image.GetNumberOfScalarComponents()
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or volumeNode.IsA("vtkMRMLTensorVolumeNode") or components > 1:
        raise InputError(tr(f"'{name}' has {components} components per voxel (RGB, vector, tensor or 4D "
                            "data); BrainFM needs a single-component 3D volume. Use 'Vector to Scalar "
                            "Volume' to convert it."))
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(tr(f"'{name}' is 2D ({dims[0]} x {dims[1]} x {dims[2]} voxels); "
                            "BrainFM needs a 3D volume."))


def checkOutputNodes(inputVolume, outputs: Dict[str, object]) -> None:
    """Raise :class:`InputError` when an output node is the input or the same node is used twice."""
    seen: Dict[str, str] = {}
    for role, node in outputs.items():
        if node is None:
            continue
        if inputVolume is not None and node.GetID() == inputVolume.GetID():
            raise InputError(tr(f"The {role} output is the input volume '{inputVolume.GetName()}'. BrainFM never "
                                "overwrites its input: select another node or '(none)' to create a new one."))
        if node.GetID() in seen:
            raise InputError(tr(f"'{node.GetName()}' is selected as both the {seen[node.GetID()]} and the {role} "
                                "output; select different nodes."))
        seen[node.GetID()] = role


def modelSpec(choice: str, path=None) -> str:
    """``--model`` value for a model choice: ``"default"`` or the checked path of a weights file."""
    if not choice or choice == MODEL_DEFAULT or str(choice).lower() in ("default", "bundled"):
        return "default"
    if choice not in MODEL_CHOICES:  # scripting: a registry id or a path given directly
        return str(choice)
    text = str(path or "").strip()
    if text in ("", "."):
        raise InputError(tr(f"Model '{choice}' needs a weights file: choose it in Advanced > Weights file."))
    if not os.path.isfile(text):
        raise InputError(tr(f"Weights file not found: {text}"))
    return text
