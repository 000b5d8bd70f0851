"""SNOMED CT codes for the structures the schemes name (used in Slicer colour-table CSVs).

Only codes checked against public DICOM/Slicer terminology tables are listed; structures
without a verified code get empty terminology columns (Slicer then shows the name only).
Category is always "Anatomical structure" (SCT 123037004); laterality goes in TypeModifier
(SCT 7771000 Left, 24028007 Right).

>>> type_code("Right-Putamen"), modifier_code("Right-Putamen")
(('89278009', 'Putamen'), ('24028007', 'Right'))
>>> type_code("Left-SeptalNuc") is None
True
"""
from __future__ import annotations

from typing import Optional, Tuple

CATEGORY = ("SCT", "123037004", "Anatomical Structure")
LEFT = ("7771000", "Left")
RIGHT = ("24028007", "Right")

# structure name without its Left-/Right- prefix -> (SNOMED CT code, code meaning)
_TYPES = {
    "Cerebral-White-Matter": ("68523003", "Cerebral white matter"),
    "Cerebral-Cortex": ("40146001", "Cerebral cortex"),
    "Lateral-Ventricle": ("66720007", "Lateral ventricle"),
    "Cerebellum-White-Matter": ("33060004", "Cerebellar white matter"),
    "Thalamus": ("42695009", "Thalamus"),
    "Caudate": ("11000004", "Caudate nucleus"),
    "Putamen": ("89278009", "Putamen"),
    "Pallidum": ("14738005", "Globus pallidus"),
    "Hippocampus": ("5366008", "Hippocampal structure"),
    "Amygdala": ("4958002", "Amygdala"),
    "HypoThal-noMB": ("67923007", "Hypothalamic structure"),
    "Fornix": ("87463005", "Cerebral fornix"),
    "3rd-Ventricle": ("49841001", "Third ventricle"),
    "4th-Ventricle": ("35918002", "Fourth ventricle"),
    "Brain-Stem": ("15926001", "Brainstem"),
    "CSF": ("280371009", "Brain cerebrospinal fluid pathway"),
    "Optic-Chiasm": ("244453006", "Optic chiasm"),
    "EyeBalls": ("79652003", "Eyeball"),
    "Charm-Spinal-Cord": ("2748008", "Spinal cord"),
}


def _base(name: str) -> str:
    for prefix in ("Left-", "Right-"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def type_code(name: str) -> Optional[Tuple[str, str]]:
    """(SNOMED code, meaning) of a FreeSurfer structure name, or None when not verified."""
    return _TYPES.get(_base(name))


def modifier_code(name: str) -> Optional[Tuple[str, str]]:
    """Laterality modifier (code, meaning) for ``Left-*``/``Right-*`` names, else None."""
    if name.startswith("Left-"):
        return LEFT
    if name.startswith("Right-"):
        return RIGHT
    return None
