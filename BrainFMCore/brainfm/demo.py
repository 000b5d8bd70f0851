"""A sample scan for the demo: the ICBM 2009a T1 template degraded into a clinical-looking scan.

The template (1 mm brain template, from the ``nilearn`` wheel, the optional
``demo`` extra) is turned into a typical routine acquisition: 1 x 1 x 5 mm axial thick slices
(Gaussian slice profile of 5 mm FWHM along the superior axis, then every 5th slice), a smooth
multiplicative bias field (exp of a random quadratic polynomial, about +-20 %) and Rician noise
(2 % of the bright-tissue intensity). Nothing of the template is stored in the project; the scan
is generated on the fly and is deterministic for a given ``seed``.

>>> from brainfm.demo import make_sample_scan, template_path
>>> template_path().name  # doctest: +SKIP
'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz'
>>> v = make_sample_scan(seed=0)  # doctest: +SKIP
>>> [round(s) for s in v.spacing]  # doctest: +SKIP
[1, 1, 5]
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from brainfm.errors import ModelNotAvailableError
from brainfm.models.templates import ICBM_TEMPLATE_FILE as TEMPLATE_NAME
from brainfm.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

SLICE_MM = 5.0
NOISE_FRACTION = 0.02
BIAS_AMPLITUDE = 0.2
_MISSING = ("the demo scan is made from the ICBM 2009a template shipped with nilearn, which is not "
            "installed: pip install brainfm[demo]   (or: pip install nilearn)")


def template_path() -> Path:
    """Path of the ICBM 2009a T1 template inside the installed ``nilearn`` package
    (:func:`brainfm.models.templates.icbm_template_path`); :class:`ModelNotAvailableError` without it."""
    from brainfm.models.templates import icbm_template_path

    p = icbm_template_path()
    if p is None:
        if importlib.util.find_spec("nilearn") is None:
            raise ModelNotAvailableError(_MISSING)
        raise ModelNotAvailableError(f"{TEMPLATE_NAME} not found in the nilearn package; {_MISSING}")
    return p


def _superior_axis(affine: np.ndarray) -> int:
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def degrade(template: Volume, *, seed: int = 0, slice_mm: float = SLICE_MM,
            noise_fraction: float = NOISE_FRACTION, bias_amplitude: float = BIAS_AMPLITUDE) -> Volume:
    """Thick axial slices + bias field + Rician noise (see the module docstring); a new Volume.

    >>> import numpy as np
    >>> t = Volume(np.ones((10, 12, 20), np.float32) * 100, np.eye(4))
    >>> d = degrade(t, seed=1)
    >>> d.shape, [round(s, 3) for s in d.spacing]
    ((10, 12, 4), [1.0, 1.0, 5.0])
    """
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    data = np.asarray(template.data, np.float32)
    axis = _superior_axis(template.affine)
    step = max(1, int(round(slice_mm / template.spacing[axis])))
    sigma = (slice_mm / template.spacing[axis]) / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # FWHM -> sigma
    blurred = gaussian_filter1d(data, sigma=sigma, axis=axis, mode="nearest")
    first = step // 2
    index = [slice(None)] * 3
    index[axis] = slice(first, None, step)
    thick = blurred[tuple(index)]
    affine = template.affine.copy()
    origin = np.zeros(3)
    origin[axis] = first
    affine[:3, 3] = template.world_of(origin)
    affine[:3, axis] *= step
    # smooth multiplicative bias: exp(random quadratic in normalised coordinates)
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in thick.shape], indexing="ij")
    terms = [g for g in grids] + [grids[a] * grids[b] for a in range(3) for b in range(a, 3)]
    coef = rng.normal(0.0, 1.0, len(terms))
    log_bias = sum(c * t for c, t in zip(coef, terms))
    log_bias *= bias_amplitude / max(float(np.abs(log_bias).max()), 1e-6)
    biased = thick * np.exp(log_bias)
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels
    bright = float(np.percentile(biased[biased > 0], 95)) if np.any(biased > 0) else 1.0
    sd = noise_fraction * bright
    real = biased + rng.normal(0.0, sd, biased.shape)
    imag = rng.normal(0.0, sd, biased.shape)
    noisy = np.sqrt(real * real + imag * imag).astype(np.float32)
    meta = {**template.meta, "description": f"degraded sample scan: {slice_mm:g} mm axial slices, bias field "
            f"+-{bias_amplitude:.0%}, Rician noise {noise_fraction:.0%} (seed {seed})", "units": "a.u."}
    return Volume(noisy, affine, meta)


def make_sample_scan(out_path: Optional[PathLike] = None, *, seed: int = 0) -> Volume:
    """Build the demo scan from the ICBM 2009a template and write it to ``out_path`` (if given).

    Raises :class:`~brainfm.errors.ModelNotAvailableError` with the install command when
    ``nilearn`` (the ``demo`` extra) is missing.
    """
    import nibabel as nib

    path = template_path()
    img = nib.load(str(path))
    template = Volume(np.asarray(img.dataobj, dtype=np.float32), img.affine,
                      {"source": "ICBM 2009a nonlinear symmetric T1 template (nilearn)"})
    scan = degrade(template, seed=seed)
    if out_path is not None:
        from brainfm.io import write_volume

        written = write_volume(scan, out_path, dtype=np.float32)
        scan = scan.with_data(scan.data, source_path=str(written))
    return scan
