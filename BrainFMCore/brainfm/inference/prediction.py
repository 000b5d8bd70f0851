"""The result of :meth:`brainfm.inference.Predictor.predict`.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.inference.prediction import Prediction
>>> p = Prediction(outputs={"synth_t1": Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))})
>>> p.keys()
['synth_t1']
>>> p["synth_t1"].shape
(2, 2, 2)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from brainfm.volume import Volume

TILING_NOTE = (
    "GroupNorm statistics are computed per tile, so tiled results differ slightly from "
    "whole-volume results"
)


@dataclass
class Prediction:
    """Outputs on the requested frame, tables and metadata of one prediction.

    - ``outputs``: output key (``synth_t1``, ``seg``, ``reg_displacement``, ...) -> :class:`Volume`;
    - ``tables``: e.g. ``tables["seg_volumes"]`` = rows ``{value, name, voxels, volume_mm3}``;
    - ``metadata``: model info, device, precision, ``tiled`` (+ ``tiling_note``), ``timings`` (s),
      ``warnings``, intensity normalisation, ...;
    - ``raw``: only with ``predict(..., keep_raw=True)``: the raw head outputs on the network grid,
      ``head name -> (C, X, Y, Z)`` float32, plus ``raw_affine`` (network-frame affine).
    """

    outputs: Dict[str, Volume] = field(default_factory=dict)
    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    raw: Optional[Dict[str, np.ndarray]] = None
    raw_affine: Optional[np.ndarray] = None

    def __getitem__(self, key: str) -> Volume:
        return self.outputs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.outputs

    def keys(self) -> List[str]:
        """Output keys in insertion order."""
        return list(self.outputs)

    @property
    def warnings(self) -> List[str]:
        """Warnings collected while predicting (input validation, skipped outputs, ...)."""
        return list(self.metadata.get("warnings", []))
