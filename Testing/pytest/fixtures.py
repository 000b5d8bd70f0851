"""Code-generated test fixtures: synthetic heads and geometry cases (nothing from ../shared/data)."""
from __future__ import annotations

import numpy as np

from brainfm.volume import Volume


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 right-handed rotation about voxel/world axis ``axis``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine(spacing=(1.0, 1.0, 1.0), rot=np.eye(3), origin=(0.0, 0.0, 0.0), flip=(1, 1, 1)) -> np.ndarray:
    """Voxel->RAS affine = rot @ diag(flip*spacing) with the given origin."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(rot) @ np.diag(np.asarray(flip, float) * np.asarray(spacing, float))
    a[:3, 3] = origin
    return a


GEOMETRY_CASES = {
    "ras": affine((1, 1, 1), origin=(-20, -24, -16)),
    "lps_stored": affine((1, 1, 1), flip=(-1, -1, 1), origin=(20, 24, -16)),
    "oblique": affine((1.1, 0.9, 1.3), rot=rotation(2, 17) @ rotation(0, -9), origin=(-15, -20, -10)),
    "left_handed": affine((1, 1, 1), flip=(1, 1, -1), origin=(-20, -24, 16)),
    "anisotropic": affine((0.8, 0.8, 3.0), origin=(-18, -20, -15)),
}


def blob_head(shape=(40, 48, 36), affine_=None, *, seed=0) -> Volume:
    """A smooth, head-like synthetic image: ellipsoid 'brain' with a bright core and dark ventricles."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    img = np.where(r < 1.0, 60.0, 0.0) + np.where(r < 0.7, 50.0, 0.0) - np.where(r < 0.2, 80.0, 0.0)
    img = np.clip(img, 0, None) + rng.normal(0, 2, shape) * (r < 1.0)
    return Volume(img.astype(np.float32), affine_ if affine_ is not None else np.eye(4))


def label_head(shape=(40, 48, 36), *, seed=0) -> np.ndarray:
    """A toy FreeSurfer-numbered label map (2/41 WM, 3/42 cortex, 4/43 ventricles, 24 CSF)."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    lab = np.zeros(shape, np.int32)
    left = x < 0
    lab[r < 1.0] = 24
    lab[(r < 0.9) & left] = 3
    lab[(r < 0.9) & ~left] = 42
    lab[(r < 0.7) & left] = 2
    lab[(r < 0.7) & ~left] = 41
    lab[(r < 0.2) & left] = 4
    lab[(r < 0.2) & ~left] = 43
    return lab
