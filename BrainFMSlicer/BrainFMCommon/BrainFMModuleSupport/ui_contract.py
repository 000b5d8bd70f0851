"""The widgets and parameters that every BrainFM task module provides to the common widget base.

:class:`~BrainFMModuleSupport.widget.BrainFMWidgetBase` uses only the widgets of
:data:`COMMON_WIDGETS` (object name in the module's ``.ui`` file -> widget class) and the parameters
of :data:`COMMON_PARAMETERS` (field of the module's ``@parameterNodeWrapper`` class -> type name).
A task module's ``.ui`` file and parameter node add their own inputs and outputs to these.

>>> COMMON_WIDGETS["applyButton"], COMMON_PARAMETERS["modelId"]
('QPushButton', 'str')
"""
from typing import Dict

#: Widgets every task module's .ui provides (name -> class); the base widget uses only these.
COMMON_WIDGETS: Dict[str, str] = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "deviceComboBox": "QComboBox",
    "qualityComboBox": "QComboBox",
    "modelComboBox": "QComboBox",
    "modelInfoLabel": "QLabel",
    "getModelButton": "QPushButton",
    "addModelButton": "QPushButton",
    "diagnosticsTextEdit": "QPlainTextEdit",
    "refreshDiagnosticsButton": "QPushButton",
    "copyDiagnosticsButton": "QPushButton",
    "installButton": "QPushButton",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "logTextEdit": "QPlainTextEdit",
}
#: Parameters every task module's parameter node has (name -> type name).
COMMON_PARAMETERS: Dict[str, str] = {
    "inputVolume": "vtkMRMLScalarVolumeNode",
    "device": "str",
    "quality": "str",
    "modelId": "str",
}
