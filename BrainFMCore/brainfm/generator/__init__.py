"""Synthetic training data for BrainFM, in pure torch (CPU and CUDA).

``Generator(config).sample(subject, n_samples=4, size=(160,)*3, seed=0, device="cuda")``
returns a :class:`Batch` of N images of one subject's anatomy (one random affine +
diffeomorphic deformation, optional left-right flip) with different random contrasts (GMM per
label, MR physics with random protocols, CT) and corruptions (gamma, bias field, slice
thickness / resolution, Gaussian or Rician noise), mild for the first half of the batch and
severe for the second, plus all targets (T1/T2/FLAIR/CT renderings, fs33 segmentation, surface
distances, atlas registration, bias field, super-resolution residual, masks).

>>> from brainfm.generator import Generator, GeneratorConfig, SubjectData
>>> Generator(GeneratorConfig(p_flip=0.0)).config.p_flip
0.0
"""
from __future__ import annotations

from brainfm.generator.batch import Batch, Generator, SubjectData
from brainfm.generator.config import CorruptionParams, GeneratorConfig
from brainfm.generator.deform import compose, integrate_svf, jacobian_determinant

__all__ = ["Batch", "Generator", "SubjectData", "GeneratorConfig", "CorruptionParams",
           "compose", "integrate_svf", "jacobian_determinant"]
