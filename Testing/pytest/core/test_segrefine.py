"""Segmentation refined to the scan's intensities (``brainfm.tasks.segrefine``, ``seg_method="fit"``):
the boundary between tissues moves to the image's edge, structures of one tissue keep the model's
decision, the label decision shared by every task is the refined one, and on the real T1 the bundled
model's refined labels agree with FreeSurfer better than its own."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.geometry import GridMapper
from brainfm.tasks.context import TaskContext
from brainfm.tasks.segmentation import decide, resolve_method, run_seg
from brainfm.tasks.segrefine import group_of, refine_indices

FS33 = [0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 41, 42, 43, 44, 46, 47, 49, 50, 51,
        52, 53, 54, 58, 60]


def test_tissue_boundaries_move_to_the_image_and_one_tissue_keeps_the_prior():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 400)
    # white matter / cortex, the prior's boundary at 0.6, the image's at 0.45
    p_wm = 1 / (1 + np.exp((x - 0.6) / 0.08))
    prior = np.stack([p_wm, 1 - p_wm], 1)
    image = np.where(x < 0.45, 100.0, 60.0) + rng.normal(0, 4, x.size)
    idx = refine_indices(prior, image, [2, 3])
    assert abs(x[np.argmax(idx == 1)] - 0.45) < 0.02 and (idx[x > 0.5] == 1).all()
    # cortex and hippocampus share a Gaussian: the same intensity, so the prior alone decides
    p_ctx = 1 / (1 + np.exp((x - 0.3) / 0.05))
    prior2 = np.stack([p_ctx, 1 - p_ctx], 1)
    idx2 = refine_indices(prior2, np.full(x.size, 60.0) + rng.normal(0, 4, x.size), [3, 17])
    np.testing.assert_array_equal(idx2, (p_ctx < 0.5).astype(int))
    with pytest.raises(ValueError, match="do not match"):
        refine_indices(prior, image[:10], [2, 3])


def test_a_broad_tissue_does_not_claim_the_far_side_of_a_narrow_one():
    """On a T2 the fluid's Gaussian is broad (it takes the partial-volume rim of the CSF), the cortex's
    narrow. With a standard deviation per group, the broad one wins both tails: a voxel darker than all
    the cortex would be fluid. The groups share one standard deviation, so it is cortex."""
    from brainfm.tasks.segrefine import SPREAD, fit_tissues

    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(70, 4, 1000), rng.normal(100, 15, 1000), [52.0, 58.0, 62.0]])
    p_ctx = np.concatenate([np.full(1000, 0.7), np.full(1000, 0.3), np.full(3, 0.5)])  # the last three: unsure
    prior = np.stack([p_ctx, 1 - p_ctx], 1)
    assert SPREAD == "median"
    for spread in ("median", "pooled"):
        idx, post = fit_tissues(prior, y, [3, 24], spread=spread)
        np.testing.assert_array_equal(idx[-3:], [0, 0, 0])
        assert (post[-3:, 0] > 0.99).all()
        # between the two means the boundary follows the intensity: one step from cortex to fluid
        order = np.argsort(y)
        assert np.count_nonzero(np.diff(idx[order][(y[order] > 60) & (y[order] < 110)])) == 1
    per_group, _ = fit_tissues(prior, y, [3, 24], spread="own")
    assert per_group[-3] == 1  # what a Gaussian per group does with the darkest voxel


def test_a_broad_tissue_does_not_blunt_the_contrast_of_two_narrow_ones():
    """A proton density: white matter and cortex differ by about two of their own spreads, and the fluid
    is broad. Its variance, pooled with theirs, would widen the shared spread until the prior (here
    wrong at a third of the voxels) drew their boundary; the median spread is theirs."""
    from brainfm.tasks.segrefine import fit_tissues

    rng = np.random.default_rng(0)
    n = 2000
    y_tissue = np.concatenate([rng.normal(140, 5, n), rng.normal(151, 5, n)])
    truth = np.repeat([0, 1], n)
    right = rng.uniform(0.25, 0.85, 2 * n)  # the prior's probability of the right tissue
    p_wm = np.where(truth == 0, right, 0.9 - right)
    prior = np.concatenate([np.stack([p_wm, 0.9 - p_wm, np.full(2 * n, 0.1)], 1), np.tile([0.1, 0.1, 0.8], (n, 1))])
    y = np.concatenate([y_tissue, rng.normal(125, 20, n)])
    assert ((p_wm > 0.45) == (truth == 0)).mean() < 0.7
    accuracy = {}
    for spread in ("median", "pooled"):
        idx, _ = fit_tissues(prior, y, [2, 3, 24], spread=spread)
        accuracy[spread] = float((idx[:2 * n] == truth).mean())
    alone, _ = fit_tissues(prior[:2 * n, :2] / 0.9, y_tissue, [2, 3])  # without the fluid
    assert (alone == truth).mean() > 0.88
    assert accuracy["median"] > 0.86
    assert accuracy["pooled"] < 0.80  # what pooling with the broad fluid does


def test_the_csf_rim_of_a_stripped_brain_does_not_pull_the_ventricles_into_tissue(monkeypatch):
    """On a brain-extracted T1 the CSF around the brain is mostly its partial-volume rim, between fluid
    and cortex. Where the model draws a ventricle too large, the voxels it adds lie between fluid and
    tissue too. With the ventricles and that CSF in one Gaussian, its mean sits near those voxels and the
    prior keeps them; the ventricles' own Gaussian sits on the fluid, so they go to the tissue."""
    import brainfm.tasks.segrefine as sr

    rng = np.random.default_rng(3)
    sd = 0.025
    parts = [  # (intensity mean, voxels, prior of ventricle / CSF / cortex / white matter, true channel)
        (0.09, 3000, (0.9, 0.04, 0.03, 0.03), 0),  # the ventricles
        (0.19, 1500, (0.7, 0.0, 0.27, 0.03), 2),   # tissue beside them, that the model drew as ventricle
        (0.17, 6000, (0.03, 0.9, 0.07, 0.0), 1),   # the CSF rim of the stripped brain
        (0.25, 8000, (0.01, 0.04, 0.9, 0.05), 2),  # cortex
        (0.40, 8000, (0.0, 0.0, 0.05, 0.95), 3),   # white matter
    ]
    y = np.concatenate([rng.normal(m, sd, n) for m, n, _, _ in parts])
    prior = np.concatenate([np.tile(p, (n, 1)) for _, n, p, _ in parts])
    truth = np.concatenate([np.full(n, t) for _, n, _, t in parts])
    labels = [4, 24, 3, 2]
    extra = slice(3000, 4500)
    idx = refine_indices(prior, y, labels)
    assert (idx[:3000] == 0).mean() > 0.99  # the ventricles keep their fluid
    assert (idx[extra] == 2).mean() > 0.6  # 69 % of the over-drawn voxels go back to the tissue
    g = sr.TISSUE_GROUPS  # the grouping before: ventricles and CSF in one Gaussian
    monkeypatch.setattr(sr, "TISSUE_GROUPS", (g[0], g[1], g[2] + g[3]) + g[4:])
    idx_merged = refine_indices(prior, y, labels)
    assert (idx_merged[extra] == 2).mean() < 0.4  # 31 %: the over-drawn ventricle stays
    assert (idx == truth).mean() > (idx_merged == truth).mean() + 0.02  # 97.8 % against 94.9 % right


def test_spread_is_checked_and_the_old_keyword_still_works():
    from brainfm.tasks.segrefine import fit_tissues

    rng = np.random.default_rng(2)
    y = np.concatenate([rng.normal(70, 4, 300), rng.normal(100, 15, 300)])
    prior = np.stack([np.repeat([0.7, 0.3], 300), np.repeat([0.3, 0.7], 300)], 1)
    with pytest.raises(ValueError, match="spread 'wide' is not one of"):
        fit_tissues(prior, y, [3, 24], spread="wide")
    for old, new in ((True, "pooled"), (False, "own")):
        with pytest.warns(DeprecationWarning, match="pooled_sigma"):
            idx_old, post_old = fit_tissues(prior, y, [3, 24], pooled_sigma=old)
        idx_new, post_new = fit_tissues(prior, y, [3, 24], spread=new)
        np.testing.assert_array_equal(idx_old, idx_new)
        np.testing.assert_array_equal(post_old, post_new)


def test_the_deprecation_warning_names_the_callers_line():
    from brainfm.tasks.segrefine import fit_tissues, refine_indices

    prior = np.array([[0.9, 0.1], [0.2, 0.8]])
    y = np.array([1.0, 5.0])
    for func in (fit_tissues, refine_indices):
        with pytest.warns(DeprecationWarning) as caught:
            func(prior, y, [2, 3], pooled_sigma=True)
        assert [w.filename for w in caught] == [__file__], func.__name__


def test_grouped_prior_filled_in_chunks_is_the_whole():
    from brainfm.tasks.segrefine import GroupedPrior, fit_tissues, present_groups

    rng = np.random.default_rng(1)
    prior = rng.dirichlet(np.ones(len(FS33)), 500).astype(np.float32)
    whole = GroupedPrior.of(prior, FS33)
    groups = present_groups(FS33)
    chunked = GroupedPrior.empty(500, int(groups.max()) + 1, len(FS33))
    for start in range(0, 500, 64):
        chunked.fill(start, prior[start:start + 64], groups)
    for a, b in zip((whole.group, whole.best_log, whole.best_idx), (chunked.group, chunked.best_log, chunked.best_idx)):
        np.testing.assert_array_equal(a, b)
    # the best structure of each group is the most probable one of its channels
    wm = groups[FS33.index(2)]
    cols = np.flatnonzero(groups == wm)
    np.testing.assert_array_equal(whole.best_idx[:, wm], cols[prior[:, cols].argmax(1)])
    y = rng.normal(60, 10, 500)
    np.testing.assert_array_equal(fit_tissues(prior, y, FS33)[0], fit_tissues(GroupedPrior.of(prior, FS33), y, FS33)[0])


def test_groups_follow_tissues_and_unknown_labels_stand_alone():
    g = group_of(FS33)
    assert g[FS33.index(2)] == g[FS33.index(41)] == g[FS33.index(16)]  # white matter and brainstem
    assert g[FS33.index(3)] == g[FS33.index(17)] != g[FS33.index(2)]  # cortex with hippocampus
    assert g[FS33.index(4)] == g[FS33.index(15)] != g[FS33.index(24)]  # the ventricles apart from the CSF
    assert len({g[FS33.index(0)], g[FS33.index(10)], g[FS33.index(13)], g[FS33.index(12)]}) == 4


def test_method_resolution():
    assert resolve_method("auto", coarse_grid=True) == "fit"
    assert resolve_method("auto", coarse_grid=False) == "head"
    assert resolve_method("auto", coarse_grid=True, ct=True) == "head"
    with pytest.raises(InputError, match="seg_method must be one of auto, head, fit"):
        resolve_method("gmm", coarse_grid=True)


def _phantom_context(method, *, keep_logits=True, raw=None, heads=None, dark_pocket=None, pocket_value=20.0, **kw):
    """A ball of white matter in cortex whose image edge lies 3 voxels inside the model's (blurred)
    boundary; logits of the fs33 scheme on the same grid. ``raw`` / ``heads``: more head outputs (a
    function of the radius ``r``) and the tasks they serve; ``kw``: more fields of the context.
    ``dark_pocket``: a mask of voxels that are dark in the image and background to the model."""
    from brainfm.labels import get_scheme

    n = 40
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) - n / 2] * 3, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    head = r < 17
    image = np.where(r < 9, 100.0, np.where(head, 60.0, 0.0)).astype(np.float32)
    logits = np.full((33,) + image.shape, -10.0, np.float32)
    logits[0] = np.where(head, -10.0, 10.0)
    if dark_pocket is not None:
        pocket = dark_pocket(x, y, z, r)
        image[pocket] = pocket_value
        logits[0][pocket] = 10.0
        logits[FS33.index(4)] = np.where(pocket, 7.0, -10.0)  # the ventricle: the model's second choice there
    logits[FS33.index(2)] = np.where(head, (12 - r) / 2.0, -10.0)  # the model's white matter: r < 12
    logits[FS33.index(3)] = np.where(head, 0.0, -10.0)
    outputs = {"segmentation": logits, **{name: make(r) for name, make in (raw or {}).items()}}
    ctx = TaskContext.identity(outputs, image / 100.0, np.eye(4), heads={"seg": "segmentation", **(heads or {})},
                               scheme=get_scheme("fs33"), image_out=image, foreground_out=image > 0,
                               seg_method=method, **kw)
    if not keep_logits:  # the decision was taken while blending: no logits
        ctx.labels = {"segmentation": (np.argmax(logits, 0).astype(np.uint8), 33)}
    return ctx, r


def test_the_shared_label_decision_is_refined_to_the_image(monkeypatch):
    import brainfm.tasks.segmentation as segmentation

    ctx, r = _phantom_context("fit")
    out = run_seg(ctx)
    seg = np.asarray(out["seg"].data)
    monkeypatch.setattr(segmentation, "PRIOR_CHUNK", 999)  # the prior sampled in many chunks: the same labels
    again, _ = _phantom_context("fit")
    again.output_points = GridMapper(np.eye(4), r.shape, np.eye(4), r.shape).points
    np.testing.assert_array_equal(np.asarray(run_seg(again)["seg"].data), seg)
    assert ctx.decided.refined and ctx.seg_method == "fit"
    assert (seg[r < 8.5] == 2).all() and (seg[(r > 9.5) & (r < 16)] == 3).all()  # the image's edge, r = 9
    head, r = _phantom_context("head")
    seg_head = np.asarray(run_seg(head)["seg"].data)
    assert (seg_head[(r > 9.5) & (r < 11.5)] == 2).all() and not head.decided.refined  # the model's, r = 12
    wm = {row["value"]: row["voxels"] for row in ctx.tables["seg_volumes"]}[2]
    assert wm == int((seg == 2).sum()) < int((seg_head == 2).sum())  # the table counts the refined labels
    kept, _ = _phantom_context("fit", keep_logits=False)
    decide(kept)
    assert kept.seg_method == "head" and not kept.decided.refined
    assert kept.warnings[0].startswith("segmentation: the refinement to the scan's intensities was skipped")


def test_enclosed_background_is_the_holes_the_labels_surround():
    from brainfm.tasks.segrefine import enclosed

    bg = np.ones((12, 12, 12), bool)
    bg[2:10, 2:10, 2:10] = False  # the labelled brain
    bg[4:6, 4:6, 4:6] = True  # a hole inside it
    bg[7:9, 7:9, 7:12] = True  # a channel that opens to the border of the array: outside
    np.testing.assert_array_equal(np.argwhere(enclosed(bg)), np.argwhere(np.pad(np.ones((2, 2, 2), bool), 4)[:12, :12, :12]))
    inner = np.zeros((12, 12, 12), bool)  # no component touches the border: the largest is the outside
    inner[1:11, 1:11, 1:11] = True
    inner[3:9, 3:9, 3:9] = False
    inner[5, 5, 5] = True
    assert np.argwhere(enclosed(inner)).tolist() == [[5, 5, 5]]
    assert not enclosed(np.zeros((4, 4, 4), bool)).any() and not enclosed(np.ones((4, 4, 4), bool)).any()


@pytest.mark.parametrize("method", ["fit", "head"])
def test_background_inside_the_brain_is_labelled_but_not_where_it_reaches_outside(method):
    """A dark pocket the model took for background: inside the brain it gets a structure (the model's
    second choice there, which the refinement keeps: dark like fluid); the same pocket with a channel to
    the outside stays background. The refined labels and the model's own follow the same rule."""
    ball = lambda x, y, z, r: r < 3  # noqa: E731
    ctx, r = _phantom_context(method, dark_pocket=ball)
    seg = np.asarray(run_seg(ctx)["seg"].data)
    assert (seg[r < 16] != 0).all() and (seg[r >= 17] == 0).all()
    assert (seg[r < 2.5] == 4).all()  # the ventricle, not white matter or cortex
    tube = lambda x, y, z, r: (r < 3) | ((np.abs(y) < 1.5) & (np.abs(z) < 1.5) & (x > 0))  # noqa: E731
    open_ctx, r = _phantom_context(method, dark_pocket=tube)
    seg = np.asarray(run_seg(open_ctx)["seg"].data)
    assert (seg[r < 2.5] == 0).all() and (seg[(r > 4) & (r < 16)] != 0).any()
    # a pocket of zeros in a masked (skull-stripped) input is outside its foreground: never labelled
    masked, r = _phantom_context(method, dark_pocket=ball, pocket_value=0.0)
    seg = np.asarray(run_seg(masked)["seg"].data)
    assert (seg[r < 3] == 0).all() and (seg[(r > 3.5) & (r < 16)] != 0).all()


def test_background_the_refinement_leaves_inside_gets_the_next_tissue():
    from brainfm.tasks.segmentation import _close_holes

    lut = np.asarray([0, 2, 4, 0], np.int32)  # channels: background, white matter, ventricle; outside
    idx = np.full((7, 7, 7), 3, np.uint8)
    idx[1:6, 1:6, 1:6] = 1
    idx[3, 3, 3] = 0  # the refinement chose background inside the white matter
    idx[1, 1, 1] = 0  # at the brain's edge, next to the outside: stays
    labelled = lut[idx] != 0
    labelled[3, 3, 3] = labelled[1, 1, 1] = True
    n = int(labelled.sum())
    posteriors = np.tile(np.asarray([[0.1, 0.6, 0.3]], np.float32), (n, 1))  # groups: wm, bg, fluid
    best_idx = np.tile(np.asarray([[1, 0, 2]], np.uint8), (n, 1))
    _close_holes(idx, labelled, lut, posteriors, best_idx, bg_group=1)
    assert idx[3, 3, 3] == 2 and idx[1, 1, 1] == 0  # the fluid: the most probable group but background


@pytest.mark.slow
def test_labels_decided_while_blending_get_the_nearest_structure_in_their_holes(tmp_path, monkeypatch):
    """A 1 mm model decides its labels while the tiles are blended and keeps no logits: background that
    its labels surround gets the nearest structure; background that reaches the outside stays."""
    from ckpt_factory import write_native

    import brainfm.inference.predictor as predictor_module
    from brainfm.inference import Predictor
    from brainfm.labels import decide_scheme
    from brainfm.models import load_model
    from brainfm.volume import Volume

    fs_values = list(decide_scheme("fs33", n_channels=33).fs_values)
    bg, wm, ctx_ch = fs_values.index(0), fs_values.index(2), fs_values.index(3)
    real = predictor_module.run_with_fallback
    seen = {}

    def crafted(net, image, **kw):
        raw, used = real(net, image, **kw)
        idx = np.full(image.shape, wm, np.uint8)          # white matter over the network grid ...
        idx[:, : image.shape[1] // 2] = ctx_ch             # ... and cortex in one half
        c = np.asarray(image.shape) // 2
        idx[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3] = bg   # a pocket inside,
        idx[c[0] - 2:c[0] + 3, c[1] + 1:c[1] + 3, c[2] - 2:c[2] + 3] = bg   # reaching into white matter
        idx[[0, -1]], idx[:, [0, -1]], idx[:, :, [0, -1]] = bg, bg, bg   # and the outside, on the border
        seen["kind"] = raw["segmentation"].dtype
        raw["segmentation"] = idx
        return raw, used

    monkeypatch.setattr(predictor_module, "run_with_fallback", crafted)
    _, weights, _ = write_native(tmp_path / "one_mm", heads={"segmentation": 33})
    x, y, z = np.meshgrid(*[np.arange(32.0) - 15.5] * 3, indexing="ij")
    image = Volume(np.where(x ** 2 + y ** 2 + z ** 2 < 14 ** 2, 100.0, 0.0).astype(np.float32), np.eye(4))
    seg = np.asarray(Predictor(load_model(weights), device="cpu").predict(image, tasks=["seg"])["seg"].data)
    assert seen["kind"] == np.uint8  # the labels were decided while blending (no logits kept)
    centre = seg[14:18, 14:18, 14:18]
    assert (centre != 0).all() and set(np.unique(centre)) <= {2, 3}
    assert np.count_nonzero(seg) == np.count_nonzero(image.data)  # labels everywhere in the head, nowhere else


def test_bundled_model_refined_labels_agree_with_freesurfer_better(shared_data, bundled_predictor):
    """The real T1 of the quality level (merged-17 Dice against its FreeSurfer aseg)."""
    from brainfm.evaluation import datasets
    from brainfm.evaluation.segmentation import dice_report

    predictor = bundled_predictor
    image = datasets.load(shared_data, "voxelmorph_vol")
    truth = np.asarray(datasets.load_labels(shared_data, "voxelmorph_seg").data)
    auto = predictor.predict(image, tasks=["seg"])
    head = predictor.predict(image, tasks=["seg"], seg_method="head")
    assert auto.metadata["seg_method"] == "model head refined to the scan's intensities"
    assert head.metadata["seg_method"] == "model head"
    d_auto = dice_report(np.asarray(auto["seg"].data), truth)["mean_merged17"]
    d_head = dice_report(np.asarray(head["seg"].data), truth)["mean_merged17"]
    assert d_auto > d_head + 0.03  # 0.801 against 0.749 at step 19,665
