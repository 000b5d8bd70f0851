"""MR physics: tissue parameters per label and signal equations (Appendix A of the
sequence-invariant contrastive paper), vectorised over samples and labels.

Times are in seconds, angles in radians; parameters are (..., 4) tensors [PD, T1, T2, T2*].

>>> import math, torch
>>> from brainfm.generator.physics import spin_echo, flair
>>> pd, t1, t2 = torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.1)
>>> round(float(spin_echo(pd, t1, t2, tr=2.0, te=0.1)), 4)   # (1-e^-2) e^-1
0.3181
>>> csf_t1 = torch.tensor(4.0)
>>> round(float(flair(pd, csf_t1, t2, tr=1e4, te=0.0, ti=4.0 * math.log(2))), 6)
0.0
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch

from brainfm.generator.labels import TISSUES, tissue_of_compact, to_compact

# Nominal 3 T tissue parameters [PD, T1 (s), T2 (s), T2* (s)] per tissue class.
TISSUE_PARAMS: Dict[str, Tuple[float, float, float, float]] = {
    "air": (0.0, 1.0, 0.001, 0.001),
    "wm": (0.69, 0.85, 0.075, 0.05),
    "gm": (0.80, 1.35, 0.10, 0.065),
    "deep_gm": (0.75, 1.10, 0.085, 0.055),
    "csf": (1.00, 4.20, 2.00, 1.00),
    "brainstem": (0.72, 1.00, 0.080, 0.05),
    "fat": (0.90, 0.38, 0.13, 0.05),
    "muscle": (0.75, 1.40, 0.045, 0.03),
    "bone_cortical": (0.05, 0.30, 0.002, 0.001),
    "bone_marrow": (0.80, 0.55, 0.10, 0.04),
    "blood": (0.90, 1.90, 0.25, 0.10),
    "skin": (0.70, 1.00, 0.05, 0.03),
    "eye": (1.00, 3.50, 1.50, 0.80),
    "lesion": (0.85, 1.60, 0.20, 0.10),
    "sinus_air": (0.02, 1.00, 0.002, 0.001),
}

# Fixed protocols of the T1/T2/FLAIR targets.
STANDARD_PROTOCOLS = {
    "T1": dict(kind="mprage", tr=2.3, ti=0.9, te=0.003, flip=math.radians(9.0)),
    "T2": dict(kind="se", tr=5.0, te=0.1),
    "FLAIR": dict(kind="flair", tr=9.0, te=0.12, ti=2.5),
}
SEQUENCES = ("mprage", "se", "flair", "gre")


def nominal_params() -> torch.Tensor:
    """Nominal parameters per compact label, shape (K, 4)."""
    table = torch.tensor([TISSUE_PARAMS[t] for t in TISSUES], dtype=torch.float32)
    return table[tissue_of_compact()]


def jittered_params(generator: torch.Generator, *, jitter: float, batch: int = 1) -> torch.Tensor:
    """Per-subject random parameters (batch, K, 4): log-normal jitter per label and a field
    strength factor on T1 (1.5-3 T: T1 scaled by U(0.8, 1.0)) and T2* (U(1.0, 1.3))."""
    p = nominal_params().unsqueeze(0).repeat(batch, 1, 1)
    p = p * torch.exp(jitter * torch.randn(p.shape, generator=generator))
    field = torch.rand((batch, 1, 2), generator=generator)
    p[..., 1:2] *= 0.8 + 0.2 * field[..., :1]
    p[..., 3:4] *= 1.0 + 0.3 * field[..., 1:]
    p[..., 0] = p[..., 0].clamp(0, 1.2)
    return p


def spin_echo(pd, t1, t2, *, tr, te):
    """Spin echo / FSE: PD (1 - e^{-TR/T1}) e^{-TE/T2}."""
    return pd * (1 - torch.exp(-tr / t1)) * torch.exp(-te / t2)


def gre(pd, t1, t2s, *, tr, te, flip, mt=0.0):
    """Spoiled gradient echo with flip angle ``flip`` and optional MT fraction."""
    e1 = torch.exp(-tr / t1)
    cos_a = torch.cos(torch.as_tensor(flip)) * (1 - mt)
    return pd * torch.sin(torch.as_tensor(flip)) * (1 - mt) * (1 - e1) / (1 - cos_a * e1) \
        * torch.exp(-te / t2s)


def flair(pd, t1, t2, *, tr, te, ti):
    """Inversion recovery (FLAIR) magnitude: |PD e^{-TE/T2} (1 - 2e^{-TI/T1} + e^{-TR/T1})|."""
    return (pd * torch.exp(-te / t2) * (1 - 2 * torch.exp(-ti / t1) + torch.exp(-tr / t1))).abs()


def mprage(pd, t1, t2s, *, tr, ti, te, flip):
    """MPRAGE approximated as an inversion-prepared spoiled GRE readout at the k-space centre:
    |PD sin(a) (1 - 2e^{-TI/T1} + e^{-TR/T1}) e^{-TE/T2*}| (the paper's eq. 4 needs readout
    train details that it does not give)."""
    s = torch.sin(torch.as_tensor(flip))
    return (pd * s * (1 - 2 * torch.exp(-ti / t1) + torch.exp(-tr / t1))
            * torch.exp(-te / t2s)).abs()


def render(params: torch.Tensor, protocol: dict) -> torch.Tensor:
    """Signal per label for one protocol dict (``kind`` in :data:`SEQUENCES`)."""
    pd, t1, t2, t2s = params.unbind(-1)
    k = protocol["kind"]
    if k == "se":
        return spin_echo(pd, t1, t2, tr=protocol["tr"], te=protocol["te"])
    if k == "flair":
        return flair(pd, t1, t2, tr=protocol["tr"], te=protocol["te"], ti=protocol["ti"])
    if k == "gre":
        return gre(pd, t1, t2s, tr=protocol["tr"], te=protocol["te"], flip=protocol["flip"])
    if k == "mprage":
        return mprage(pd, t1, t2s, tr=protocol["tr"], ti=protocol["ti"], te=protocol["te"],
                      flip=protocol["flip"])
    raise ValueError(f"unknown sequence {k!r}")


def paint_labels(labels: np.ndarray, values: np.ndarray, *, peak: float = 1.0) -> np.ndarray:
    """An image of a FreeSurfer label map: every voxel gets the value of its compact tissue class
    (``values``, one per class, e.g. :func:`render` of a protocol), scaled so that the largest of
    ``values`` is ``peak``; float32.

    >>> import numpy as np
    >>> v = render(nominal_params(), STANDARD_PROTOCOLS["T2"]).numpy()
    >>> img = paint_labels(np.array([[[0, 2, 4]]]), v, peak=100.0)    # background, WM, CSF
    >>> float(img[0, 0, 0]), bool(img[0, 0, 2] > img[0, 0, 1])        # CSF brighter than WM on a T2
    (0.0, True)
    """
    values = np.asarray(values)
    idx = to_compact(torch.from_numpy(np.asarray(labels).astype(np.int64))).numpy()
    return (values[idx] / max(float(values.max()), 1e-12) * float(peak)).astype(np.float32)


def render_t1_like(labels: np.ndarray) -> np.ndarray:
    """Noise-free T1-like rendering (the standard MPRAGE, nominal tissue parameters, no deformation)
    of a FreeSurfer label map: float32, 0 for background, scaled so the brightest tissue class is 200.

    >>> import numpy as np
    >>> img = render_t1_like(np.array([[[0, 2, 3, 4]]]))   # background, WM, cortex, CSF
    >>> [round(float(v)) for v in img.ravel()]
    [0, 70, 34, 10]
    """
    return paint_labels(labels, render(nominal_params(), STANDARD_PROTOCOLS["T1"]).numpy(), peak=200.0)


def _logu(g: torch.Generator, lo: float, hi: float) -> float:
    u = float(torch.rand((), generator=g))
    return 10 ** (math.log10(lo) + u * (math.log10(hi) - math.log10(lo)))


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def sample_protocol(g: torch.Generator) -> dict:
    """Random sequence (equal probabilities) and parameters (Appendix A ranges, CPU generator).

    Deviations, made for physical plausibility: the MPRAGE TR is N(2.3, 0.23) s (the paper's
    "N(23, 2.3) s" is a unit slip); FLAIR TE is 10^N(log10 0.02, 0.3) clamped to [5, 300] ms;
    TE is kept below TR; FLAIR/FSE TR at least 0.1 s.
    """
    kind = SEQUENCES[int(torch.randint(0, len(SEQUENCES), (), generator=g))]
    if kind == "mprage":
        tr = max(1.5, 2.3 + 0.23 * float(torch.randn((), generator=g)))
        return dict(kind=kind, tr=tr, ti=_u(g, 0.6, 0.9), te=_u(g, 0.002, 0.004),
                    flip=math.radians(_u(g, 5, 12)))
    if kind == "se":
        tr = _logu(g, 0.1, 3.0)
        return dict(kind=kind, tr=tr, te=min(_logu(g, 0.001, 3.0), 0.5 * tr))
    if kind == "flair":
        te = 10 ** (math.log10(0.02) + 0.3 * float(torch.randn((), generator=g)))
        tr = _logu(g, 0.1, 5.0)
        return dict(kind=kind, tr=tr, te=min(max(te, 0.005), 0.3, 0.5 * tr), ti=_logu(g, 0.001, 3.0))
    tr = _logu(g, 0.005, 5.0)
    return dict(kind=kind, tr=tr, te=min(_logu(g, 0.002, 0.08), 0.9 * tr),
                flip=math.radians(_u(g, 5, 50)))
