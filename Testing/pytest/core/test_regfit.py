"""Registration fitted to segmentations (``brainfm.tasks.regfit``, ``reg_method="fit"``): a known
affine map is recovered from structure centroids, the demons step follows a known non-linear
deformation beyond it, the task picks the method and falls back with a warning, and on the held-out
label maps the bundled model's fitted map carries labels between two brains far better than its head."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.evaluation.segmentation import dice_report
from brainfm.tasks.regfit import AtlasMap, centroid_affine, fit_atlas_map, structure_centroids
from brainfm.tasks.registration import resolve_method
from brainfm.volume import Volume

#: (label, centre mm, radii mm) of the phantom's deep structures, in atlas space
DEEP = [(4, (-9, 5, 10), (5, 20, 8)), (43, (9, 5, 10), (5, 20, 8)),
        (10, (-11, -12, 0), (7, 10, 7)), (49, (11, -12, 0), (7, 10, 7)),
        (16, (0, -28, -30), (8, 8, 16)),
        (8, (-24, -50, -28), (18, 14, 11)), (47, (24, -50, -28), (18, 14, 11))]
#: the known scan -> atlas affine map: 8 degrees about z, 5 % larger, shifted
_C, _S = np.cos(np.radians(8.0)), np.sin(np.radians(8.0))
TRUE = np.array([[1.05 * _C, -1.05 * _S, 0.0, 5.0], [1.05 * _S, 1.05 * _C, 0.0, -3.0],
                 [0.0, 0.0, 1.05, 4.0], [0.0, 0.0, 0.0, 1.0]])


def atlas_labels_at(q: np.ndarray) -> np.ndarray:
    """Phantom brain's labels at atlas points ``(..., 3)`` mm: cortex and white matter of two
    hemispheres, ventricles, thalami, brainstem and cerebellum."""
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    r = np.sqrt((x / 62) ** 2 + (y / 78) ** 2 + (z / 56) ** 2)
    lab = np.zeros(q.shape[:-1], np.int16)
    lab[r < 1.0] = np.where(x < 0, 3, 42)[r < 1.0]
    lab[r < 0.8] = np.where(x < 0, 2, 41)[r < 0.8]
    for value, centre, radii in DEEP:
        inside = sum(((q[..., i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1.0
        lab[inside] = value
    return lab


def grid(shape, origin, voxel=2.0):
    aff = np.diag([voxel, voxel, voxel, 1.0])
    aff[:3, 3] = origin
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    return aff, ijk @ aff[:3, :3].T + aff[:3, 3]


def apply(m, p):
    return p @ m[:3, :3].T + m[:3, 3]


def bump(p, amplitude=5.0):
    """A smooth displacement (mm) that pushes the left temporal region outwards."""
    d = np.exp(-(((p[..., 0] + 35) / 20) ** 2 + ((p[..., 1] + 5) / 25) ** 2 + (p[..., 2] / 20) ** 2))
    return np.stack([-amplitude * d, 0.0 * d, amplitude * 0.5 * d], -1)


@pytest.fixture(scope="module")
def phantom():
    atlas_aff, atlas_pts = grid((72, 90, 66), (-72.0, -100.0, -62.0))
    atlas = Volume(atlas_labels_at(atlas_pts), atlas_aff)
    scan_aff, scan_pts = grid((70, 84, 64), (-68.0, -82.0, -70.0))
    return atlas, scan_aff, scan_pts


def test_structure_centroids_are_in_world_millimetres():
    lab = np.zeros((6, 6, 6), np.int16)
    lab[1:3, 2, 2], lab[4, 4, 4], lab[0, 0, 0] = 2, 41, 24
    aff = np.diag([2.0, 3.0, 1.0, 1.0])
    aff[:3, 3] = (10, 0, -5)
    c = structure_centroids(Volume(lab, aff))
    assert sorted(c) == [2, 41]  # extra-cerebral CSF left out
    np.testing.assert_allclose(c[2][0], [13.0, 6.0, -3.0])
    assert (c[2][1], c[41][1]) == (2, 1)


def test_centroids_recover_a_known_affine_map(phantom):
    atlas, scan_aff, scan_pts = phantom
    scan = Volume(atlas_labels_at(apply(TRUE, scan_pts)), scan_aff)
    m = centroid_affine(scan, atlas)
    brain = np.asarray(scan.data) > 0
    err = np.linalg.norm(apply(m, scan_pts[brain]) - apply(TRUE, scan_pts[brain]), axis=-1)
    assert np.median(err) < 1.0 and err.max() < 3.0  # 2 mm voxels
    # the whole fit on an affine-only difference stays on the true map
    amap = fit_atlas_map(scan, atlas)
    err = np.linalg.norm(amap(scan_pts[brain].astype(np.float32)) - apply(TRUE, scan_pts[brain]), axis=-1)
    assert np.median(err) < 1.5


def test_demons_follow_a_non_linear_deformation_beyond_the_affine_map(phantom):
    atlas, scan_aff, scan_pts = phantom
    truth = apply(TRUE, scan_pts + bump(scan_pts))
    scan = Volume(atlas_labels_at(truth), scan_aff)
    lab = np.asarray(scan.data)

    def pulled_back(amap):  # the atlas labels at the mapped points, against the scan's own labels
        return dice_report(atlas_labels_at(amap(scan_pts.astype(np.float32))) * (lab > 0), lab)["mean_lr"]

    affine_only = pulled_back(fit_atlas_map(scan, atlas, iterations=0))
    full = fit_atlas_map(scan, atlas)
    assert full.field is not None and np.asarray(full.field.data).shape[-1] == 3
    assert pulled_back(full) > affine_only + 0.02
    brain = lab > 0
    bumped = brain & (np.linalg.norm(bump(scan_pts), axis=-1) > 2.0)
    err_full = np.linalg.norm(full(scan_pts[bumped].astype(np.float32)) - truth[bumped], axis=-1)
    err_aff = np.linalg.norm(apply(full.matrix, scan_pts[bumped]) - truth[bumped], axis=-1)
    assert np.median(err_full) < np.median(err_aff)  # where the bump moved tissue, the field follows


def test_too_few_common_structures_is_a_clear_error():
    lab = np.zeros((10, 10, 10), np.int16)
    lab[2:4, 2:4, 2:4], lab[6:8, 6:8, 6:8] = 2, 41
    vol = Volume(lab, np.eye(4))
    with pytest.raises(ValueError, match="2 structures in both"):
        fit_atlas_map(vol, vol)


def test_an_affine_only_map_is_its_matrix():
    m = TRUE.copy()
    p = np.array([[1.0, 2.0, 3.0], [-40.0, 10.0, 7.5]], np.float32)
    np.testing.assert_allclose(AtlasMap(m)(p), apply(m, p), atol=1e-4)


def test_method_resolution():
    assert resolve_method("auto", head_reliable=False, has_seg=True) == "fit"
    assert resolve_method("auto", head_reliable=True, has_seg=True) == "head"
    assert resolve_method("auto", head_reliable=False, has_seg=False) == "head"
    with pytest.raises(InputError, match="reg_method 'fit' fits to the model's segmentation"):
        resolve_method("fit", head_reliable=True, has_seg=False)
    with pytest.raises(InputError, match="reg_method must be one of auto, head, fit"):
        resolve_method("syn", head_reliable=True, has_seg=True)


def test_reg_task_without_the_atlas_segmentation_falls_back_to_the_head_with_a_warning():
    from brainfm.tasks.context import TaskContext
    from brainfm.tasks.registration import run_reg

    raw = {"registration": np.full((3, 6, 6, 6), 0.25, np.float32)}
    ctx = TaskContext.identity(raw, np.ones((6, 6, 6), np.float32), np.eye(4), heads={"reg": "registration"},
                               reg_method="fit")
    out = run_reg(ctx)
    assert ctx.reg_method == "head" and out["reg_atlas_coords"].meta["method"] == "model head"
    np.testing.assert_allclose(out["reg_atlas_coords"].data, 25.0)
    assert ctx.warnings[0].startswith("registration: the fit to the segmentation failed (the atlas template's")


def test_predictor_auto_fits_when_the_quality_says_the_head_is_not_reliable(tmp_path):
    from ckpt_factory import write_native

    from brainfm.inference import Predictor
    from brainfm.models import load_model

    _net, weights, _ = write_native(tmp_path / "tiny", heads={"registration": 3, "segmentation": 33})
    loaded = load_model(weights)
    loaded.info.quality = {"level": "preview", "real_t1_dice17": 0.75, "reg_carried_dice17": 0.3}
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    img = Volume(np.where(x ** 2 + y ** 2 + z ** 2 < 0.7, 100.0 + 50 * x, 0.0).astype(np.float32), np.eye(4))
    predictor = Predictor(loaded, device="cpu")
    pred = predictor.predict(img, tasks=["reg"], atlas=img)
    assert sorted(pred.outputs) == ["atlas_warped", "reg_atlas_coords", "reg_displacement", "subject_in_atlas"]
    assert pred.metadata["reg_method"] == "fitted to the model's segmentation"
    assert not any("registration head is not reliable" in w for w in pred.metadata["warnings"])
    # the same scan as its own atlas: the fitted map is close to the identity inside the head
    coords, fg = np.asarray(pred["reg_atlas_coords"].data), np.asarray(img.data) > 0
    ijk = np.stack(np.meshgrid(*[np.arange(24.0)] * 3, indexing="ij"), -1)
    assert np.median(np.linalg.norm(coords[fg] - ijk[fg], axis=-1)) < 1.0
    head = predictor.predict(img, tasks=["reg"], atlas=img, reg_method="head")
    assert head.metadata["reg_method"] == "model head"
    assert any("registration head is not reliable yet" in w for w in head.metadata["warnings"])
    with pytest.raises(InputError, match="reg_method must be one of"):
        predictor.predict(img, tasks=["reg"], atlas=img, reg_method="syn")


@pytest.mark.slow
def test_bundled_model_fitted_map_carries_labels_between_held_out_brains(shared_data, bundled_predictor):
    """The product path on the registration row's data: labels of held-out map A carried to B through
    the atlas coordinates of both (the head reaches merged-17 Dice 0.39 there, SyN directly A -> B 0.72)."""
    from brainfm.evaluation.registration import carried_dice

    predictor = bundled_predictor
    rep = carried_dice(predictor, shared_data, reg_method="fit")
    assert rep["method"] == "fitted to the model's segmentation"
    assert rep["mean_merged17"] > 0.62


def test_the_atlas_segmentation_is_cached_on_disk_for_later_processes(tmp_path, monkeypatch):
    from ckpt_factory import write_native

    from brainfm.inference import Predictor, atlaslabels
    from brainfm.io import read_volume
    from brainfm.models import load_model

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    _net, weights, _ = write_native(tmp_path / "tiny", heads={"registration": 3, "segmentation": 33})
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    img = Volume(np.where(x ** 2 + y ** 2 + z ** 2 < 0.7, 100.0 + 50 * x, 0.0).astype(np.float32), np.eye(4))
    atlas = img.with_data(np.asarray(img.data)[::-1].copy())
    first = Predictor(load_model(weights), device="cpu")
    labels = first.atlas_labels(atlas)
    path = atlaslabels.cache_path(first.info.sha256, atlaslabels.atlas_key(atlas))
    assert path.is_file() and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    np.testing.assert_array_equal(read_volume(path, kind="label").data, labels.data)

    second = Predictor(load_model(weights), device="cpu")
    calls = []
    monkeypatch.setattr(second, "predict", lambda *a, **k: calls.append(a))
    np.testing.assert_array_equal(second.atlas_labels(atlas).data, labels.data)
    assert calls == []  # read from the cache, not segmented again
    # a cached file that is not on the atlas's grid is not used
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    moved = Volume(np.asarray(atlas.data), shifted)
    assert atlaslabels.load_cached(path, moved) is None


    # other code (another version of brainfm, or a change to how labels are made) never reads that file:
    # it segments the atlas afresh and its file replaces the older one
    monkeypatch.setattr(atlaslabels, "code_fingerprint", lambda: "f" * 64)
    newer_path = atlaslabels.cache_path(first.info.sha256, atlaslabels.atlas_key(atlas))
    assert newer_path != path and newer_path.parent == path.parent
    third = Predictor(load_model(weights), device="cpu")
    segmented = []
    real_predict = third.predict
    monkeypatch.setattr(third, "predict", lambda *a, **k: segmented.append(a) or real_predict(*a, **k))
    np.testing.assert_array_equal(third.atlas_labels(atlas).data, labels.data)
    assert len(segmented) == 1
    assert newer_path.is_file() and not path.exists()


def test_the_code_fingerprint_follows_the_code_that_makes_labels_only(tmp_path):
    from brainfm.inference.atlaslabels import sources_fingerprint

    (tmp_path / "tasks").mkdir()
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "tasks" / "seg.py").write_text("RULE = 1\n")
    (tmp_path / "evaluation" / "rows.py").write_text("ROW = 1\n")
    before = sources_fingerprint(tmp_path, version="1.0")
    (tmp_path / "evaluation" / "rows.py").write_text("ROW = 2\n")
    assert sources_fingerprint(tmp_path, version="1.0") == before  # an evaluation change keeps the cache
    assert sources_fingerprint(tmp_path, version="1.1") != before
    (tmp_path / "tasks" / "seg.py").write_text("RULE = 2\n")
    assert sources_fingerprint(tmp_path, version="1.0") != before


def test_without_an_atlas_the_head_is_used_and_one_warning_says_how_to_fit(tmp_path, monkeypatch):
    from ckpt_factory import write_native

    from brainfm.inference import Predictor
    from brainfm.models import load_model

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BRAINFM_ATLAS", str(tmp_path / "missing.mgz"))  # no atlas anywhere, no download
    _net, weights, _ = write_native(tmp_path / "tiny", heads={"registration": 3, "segmentation": 33})
    loaded = load_model(weights)
    loaded.info.quality = {"level": "preview", "real_t1_dice17": 0.75, "reg_carried_dice17": 0.3}
    img = Volume(np.pad(np.full((12, 12, 12), 100.0, np.float32), 6), np.eye(4))
    pred = Predictor(loaded, device="cpu").predict(img, tasks=["reg"])
    assert pred.metadata["reg_method"] == "model head" and "atlas_warped" not in pred.outputs
    advice = [w for w in pred.metadata["warnings"] if w.startswith("registration: no atlas template")]
    assert len(advice) == 1 and "BRAINFM_ATLAS" in advice[0]
    assert not any("registration head is not reliable yet: labels carried" in w for w in pred.metadata["warnings"])


def _unreachable_default_atlas(monkeypatch, tmp_path):
    """No gca.mgz in the cache and no download: the default atlas cannot be had."""
    from brainfm.errors import ModelNotAvailableError
    from brainfm.models import registry

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BRAINFM_ATLAS", raising=False)

    def unreachable(spec=None, **_kw):
        raise ModelNotAvailableError("gca.mgz could not be downloaded (offline)")

    monkeypatch.setattr(registry, "resolve_atlas", unreachable)


def test_without_the_default_atlas_the_fit_uses_the_icbm_template_and_says_so(tmp_path, monkeypatch):
    from ckpt_factory import write_native

    from brainfm.inference import Predictor
    from brainfm.io import read_volume
    from brainfm.models import load_model
    from brainfm.models.templates import ICBM_TEMPLATE_NAME, icbm_template_path

    template = icbm_template_path()
    if template is None:
        pytest.skip("nilearn (the demo and test extras) is not installed")
    _unreachable_default_atlas(monkeypatch, tmp_path)
    _net, weights, _ = write_native(tmp_path / "tiny", heads={"registration": 3, "segmentation": 33})
    loaded = load_model(weights)
    loaded.info.quality = {"level": "preview", "real_t1_dice17": 0.75, "reg_carried_dice17": 0.3}
    predictor = Predictor(loaded, device="cpu")
    icbm = read_volume(template)
    # the template itself, cut to a small box (its own grid and world frame): the fitted map is close to identity
    box = tuple(slice(n // 2 - 14, n // 2 + 14) for n in icbm.shape)
    scan = Volume(np.ascontiguousarray(np.asarray(icbm.data, np.float32)[box]),
                  icbm.affine @ np.array([[1, 0, 0, box[0].start], [0, 1, 0, box[1].start],
                                          [0, 0, 1, box[2].start], [0, 0, 0, 1]], float))
    pred = predictor.predict(scan, tasks=["reg"], reg_method="fit")
    warnings = pred.metadata["warnings"]
    assert pred.metadata["atlas"] == ICBM_TEMPLATE_NAME
    assert any(w.startswith("registration: fitted to the MNI ICBM152 2009a") for w in warnings), warnings
    assert not any(w.startswith("registration: no atlas template") for w in warnings)
    assert pred.metadata["reg_method"] == "fitted to the model's segmentation"
    warped = np.asarray(pred["atlas_warped"].data)  # the template's T1, carried onto the scan (a random net's map)
    assert warped.shape == scan.shape and np.isfinite(warped).all()
    assert 0 < warped.max() <= float(np.max(icbm.data)) + 1e-3
    assert pred["subject_in_atlas"].shape == icbm.shape  # the scan on the template's grid


def test_without_the_default_atlas_and_without_nilearn_the_head_is_used_with_advice(tmp_path, monkeypatch):
    from ckpt_factory import write_native

    from brainfm.inference import Predictor
    from brainfm.models import load_model, templates

    _unreachable_default_atlas(monkeypatch, tmp_path)
    monkeypatch.setattr(templates, "icbm_template_path", lambda: None)
    _net, weights, _ = write_native(tmp_path / "tiny", heads={"registration": 3, "segmentation": 33})
    loaded = load_model(weights)
    loaded.info.quality = {"level": "preview", "real_t1_dice17": 0.75, "reg_carried_dice17": 0.3}
    img = Volume(np.pad(np.full((12, 12, 12), 100.0, np.float32), 6), np.eye(4))
    pred = Predictor(loaded, device="cpu").predict(img, tasks=["reg"])
    assert pred.metadata["reg_method"] == "model head" and pred.metadata["atlas"] is None
    assert any(w.startswith("registration: no atlas template") for w in pred.metadata["warnings"])
