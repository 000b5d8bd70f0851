"""Deformations: invertibility, diffeomorphism (positive Jacobian), topology, affine recipe."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from brainfm.generator.deform import (compose, jacobian_determinant, random_affine, random_svf,
                                      sampling_coords, svf_to_displacement, warp)


def _velocity(seed: int, size=(32, 32, 32), std=4.0):
    g = torch.Generator().manual_seed(seed)
    return random_svf(size, g, scale=0.12, std=std)


def test_inverse_composes_to_identity():
    v = _velocity(0)
    fwd = svf_to_displacement(v, steps=7, downsample=1)
    inv = svf_to_displacement(-v, steps=7, downsample=1)
    assert fwd.abs().max() > 1.0  # a real deformation, not a no-op
    for a, b in ((inv, fwd), (fwd, inv)):
        err = compose(a, b).norm(dim=1)[:, 4:-4, 4:-4, 4:-4]  # away from the border clamp
        assert float(err.mean()) < 0.1


def test_inverse_with_coarse_integration():
    v = _velocity(1)
    fwd = svf_to_displacement(v, steps=7, downsample=2)
    inv = svf_to_displacement(-v, steps=7, downsample=2)
    assert float(compose(inv, fwd).norm(dim=1)[:, 4:-4, 4:-4, 4:-4].mean()) < 0.1


def test_jacobian_positive_even_for_large_velocity():
    v = _velocity(2, std=8.0)
    d = svf_to_displacement(v, steps=8, downsample=1)
    det = jacobian_determinant(d)
    assert float(det.min()) > 0.0
    # the raw displacement used as-is (reference behaviour) folds for such a field
    assert float(jacobian_determinant(v).min()) < float(det.min())


def test_blob_topology_preserved():
    x, y, z = np.meshgrid(*[np.arange(32)] * 3, indexing="ij")
    blob = (((x - 16) ** 2 + (y - 16) ** 2 + (z - 16) ** 2) < 11 ** 2).astype(np.float32)
    blob[13:19, 13:19, 13:19] = 0.0  # a hole: 1 component + 1 enclosed background cavity
    d = svf_to_displacement(_velocity(3, std=1.5), steps=7, downsample=1)
    out = warp(torch.from_numpy(blob)[None, None], d, mode="nearest")[0, 0].numpy() > 0.5
    assert float(d.abs().max()) > 2.0
    assert ndimage.label(out)[1] == 1
    assert ndimage.label(~out, structure=np.ones((3, 3, 3)))[1] == 2  # outside + cavity (26-conn.)
    assert abs(int(out.sum()) - int(blob.sum())) < 0.2 * blob.sum()


def test_random_affine_ranges_and_scale():
    for seed in range(20):
        a, s = random_affine(torch.Generator().manual_seed(seed), rotation_deg=15, shear=0.2,
                             scaling=0.2)
        det = float(torch.linalg.det(a))
        assert det > 0
        assert abs(s - abs(det) ** (1 / 3)) < 1e-6  # shears and rotations have det 1
        assert 0.8 ** 3 - 1e-6 <= det <= 1.2 ** 3 + 1e-6


def test_sampling_coords_identity_centres_output():
    c = sampling_coords((5, 5, 5), torch.eye(3, dtype=torch.float64), None, torch.tensor([10.0, 20, 30]))
    assert c.shape == (1, 3, 5, 5, 5)
    assert torch.allclose(c[0, :, 2, 2, 2], torch.tensor([10.0, 20, 30]))
    assert torch.allclose(c[0, :, 0, 2, 4], torch.tensor([8.0, 20, 32]))
