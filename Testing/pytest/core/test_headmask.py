"""The head mask (where labels may be painted) on images with a noisy background."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from brainfm.inference.headmask import background_threshold, head_mask, noise_scale


def _ball(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius ** 2


def _t1_like_head(sigma: float, rng: np.random.Generator):
    """A head at 2 mm: brain (0.25, darker CSF inside) under bright scalp fat (0.9) that is open at the
    neck (cut by the bottom of the field of view), in Rayleigh noise of scale ``sigma``."""
    shape = (64, 64, 64)
    img = rng.rayleigh(sigma, shape).astype(np.float32)
    centre = (32, 32, 30)
    scalp = _ball(shape, centre, 28) & ~_ball(shape, centre, 25)
    scalp[:, :, :8] = False
    brain = _ball(shape, centre, 23)
    img[scalp] = 0.9
    img[brain] = 0.25
    img[_ball(shape, centre, 5)] = 0.1  # ventricles
    img[:, :, :8][_ball(shape, centre, 10)[:, :, :8]] = 0.3  # neck
    return img, brain, _ball(shape, centre, 28)


def test_a_bright_scalp_does_not_cost_the_brain():
    img, brain, head = _t1_like_head(0.01, np.random.default_rng(0))
    assert threshold_otsu(img) > 0.25  # Otsu's threshold alone lies between brain and fat
    mask = head_mask(img, voxel_mm=2.0)
    assert mask[brain].all()
    far = ~ndimage.binary_dilation(head, iterations=2)
    assert mask[far].mean() < 0.001
    old = head_mask(img, voxel_mm=2.0, threshold=float(threshold_otsu(img)))
    assert old[brain].mean() < 0.5  # what the plain threshold did: the scalp, not the brain


def test_a_hot_voxel_changes_nothing():
    """A spike 1000 times brighter than the head squeezes the normalised head into a thousandth of the
    range; the threshold follows the head, not the spike."""
    img, brain, _head = _t1_like_head(0.01, np.random.default_rng(3))
    before = head_mask(img, voxel_mm=2.0)
    spiked = img * np.float32(1e-3)
    spiked[40, 40, 60] = 1.0
    after = head_mask(spiked, voxel_mm=2.0)
    assert after[brain].all()
    assert not after[40, 40, 60]
    assert (after != before).sum() <= 3  # the same mask, but for float32 rounding at the threshold


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_one_tissue_in_heavy_noise_stays_off_the_background(sigma):
    """A small head of one intensity in a very noisy field: the logarithm alone would reach into the
    noise; the noise floor keeps the threshold above it."""
    rng = np.random.default_rng(1)
    img = rng.rayleigh(sigma, (48, 48, 48)).astype(np.float32)
    inside = _ball(img.shape, (24, 24, 24), 12)
    img[inside] = 0.6 + rng.normal(0, sigma, int(inside.sum()))
    mask = head_mask(img, voxel_mm=2.0)
    assert mask[inside].mean() > 0.999
    far = ~ndimage.binary_dilation(inside, iterations=2)
    assert mask[far].mean() < 0.01
    t = background_threshold(img)
    assert np.quantile(img[far], 0.95) < t < 0.6


def test_noise_scale_reads_the_air_at_the_faces():
    rng = np.random.default_rng(2)
    img = rng.rayleigh(0.03, (40, 40, 40))
    img[8:32, 8:32, :30] = 0.5  # the head reaches one face
    assert noise_scale(img) == pytest.approx(0.03, rel=0.05)
    assert noise_scale(np.zeros((4, 4, 4))) == 0.0


def test_a_zero_background_is_the_mask_as_it_is():
    img = np.zeros((20, 20, 20), np.float32)
    img[5:15, 5:15, 5:15] = 0.5
    img[9, 9, 9] = 0.0  # a zero inside stays outside the mask: the masked image says so
    mask = head_mask(img, voxel_mm=2.0)
    assert np.array_equal(mask, img > 0)


@pytest.mark.shared
def test_a_noisy_background_t1_of_a_held_out_head_keeps_its_brain(shared_data):
    """Held-out label map 20 rendered as the standard T1 (bright fat, darker brain) with a Rician
    background: every brain voxel is inside the head mask of the network image."""
    from brainfm.evaluation import datasets
    from brainfm.generator import physics
    from brainfm.geometry import resample_to_grid
    from brainfm.inference.preprocess import prepare

    labels = datasets.load_labels(shared_data, "training_seg_20")
    lab = np.asarray(labels.data).astype(np.int64)
    img = physics.paint_labels(lab, physics.render(physics.nominal_params(), physics.STANDARD_PROTOCOLS["T1"]).numpy())
    rng = np.random.default_rng(0)
    s = 0.03 * float(img[(lab > 0) & (lab < 100)].mean())
    img = np.hypot(img + rng.normal(0, s, img.shape), rng.normal(0, s, img.shape)).astype(np.float32)
    prep = prepare(labels.with_data(img), spacing=2.0)
    net = np.asarray(prep.net.data, np.float32)
    truth = np.asarray(resample_to_grid(labels, prep.net.affine, prep.net.shape, order="nearest").data)
    brain = (truth > 0) & (truth < 100) & (truth != 24)
    mask = head_mask(net, voxel_mm=2.0)
    assert mask[brain].all()
    head = ndimage.binary_dilation(truth > 0, iterations=2)
    assert (mask & ~head).sum() < 0.01 * mask.sum()
    old = head_mask(net, voxel_mm=2.0, threshold=float(threshold_otsu(net[net > 0])))
    assert old[brain].mean() < 0.99  # the plain threshold cut into this brain
