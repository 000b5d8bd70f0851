"""The evaluation table of a BrainFM model (``brainfm eval-table``): one module per row.

Rows: :mod:`~brainfm.evaluation.segmentation` (voxelmorph Dice), :mod:`~brainfm.evaluation.robustness`
(stroke T1/T2/FLAIR agreement), :mod:`~brainfm.evaluation.synthesis` (stroke cross-contrast PSNR/SSIM),
:mod:`~brainfm.evaluation.biasfield` (correlation with N4), :mod:`~brainfm.evaluation.registration`
(held-out pair Dice through the atlas), :mod:`~brainfm.evaluation.ct` (clinical CT plausibility),
:mod:`~brainfm.evaluation.speed` (256^3 wall time and peak RAM); :mod:`~brainfm.evaluation.table`
runs them and writes ``eval_table.json`` / ``eval_table.md``; :mod:`~brainfm.evaluation.anchors`
holds the measured anchors (N4, SyN, synthesis baseline). Sub-modules import torch only when used.

>>> from brainfm.evaluation.metrics import mean_dice
>>> import numpy as np
>>> mean_dice(np.array([1, 1]), np.array([1, 1]))
1.0
"""
from __future__ import annotations
