"""The bias field fitted to a segmentation (``brainfm.tasks.biasfit``, ``bias_method="fit"``): known
fields are recovered on phantoms with anisotropic voxels, lesions and left/right labels; the task picks
the method, falls back with a warning, and on the real T1 the bundled model's fitted field follows
known applied fields where its head does not."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.evaluation.metrics import correlation
from brainfm.tasks.bias import resolve_method, run_bias
from brainfm.tasks.biasfit import fit_log_field, spline_basis
from brainfm.tasks.context import TaskContext

SHAPE = (48, 56, 20)
VOX = (1.5, 1.5, 4.0)  # thick slices


def _phantom():
    """Label map (left / right white matter and cortex, ventricles, CSF) and its bias-free image."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    left = x < 0
    lab = np.zeros(SHAPE, np.int32)
    lab[r < 0.95] = 24  # CSF: not used by the fit
    lab[r < 0.85] = np.where(left, 3, 42)[r < 0.85]  # cortex
    lab[r < 0.65] = np.where(left, 2, 41)[r < 0.65]  # white matter
    lab[r < 0.2] = np.where(left, 4, 43)[r < 0.2]  # ventricles
    means = {0: 0.0, 24: 20.0, 3: 60.0, 42: 60.0, 2: 100.0, 41: 100.0, 4: 15.0, 43: 15.0}
    img = np.zeros(SHAPE)
    for v, m in means.items():
        img[lab == v] = m
    noise = np.random.default_rng(0).normal(1.0, 0.03, SHAPE)
    return lab, img * noise, (x, y, z)


def _field(x, y, z):
    return 0.25 * x - 0.15 * y + 0.2 * x * z - 0.1 * y ** 2


def test_spline_basis_is_a_partition_of_unity_clamped_outside():
    b = spline_basis(30, 6, 5, 25)
    assert b.shape == (30, 6) and np.allclose(b.sum(1), 1.0)
    assert np.allclose(b[:6], b[5]) and np.allclose(b[25:], b[25])  # constant beyond the fitted box
    with pytest.raises(ValueError, match="at least 4"):
        spline_basis(10, 3, 0, 9)


def test_fit_recovers_a_known_field_on_thick_slices_and_leaves_inputs_alone():
    lab, clean, (x, y, z) = _phantom()
    f = _field(x, y, z)
    img = clean * np.exp(f)
    img_copy, lab_copy = img.copy(), lab.copy()
    est = fit_log_field(img, lab, voxel_mm=VOX)
    assert est.dtype == np.float32 and est.shape == SHAPE
    brain = (lab != 0) & (lab != 24)
    assert correlation(est, f, mask=brain) > 0.97
    # the difference from the true field is a constant (the field is relative), nothing more
    resid = (est - f)[brain]
    assert resid.std() < 0.2 * f[brain].std()
    np.testing.assert_array_equal(img, img_copy)
    np.testing.assert_array_equal(lab, lab_copy)


def test_fit_does_not_depend_on_the_tissue_contrast():
    lab, clean, (x, y, z) = _phantom()
    f = _field(x, y, z)
    t2_like = np.where(np.isin(lab, (2, 41)), 0.4, 1.0) * clean  # white matter darker than cortex
    a = fit_log_field(clean * np.exp(f), lab, voxel_mm=VOX)
    b = fit_log_field(t2_like * np.exp(f), lab, voxel_mm=VOX)
    brain = (lab != 0) & (lab != 24)
    assert np.abs(a - b)[brain].max() < 0.02


def test_a_mislabelled_lesion_is_dropped_as_outliers():
    lab, clean, (x, y, z) = _phantom()
    f = _field(x, y, z)
    lesion = ((x - 0.3) ** 2 + y ** 2 + z ** 2) < 0.15 ** 2  # bright blob inside right white matter
    img = np.where(lesion, 2.5 * clean, clean) * np.exp(f)
    est = fit_log_field(img, lab, voxel_mm=VOX)
    brain = (lab != 0) & (lab != 24)
    assert correlation(est, f, mask=brain) > 0.95


def test_left_and_right_labels_are_one_class_so_a_lateral_field_is_kept():
    lab, clean, (x, y, z) = _phantom()
    f = 0.3 * x  # brighter on the right: separate left/right class means would absorb it
    img = clean * np.exp(f)
    brain = (lab != 0) & (lab != 24)
    merged = fit_log_field(img, lab, voxel_mm=VOX)
    separate = fit_log_field(img, lab, voxel_mm=VOX, merge_hemispheres=False)
    spread = f[brain].std()
    assert correlation(merged, f, mask=brain) > 0.97 and (merged - f)[brain].std() < 0.1 * spread
    assert (separate - f)[brain].std() > 0.3 * spread  # a large part of the field went into the class means


def test_too_few_labelled_voxels_is_a_clear_error():
    lab = np.zeros((20, 20, 20), np.int32)
    lab[5:8, 5:8, 5:8] = 2
    with pytest.raises(ValueError, match="too few labelled voxels"):
        fit_log_field(np.ones(lab.shape), lab, voxel_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="one shape"):
        fit_log_field(np.ones((4, 4, 4)), np.ones((4, 4, 5)))


def test_method_resolution():
    assert resolve_method("auto", head_reliable=False, has_seg=True) == "fit"
    assert resolve_method("auto", head_reliable=True, has_seg=True) == "head"
    assert resolve_method("auto", head_reliable=False, has_seg=False) == "head"
    assert resolve_method("HEAD", head_reliable=False, has_seg=True) == "head"
    with pytest.raises(InputError, match="no segmentation head"):
        resolve_method("fit", head_reliable=True, has_seg=False)
    with pytest.raises(InputError, match="bias_method must be one of auto, head, fit"):
        resolve_method("n4", head_reliable=True, has_seg=True)


def _task_context(lab, img, method):
    """A context whose segmentation logits give ``lab`` (scheme ``brainfm56``) and whose bias head
    says 'no field' (log 0)."""
    from brainfm.labels import get_scheme

    scheme = get_scheme("brainfm56")
    logits = np.zeros((56,) + lab.shape, np.float32)
    for v in np.unique(lab):
        logits[list(scheme.fs_values).index(int(v))][lab == v] = 5.0
    aff = np.diag(list(VOX) + [1.0])
    raw = {"segmentation": logits, "bias_field_log": np.zeros((1,) + lab.shape, np.float32)}
    return TaskContext.identity(raw, (img / img.max()).astype(np.float32), aff,
                                heads={"seg": "segmentation", "bias": "bias_field_log"}, scheme=scheme,
                                image_out=img.astype(np.float32), foreground_out=img > 0, bias_method=method)


def test_bias_task_fits_the_segmentation_or_falls_back_to_the_head_with_a_warning():
    lab, clean, (x, y, z) = _phantom()
    f = _field(x, y, z)
    img = clean * np.exp(f)
    ctx = _task_context(lab, img, "fit")
    out = run_bias(ctx)
    brain = (lab != 0) & (lab != 24)
    assert out["bias_field"].meta["method"] == out["bias_corrected"].meta["method"] == \
        "fitted to the model's segmentation"
    assert correlation(np.log(out["bias_field"].data), f, mask=brain) > 0.97
    # the corrected image is flat inside white matter again (the field's spread there removed)
    wm = np.isin(lab, (2, 41))
    assert np.log(out["bias_corrected"].data[wm]).std() < 0.5 * np.log(img[wm]).std()
    head = run_bias(_task_context(lab, img, "head"))
    np.testing.assert_allclose(head["bias_field"].data, 1.0)
    # a segmentation with nothing to fit on: the head's field, and a warning saying why
    empty = _task_context(np.zeros_like(lab), img, "fit")
    fallback = run_bias(empty)
    assert fallback["bias_field"].meta["method"] == "model head" and empty.bias_method == "head"
    assert empty.warnings and empty.warnings[0].startswith("bias field: the fit to the segmentation failed")


def test_bundled_model_fitted_field_follows_fields_applied_to_a_real_t1(shared_data, bundled_predictor):
    """The product path: the bundled model's segmentation of the real T1 with a known field applied."""
    from brainfm.evaluation.biasfield import applied_t1

    predictor = bundled_predictor
    t1, brain, fields = applied_t1(shared_data)
    field = fields[0]
    biased = t1.with_data((np.asarray(t1.data, np.float64) * np.exp(field)).astype(np.float32))
    pred = predictor.predict(biased, tasks=["bias"], bias_method="fit")
    assert sorted(pred.outputs) == ["bias_corrected", "bias_field"]  # the segmentation used, not returned
    assert pred.metadata["bias_method"] == "fitted to the model's segmentation"
    assert pred["bias_field"].affine.tolist() == t1.affine.tolist() and pred["bias_field"].shape == t1.shape
    est = np.log(np.asarray(pred["bias_field"].data, np.float64))
    assert correlation(est, field, mask=brain) > 0.7  # N4 scores 0.726 on average over the three fields


def test_predictor_refuses_an_unknown_method_before_any_work():
    from brainfm.inference import Predictor
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.volume import Volume

    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T1": 1}))
    img = Volume(np.ones((16, 16, 16), np.float32), np.eye(4))
    with pytest.raises(InputError, match="bias_method must be one of"):
        Predictor(net, device="cpu").predict(img, tasks=["t1"], bias_method="n4")


def test_auto_keeps_the_head_on_ct_and_an_explicit_fit_on_ct_warns(tmp_path):
    """Hounsfield units have no multiplicative bias field: ``auto`` does not fit one on a CT."""
    from ckpt_factory import write_native

    from brainfm.inference import Predictor
    from brainfm.models import load_model
    from brainfm.volume import Volume

    _net, weights, _ = write_native(tmp_path / "tiny", heads={"bias_field_log": 1, "segmentation": 33})
    loaded = load_model(weights)
    loaded.info.quality = {"level": "preview", "real_t1_dice17": 0.75, "bias_applied_corr": 0.0}
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    head = x ** 2 + y ** 2 + z ** 2 < 0.7
    ct = Volume(np.where(head, np.where(np.abs(x) < 0.3, 35.0, 1200.0), -1000.0).astype(np.float32),
                np.diag([2.0, 2.0, 2.0, 1.0]))
    mr = Volume(np.where(head, 100.0 + 20 * x, 0.0).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    p = Predictor(loaded, device="cpu")
    auto_ct = p.predict(ct, tasks=["bias"])
    assert [w for w in auto_ct.warnings if "looks like CT" in w]  # the input is taken as CT
    assert auto_ct.metadata["bias_method"] == "model head"
    forced = p.predict(ct, tasks=["bias"], bias_method="fit")
    assert [w for w in forced.warnings if w.startswith("bias field fitted to a CT")]
    assert p.predict(mr, tasks=["bias"]).metadata["heads"]["seg"] == "segmentation"  # auto fits on MR
