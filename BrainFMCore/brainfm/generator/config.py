"""All random ranges of the generator in one dataclass (defaults follow the reference recipe).

Intensities of synthetic images live on a 0-255 scale until the final normalisation; noise and
bias ranges of the corruption sets are fractions of that scale unless noted.

>>> from brainfm.generator.config import GeneratorConfig
>>> cfg = GeneratorConfig()
>>> cfg.mild.noise_std[1] < cfg.severe.noise_std[0] + 1e-9
True
>>> GeneratorConfig(p_gmm=1.0, p_physics=0.0, p_ct=0.0).p_gmm
1.0
>>> GeneratorConfig(mild={"bias_std": [0.0, 0.2]}).mild.bias_std  # a corruption set from a config file
(0.0, 0.2)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Tuple

from brainfm.errors import InputError

Range = Tuple[float, float]


@dataclass(frozen=True)
class CorruptionParams:
    """One corruption set (mild or severe): gamma, bias field and noise ranges."""

    gamma_std: float
    bias_scale: Range  # control-grid size as a fraction of the sample size
    bias_std: Range  # std of the log field at the control points
    noise_std: Range  # fraction of the image maximum (0-255 scale / 255)


MILD = CorruptionParams(gamma_std=0.01, bias_scale=(0.01, 0.02), bias_std=(0.0, 0.02),
                        noise_std=(0.0, 0.02))
SEVERE = CorruptionParams(gamma_std=0.1, bias_scale=(0.02, 0.04), bias_std=(0.1, 0.6),
                          noise_std=(0.02, 0.06))


@dataclass(frozen=True)
class GeneratorConfig:
    """Probabilities and ranges of every random step (see the package docstring)."""

    # deformation
    rotation_deg: float = 15.0
    shear: float = 0.2
    scaling: float = 0.2
    svf_scale: Range = (0.03, 0.06)  # control grid = round(scale * size), at least 2
    svf_std: Range = (0.0, 4.0)  # voxels (velocity at control points)
    svf_steps: int = 7
    svf_downsample: int = 2  # integrate the SVF on a grid this much coarser
    shift_mm: float = 0.0  # window centre: the brain's centroid plus a uniform shift up to this per axis (mm)
    # contrast mode probabilities (normalised)
    p_gmm: float = 0.5
    p_physics: float = 0.35
    p_ct: float = 0.15
    gmm_mu: Range = (25.0, 225.0)
    gmm_sigma: Range = (5.0, 25.0)
    p_black_background: float = 0.5
    pv_sigma: Range = (0.3, 1.0)  # partial-volume smoothing of the mean image (voxels)
    pv_subsamples: int = 1  # labels drawn at this many points per axis inside each output voxel and
                            # their intensities averaged (partial volume of a coarse grid; 1 = centre only)
    physics_jitter: float = 0.1  # relative per-subject jitter of the tissue parameters
    p_skull_strip: float = 0.25  # per sample: extra-cerebral labels -> background in the input
    p_tight_strip: float = 0.0  # per batch: every sample stripped at the brain's surface (a closing of the
                                # brain without CSF): the CSF outside it -> background in input and target
    tight_strip_mm: Range = (2.0, 6.0)  # radius of that closing (how far the mask bridges sulci)
    # pathology
    p_pathology: float = 0.3
    lesion_scale: Range = (0.04, 0.1)
    lesion_threshold: Range = (1.5, 2.5)  # in std of the smooth noise
    # geometry of the acquisition (per subject)
    p_res_iso: float = 0.25
    p_res_thick: float = 0.25
    p_res_lowfield: float = 0.25
    thick_spacing: Range = (2.5, 8.5)
    thick_thickness: Range = (4.0, 6.0)
    lowfield_spacing: Tuple[float, float, float] = (1.3, 1.3, 4.8)
    lowfield_jitter: float = 0.4
    random_spacing: Range = (2.0, 5.0)
    p_rician: float = 0.5
    # flips and mixing
    p_flip: float = 0.5
    p_real_input: float = 0.5  # when real images exist: fraction of samples using one
    p_mix_real: float = 0.2
    max_distance: float = 3.0
    severe_fraction: float = 0.5  # expected share of samples corrupted with the severe set
    mild: CorruptionParams = field(default=MILD)
    severe: CorruptionParams = field(default=SEVERE)

    def __post_init__(self) -> None:
        for name, default in (("mild", MILD), ("severe", SEVERE)):  # a mapping from a config file
            value = getattr(self, name)
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - set(CorruptionParams.__dataclass_fields__))
                if unknown:
                    raise InputError(f"GeneratorConfig.{name}: unknown keys {unknown}; choose from "
                                     f"{sorted(CorruptionParams.__dataclass_fields__)}")
                given = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in value.items()}
                object.__setattr__(self, name, replace(default, **given))
        for name in ("p_gmm", "p_physics", "p_ct", "p_black_background", "p_skull_strip", "p_tight_strip",
                     "p_pathology", "p_flip", "p_rician", "p_real_input", "p_mix_real", "severe_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"GeneratorConfig.{name} = {v} is not a probability in [0, 1]")
        if self.p_gmm + self.p_physics + self.p_ct <= 0:
            raise InputError("GeneratorConfig: p_gmm + p_physics + p_ct must be > 0")
        if not 1 <= int(self.pv_subsamples) <= 4:
            raise InputError(f"GeneratorConfig.pv_subsamples = {self.pv_subsamples} must be 1 to 4")
        if self.svf_steps < 1 or self.svf_downsample < 1:
            raise InputError("GeneratorConfig: svf_steps and svf_downsample must be >= 1")
