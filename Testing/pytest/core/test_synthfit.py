"""Synthesis fitted to the scan (``brainfm.tasks.synthfit``, ``synth_method="fit"``): each tissue's linear
map from the scan's intensities to the model's synthesis is found, the synthesised edge moves to the scan's
edge, the rim of a masked scan fades with the scan, the method is chosen and reported like the other fitted
methods, and on the stroke trio the bundled model's fitted synthesis beats both its own head and the
input-itself baseline on all four pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.tasks.synthesis import resolve_method, run_ct, run_t2
from brainfm.tasks.synthfit import MIN_WEIGHT, edge_fade, transfer_contrast
from test_segrefine import _phantom_context


def test_each_tissue_gets_its_own_linear_map():
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.uniform(0.0, 1.0, n)
    group = rng.integers(0, 3, n)
    q = np.eye(3, dtype=np.float32)[group]  # hard posteriors
    a, b = np.array([-2.0, 0.5, 0.0]), np.array([1.5, 0.1, 0.7])
    target = a[group] * y + b[group]
    np.testing.assert_allclose(transfer_contrast(q, y, target), target, atol=1e-4)
    # noise in the model's synthesis is averaged out, the maps stay
    noisy = target + rng.normal(0, 0.05, n)
    assert np.abs(transfer_contrast(q, y, noisy) - target).max() < 0.03
    # soft posteriors mix the maps
    soft = np.full((n, 3), 0.25, np.float32)
    soft[np.arange(n), group] = 0.5
    out = transfer_contrast(soft, y, target)
    assert np.isfinite(out).all() and out.shape == (n,)


def test_the_maps_are_fitted_at_the_models_resolution():
    """A model that saw the target contrast only at 2 mm: fitted against the scan at full resolution the
    slope is too flat; fitted against the scan brought to 2 mm (at_resolution) the target comes back,
    fine detail included. Thick slices are left as they are."""
    from scipy import ndimage

    from brainfm.tasks.synthfit import at_resolution

    rng = np.random.default_rng(2)
    scan = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 1.0).astype(np.float32) * 10 + 100
    target = 300.0 - 2.0 * scan  # one tissue, a linear contrast: inverted, twice the spread
    model = ndimage.gaussian_filter(target, np.sqrt(2.0 ** 2 - 1.0))  # the model's 2 mm rendering of it
    mask = np.ones(scan.shape, bool)
    mask[:, :, :2] = False  # the masked edge is not smoothed into
    q = np.ones((int(mask.sum()), 1), np.float32)
    y, t, m = scan[mask], target[mask], model[mask]
    plain = transfer_contrast(q, y, m)
    matched = transfer_contrast(q, y, m, fit_intensities=at_resolution(mask, y, (1.0, 1.0, 1.0), 2.0))
    err = lambda a: float(np.sqrt(np.mean((a - t) ** 2)))  # noqa: E731
    slope = lambda a: float(np.polyfit(y, a, 1)[0])  # noqa: E731
    assert abs(slope(matched) + 2.0) < 0.1 < abs(slope(plain) + 2.0)
    assert err(matched) < 0.5 * err(plain)
    np.testing.assert_array_equal(at_resolution(mask, y, (1.0, 1.0, 5.0), 2.0), y)


def test_small_or_flat_tissues_get_their_mean():
    y = np.linspace(0.0, 1.0, 200)
    q = np.zeros((200, 2), np.float32)
    q[:, 0] = 1.0
    q[:int(MIN_WEIGHT) - 5, :] = [0.0, 1.0]  # group 1: fewer voxels than a slope needs
    s = 2.0 * y
    out = transfer_contrast(q, y, s)
    small = slice(0, int(MIN_WEIGHT) - 5)
    np.testing.assert_allclose(out[small], s[small].mean(), atol=1e-5)
    flat = transfer_contrast(np.ones((50, 1), np.float32), np.full(50, 3.0), np.linspace(0, 1, 50))
    np.testing.assert_allclose(flat, 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        transfer_contrast(q, y[:10], s)


def test_method_resolution():
    assert resolve_method("auto", has_seg=True, refined=True) == "fit"
    assert resolve_method("auto", has_seg=True, refined=False) == "head"
    assert resolve_method("auto", has_seg=False, refined=True) == "head"
    with pytest.raises(InputError, match="no segmentation head"):
        resolve_method("fit", has_seg=False, refined=True)
    with pytest.raises(InputError, match="synth_method must be one of auto, head, fit"):
        resolve_method("copy", has_seg=True, refined=True)


def _t2(r):
    """The model's synthetic T2 of the phantom: 0.3 in white matter, 0.7 in cortex, along its boundary."""
    return (0.3 + 0.4 / (1 + np.exp((12 - r) / 0.5)))[None].astype(np.float32)


def _phantom(synth_method):
    """The segmentation phantom (the image's white-matter edge at r = 9, the model's blurred one at r = 12)
    with a synthetic T2 and CT (HU / 1000) that follow the model's boundary."""
    return _phantom_context("fit", raw={"T2": _t2, "CT": lambda r: _t2(r) / 10}, heads={"t2": "T2", "ct": "CT"},
                            synth_method=synth_method)


def test_the_synthesised_edge_moves_to_the_scan_edge():
    fit, r = _phantom("fit")
    head, _ = _phantom("head")
    t2_fit = np.asarray(run_t2(fit)["synth_t2"].data)
    t2_head = np.asarray(run_t2(head)["synth_t2"].data)
    ring = (r > 9.5) & (r < 11)  # white matter for the model, cortex in the scan
    assert t2_head[ring].max() < 0.36  # the model's: white matter's T2
    assert t2_fit[ring].min() > 0.5  # fitted: the cortex's T2 of the model
    np.testing.assert_allclose(t2_fit[r < 8.5], t2_fit[r < 8.5].mean(), atol=1e-4)  # one tissue, one value
    assert abs(t2_fit[r < 8.5].mean() - 0.3) < 0.02
    assert fit.synth_method == "fit" and fit.decided.tissues is not None
    smoothed = dict(fit.decided.tissues.derived)  # the scan at the model's resolution and its rim, computed once
    ct = np.asarray(run_ct(fit)["synth_ct"].data)  # the CT is fitted too, in HU
    assert ct[ring].min() > 50.0 and ct[r > 17].max() == -1000.0
    assert sorted(smoothed) == ["at_resolution 1 mm", "edge fraction", "edge voxels"] and all(fit.decided.tissues.derived[k] is v for k, v in smoothed.items())
    # no tissue model (the labels are not refined): the model's image, with a warning
    plain, _ = _phantom("fit")
    plain.seg_method = "head"
    out = np.asarray(run_t2(plain)["synth_t2"].data)
    np.testing.assert_array_equal(out, t2_head)
    assert plain.synth_method == "head" and plain.warnings[-1].startswith("synthetic T2: not fitted to the scan")


def _brute_force_edge(mask, foreground, image, voxel_mm, reach_mm, level):
    """edge_fade by Euclidean distance transforms over the whole grid (the reference)."""
    from scipy import ndimage

    d_lab, nearest = ndimage.distance_transform_edt(~mask, sampling=voxel_mm, return_indices=True)
    d_bg = ndimage.distance_transform_edt(foreground, sampling=voxel_mm)
    rim = foreground & ~mask & (d_lab <= reach_mm) & (d_bg <= reach_mm)
    ref = image[tuple(i[rim] for i in nearest)] - level
    return np.flatnonzero(rim), np.clip((image[rim] - level) / ref, 0.0, 1.0)


@pytest.mark.parametrize("voxel_mm", [(1.0, 1.0, 1.0), (0.8, 1.2, 3.0)])
def test_the_rim_of_a_masked_scan_and_how_far_it_faded(voxel_mm):
    """A labelled blob away from the grid's corner, a rim fading to the background (noise included), a
    whole-head part of the grid without background; the rim and its fractions match a brute-force
    reference (distance transforms) wherever the nearest labelled voxel is unique."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    shape = (40, 36, 20)
    x, y, z = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel_mm)], indexing="ij")
    r = np.sqrt((x - 22) ** 2 + (y - 20) ** 2 + (z - 30) ** 2)
    mask = r < 12
    level = 5.0
    image = np.where(r < 12, 80.0 + rng.normal(0, 4, shape), level + 75.0 * np.clip((15 - r) / 3, 0, 1))
    image = np.where(r < 15, image, level)
    foreground = image > level
    voxels, fraction = edge_fade(mask, foreground, image, voxel_mm=voxel_mm, reach_mm=2.5, level=level)
    ref_voxels, ref_fraction = _brute_force_edge(mask, foreground, image, np.array(voxel_mm), 2.5, level)
    np.testing.assert_array_equal(voxels, ref_voxels)
    assert voxels.size > 100 and 0.0 < fraction.min() and fraction.max() <= 1.0
    # the nearest labelled voxel is ambiguous at ties: compare where the reference is the same for all
    # the labelled voxels within 0.01 mm of the nearest distance (noise makes them differ otherwise)
    d = ndimage.distance_transform_edt(~mask, sampling=voxel_mm)
    np.testing.assert_allclose(np.sort(fraction), np.sort(ref_fraction), atol=0.2)
    assert np.isclose(fraction, ref_fraction, atol=1e-6).mean() > 0.7
    assert (d.reshape(-1)[voxels] <= 2.5 + 1e-6).all()
    # a whole head (no background next to the labels): no rim; no labels: no rim
    assert edge_fade(mask, np.ones(shape, bool), image, voxel_mm=voxel_mm, reach_mm=2.5)[0].size == 0
    assert edge_fade(np.zeros(shape, bool), foreground, image, voxel_mm=voxel_mm, reach_mm=2.5)[0].size == 0
    with pytest.raises(ValueError, match="do not match"):
        edge_fade(mask[:-1], foreground, image, voxel_mm=voxel_mm, reach_mm=2.5)


def test_the_synthesis_fades_with_the_rim_of_a_masked_scan():
    """The phantom's scan fades to its zero background over 2 voxels beyond the model's last labelled
    voxel: there the fitted T2 is the model's times the scan's fraction, the CT moves towards -1000 HU
    by the same fraction; with no background (a whole head) the rim keeps the model's synthesis."""
    from scipy import ndimage

    def faded(method="fit", whole_head=False):
        ctx, r = _phantom(method)
        ring = (r >= 17) & (r < 19)
        image = np.where(ring, 60.0 * (19 - r) / 2, ctx.image_out).astype(np.float32)
        ctx.image_out = image + (1.0 if whole_head else 0.0)
        ctx.foreground_out = ctx.image_out > 0
        return ctx, r, ring

    ctx, r, ring = faded()
    head, _, _ = faded("head")
    t2_head = np.asarray(run_t2(head)["synth_t2"].data)
    ct_head = np.asarray(run_ct(head)["synth_ct"].data)
    t2 = np.asarray(run_t2(ctx)["synth_t2"].data)
    ct = np.asarray(run_ct(ctx)["synth_ct"].data)
    labelled = ctx.decided.tissues.mask
    assert not labelled[ring].any()
    # within one model voxel + one scan voxel of the labels and of the background
    reach = ring & (ndimage.distance_transform_edt(~labelled) <= 2.0)
    reach &= ndimage.distance_transform_edt(ctx.foreground_out) <= 2.0
    assert reach.sum() > 0.6 * ring.sum()
    fraction = (19 - r[reach]) / 2  # the scan's value over the cortex's (60) next to it
    np.testing.assert_allclose(t2[reach], t2_head[reach] * fraction, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ct[reach], -1000 + (ct_head[reach] + 1000) * fraction, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(t2[ring & ~reach], t2_head[ring & ~reach])
    whole, _, _ = faded(whole_head=True)
    whole_head, _, _ = faded("head", whole_head=True)
    t2_whole = np.asarray(run_t2(whole_head)["synth_t2"].data)
    assert t2_whole[ring].min() > 0.5
    np.testing.assert_array_equal(np.asarray(run_t2(whole)["synth_t2"].data)[ring], t2_whole[ring])


def _tiny(tmp_path, heads):
    from brainfm.inference import Predictor
    import ckpt_factory

    _net, weights, _json = ckpt_factory.write_native(tmp_path / "tiny", heads=heads)
    return Predictor.from_pretrained(str(weights), device="cpu"), weights


def test_predictor_chooses_reports_and_refuses(tmp_path):
    from fixtures import GEOMETRY_CASES, blob_head

    p, _ = _tiny(tmp_path, {"segmentation": 33, "T2": 1})
    img = blob_head((30, 34, 26), GEOMETRY_CASES["oblique"])
    auto = p.predict(img, tasks=["t2"])  # a 1 mm model: the labels are not refined, nor the synthesis fitted
    assert auto.metadata["synth_method"] == "model head"
    fit = p.predict(img, tasks=["t2"], synth_method="fit")
    assert fit.metadata["synth_method"].startswith("fitted to the scan")
    assert fit.metadata["seg_method"] == "model head refined to the scan's intensities"
    a, f = np.asarray(auto["synth_t2"].data), np.asarray(fit["synth_t2"].data)
    assert a.shape == f.shape == img.shape and np.allclose(fit["synth_t2"].affine, img.affine)
    assert not np.allclose(a, f)
    with pytest.raises(InputError, match="seg_method is 'head'"):
        p.predict(img, tasks=["t2"], synth_method="fit", seg_method="head")
    no_seg, _ = _tiny(tmp_path / "b", {"T2": 1})
    assert no_seg.predict(img, tasks=["t2"]).metadata["synth_method"] == "model head"
    with pytest.raises(InputError, match="no segmentation head"):
        no_seg.predict(img, tasks=["t2"], synth_method="fit")
    assert p.predict(img, tasks=["seg"]).metadata["synth_method"] is None  # no synthesis asked for


def test_cli_option_reaches_the_predictor_and_is_reported(tmp_path, capsys):
    from brainfm.cli import main
    from brainfm.io import write_volume
    from fixtures import blob_head

    _p, weights = _tiny(tmp_path, {"segmentation": 33, "T2": 1})
    scan = tmp_path / "a.nii.gz"
    write_volume(blob_head((24, 28, 20)), scan)
    base = ["run", str(scan), "--model", str(weights), "--device", "cpu", "--tasks", "t2", "--progress", "none",
            "--no-png"]
    assert main(base + ["-o", str(tmp_path / "fit"), "--synth-method", "fit"]) == 0
    err = capsys.readouterr().err
    assert "a: synthesis: fitted to the scan" in err
    summary = json.loads((tmp_path / "fit" / "a" / "summary.json").read_text())
    assert summary["metadata"]["synth_method"].startswith("fitted to the scan")
    assert main(base + ["-o", str(tmp_path / "bad"), "--synth-method", "fit", "--seg-method", "head"]) == 2
    assert "seg_method is 'head'" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "a").exists()


@pytest.mark.slow
def test_bundled_model_fitted_synthesis_beats_its_head_and_the_baseline(shared_data, bundled_predictor):
    """The synthesis row's four pairs of the stroke trio (T1->T2, T1->FLAIR, T2->T1, FLAIR->T1): PSNR and
    SSIM in the brain after a linear fit, above the model's own synthesis and the input itself."""
    from brainfm.evaluation.synthesis import PAIRS, baseline_scores, load_trio, score_synthesis

    predictor = bundled_predictor
    trio = load_trio(shared_data)
    for s, t in PAIRS:
        fit, auto = score_synthesis(predictor, trio[s], trio[t], t)
        own, _ = score_synthesis(predictor, trio[s], trio[t], t, synth_method="head")
        assert auto.metadata["synth_method"].startswith("fitted to the scan")
        base = baseline_scores(np.asarray(trio[s].data, np.float64), np.asarray(trio[t].data, np.float64))
        assert fit["psnr"] > max(own["psnr"], base["psnr"]), (s, t, fit, own, base)
        assert fit["ssim"] > max(own["ssim"], base["ssim"]), (s, t, fit, own, base)
