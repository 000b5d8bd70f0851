"""Synthesis fitted to the scan: the model's contrast per tissue, the scan's own detail.

A model that works on a 2 mm grid synthesises smooth images. Within one tissue, though, the target
contrast is close to a linear function of the scan's intensity (partial volume, gradual changes of
myelin or iron); what the network has to supply is how each tissue looks in the target contrast.
So, with the tissue model fitted to the scan when its labels were refined
(:class:`brainfm.tasks.segrefine.Tissues`: the posterior of each tissue group at every labelled voxel
and the scan's bias-corrected intensities there), each group gets the linear map
``synthesised ≈ a_g · intensity + b_g`` that best fits the model's synthesis over the group
(least squares weighted by the posteriors), and every labelled voxel gets the posterior-weighted
mix of its groups' maps. Voxels outside the labelled structures keep the model's synthesis.

>>> import numpy as np
>>> y = np.linspace(0.0, 1.0, 100)
>>> post = np.stack([y < 0.5, y >= 0.5], 1).astype(np.float32)        # two tissues, hard posteriors
>>> model = np.where(y < 0.5, 0.8, 0.2)                                # the model: flat per tissue
>>> [round(float(v), 3) for v in transfer_contrast(post, y, model)[[0, 49, 50, 99]]]   # no slope to find
[0.8, 0.8, 0.2, 0.2]
>>> bool(np.allclose(transfer_contrast(post, y, 1.0 - y), 1.0 - y, atol=1e-5))      # a linear contrast, exactly
True
"""
from __future__ import annotations

import numpy as np

from brainfm.tasks.context import TaskContext

#: a group needs at least this much posterior mass (voxels) for a slope; below it, its mean only
MIN_WEIGHT = 20.0


def transfer_contrast(posteriors: np.ndarray, intensities: np.ndarray, synthesized: np.ndarray) -> np.ndarray:
    """The model's synthesis ``synthesized`` ``(N,)`` re-expressed per tissue group as a linear map of
    the scan's ``intensities`` ``(N,)``, fitted by least squares weighted by ``posteriors`` ``(N, G)``
    and mixed by them: float32 ``(N,)``.

    A group with (almost) constant intensities, or less than :data:`MIN_WEIGHT` voxels of posterior
    mass, gets its weighted mean of ``synthesized`` (no slope).
    """
    import torch

    q = np.asarray(posteriors, np.float32)
    y = np.asarray(intensities, np.float32).reshape(-1)
    s = np.asarray(synthesized, np.float32).reshape(-1)
    if q.ndim != 2 or q.shape[0] != y.shape[0] or s.shape[0] != y.shape[0]:
        raise ValueError(f"posteriors {q.shape}, intensities {y.shape} and synthesis {s.shape} do not match")
    if y.size == 0:
        return np.zeros(0, np.float32)
    # sums per group in one matrix product; centred values keep the (co)variances from sums exact
    s_centre = float(np.median(s))
    yc = torch.from_numpy(y) - float(np.median(y))
    sc = torch.from_numpy(s) - s_centre
    stats = torch.stack([torch.ones_like(yc), yc, sc, yc * yc, yc * sc], 1)
    sums = (torch.from_numpy(np.ascontiguousarray(q)).T @ stats).double().numpy()  # (G, 5)
    w = np.maximum(sums[:, 0], 1e-12)
    my, ms = sums[:, 1] / w, sums[:, 2] / w
    var = sums[:, 3] / w - my * my
    cov = sums[:, 4] / w - my * ms
    span = float(np.percentile(y, 99) - np.percentile(y, 1)) or 1.0
    ok = (sums[:, 0] >= MIN_WEIGHT) & (var > (1e-3 * span) ** 2)
    slope = np.where(ok, cov / np.where(ok, var, 1.0), 0.0)
    offset = ms - slope * my  # in centred units
    # the mix: sum_g q_g (a_g yc + b_g), as two matrix-vector products
    a = torch.from_numpy(slope.astype(np.float32))
    b = torch.from_numpy(offset.astype(np.float32))
    qt = torch.from_numpy(np.ascontiguousarray(q))
    out = (qt @ a).mul_(yc).add_(qt @ b).add_(s_centre)
    return out.numpy()


def fit_to_scan(ctx: TaskContext, data: np.ndarray, *, what: str) -> bool:
    """Replace the labelled voxels of ``data`` (a synthesis on the output grid, modified in place) by
    :func:`transfer_contrast` of the tissue model fitted when the labels were refined
    (:func:`brainfm.tasks.segmentation.decide`). Returns False, with a warning naming ``what``
    (``ctx.synth_method`` then ``"head"``), when there is no tissue model (the labels were not
    refined)."""
    from brainfm.tasks.segmentation import decide

    tissues = decide(ctx).tissues
    if tissues is None:
        ctx.warnings.append(f"{what}: not fitted to the scan (the segmentation was not refined to the scan's "
                            "intensities); the model's synthesis is used")
        ctx.synth_method = "head"
        return False
    mask = tissues.mask
    if mask.shape != data.shape:
        raise ValueError(f"the tissue model's grid {mask.shape} is not the synthesis grid {data.shape}")
    data[mask] = transfer_contrast(tissues.posteriors, tissues.intensities, data[mask])
    return True
