"""What foreground sampling does to a new segmentation head's class priors, and taking it back: the
predicted log ratio is the one the sampler produces; the share taken back is the one the images' Dice
prefers; the exported network carries it and the training network does not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brainfm.models import BrainFMNet, ModelConfig
from brainfm.training.feature_cache import CachedFeatureSource, HeadOnlyNet
from brainfm.training.prior_shift import PRIOR_WEIGHTS, PriorShift, sampling_log_ratio


def _targets():
    a = np.zeros((20, 22, 18), np.int64)
    a[3:6, 4:7, 5:8] = 1          # 27 voxels of class 1
    a[10:12, 10:12, 10:12] = 2    # 8 of class 2
    b = np.zeros((16, 20, 18), np.int64)
    b[2:10, 2:10, 2:10] = 1       # 512 voxels of class 1, no class 2
    return [a, b]


def test_the_predicted_log_ratio_is_what_the_sampler_draws():
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 4}))
    rng = np.random.default_rng(0)
    targets = _targets()
    pairs = [(rng.random(t.shape).astype(np.float32), t) for t in targets]
    src = CachedFeatureSource(net.backbone, pairs, n_samples=2, voxels=4000, foreground_share=0.2, gammas=(1.0,))
    counts = np.zeros(4)
    for step in range(1000):
        counts += np.bincount(src.batch(step).targets["segmentation"].reshape(-1).numpy(), minlength=4)[:4]
    true = np.mean([np.bincount(t.ravel(), minlength=4)[:4] / t.size for t in targets], axis=0)
    seen = np.log(counts[:3] / counts.sum() / true[:3])
    predicted = src.sampling_log_ratio(4).numpy()
    np.testing.assert_allclose(seen, predicted[:3], atol=0.06)
    assert predicted[1] > 1.0 and predicted[2] > 2.0 and predicted[0] < 0   # labelled classes over-drawn
    assert predicted[3] == 0.0   # a class no image has: nothing to take back
    none = sampling_log_ratio([torch.from_numpy(t) for t in targets], n_classes=4, foreground_share=0.0)
    assert torch.equal(none, torch.zeros(4))


def _separable(shift_up: float, *, overlap: float):
    """A 1x1x1 head on a 2-channel "feature" whose second channel is the label plus noise (``overlap``),
    its label logit raised by ``shift_up`` (as foreground sampling raises it); and the images."""
    g = torch.Generator().manual_seed(1)
    truth = torch.zeros(24, 24, 24, dtype=torch.long)
    truth[8:14, 8:14, 8:14] = 1
    feat = torch.stack([torch.rand(truth.shape, generator=g),
                        truth.float() + overlap * torch.randn(truth.shape, generator=g)])
    net = BrainFMNet(ModelConfig(in_channels=1, f_maps=2, num_levels=2, num_groups=1, heads={"segmentation": 2}))
    head = net.head.final_conv_segmentation
    prior = float(torch.log((truth == 1).float().mean() / (truth == 0).float().mean()))
    with torch.no_grad():   # logit(label) - logit(background): the true log posterior ratio, + shift_up
        head.weight.zero_()
        head.weight[1, 1] = 1 / overlap ** 2
        head.bias.copy_(torch.tensor([0.0, -0.5 / overlap ** 2 + prior + shift_up]))
    return net, [(feat, truth)]


def test_a_head_that_over_predicts_by_the_sampling_s_ratio_gets_it_taken_back_and_a_calibrated_one_is_left():
    ratio = torch.tensor([0.0, 3.0])
    net, images = _separable(3.0, overlap=0.3)
    shift = PriorShift("segmentation", ratio, images)
    plain = HeadOnlyNet(net, heads=["segmentation"])
    before = net.head.final_conv_segmentation.bias.clone()
    w = shift.apply(plain)   # Dice favours finding a little more than the true priors would: 3/4 of it
    assert w >= 0.75 and shift.dice[w] == max(shift.dice.values()) and shift.dice[w] > shift.dice[0.0] + 0.05
    assert torch.allclose(net.head.final_conv_segmentation.bias, before - w * torch.tensor([0.0, 3.0]))
    calibrated, images = _separable(0.0, overlap=0.3)
    assert PriorShift("segmentation", ratio, images).apply(HeadOnlyNet(calibrated, heads=["segmentation"])) == 0.0


def test_the_exported_network_takes_the_priors_back_and_the_training_network_keeps_learning_as_it_was():
    net, images = _separable(3.0, overlap=0.3)
    shift = PriorShift("segmentation", torch.tensor([0.0, 3.0]), images)
    feat = images[0][0][None]
    mean, std = feat.mean((0, 2, 3, 4)), feat.std((0, 2, 3, 4))
    training = HeadOnlyNet(net, heads=["segmentation"], standardise=(mean, std), calibration=shift)
    state = {k: v.clone() for k, v in training.state_dict().items()}
    exported = training.plain()
    assert all(torch.equal(v, training.state_dict()[k]) for k, v in state.items())   # the training weights as they were
    assert shift.weight >= 0.75
    with torch.no_grad():
        got = exported(feat)["segmentation"]
        want = training(feat)["segmentation"] - shift.weight * torch.tensor([0.0, 3.0]).view(1, 2, 1, 1, 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert PRIOR_WEIGHTS[0] == 0.0 and PRIOR_WEIGHTS[-1] == 1.0


def test_fine_tuning_with_foreground_sampling_exports_a_head_with_its_priors_chosen(tmp_path):
    """End to end: ``finetune`` with foreground sampling exports the trained head minus the chosen share of
    the ratio; without foreground sampling nothing is taken back."""
    import nibabel as nib

    from brainfm.models import load_model, save_native
    from brainfm.training.finetune import finetune
    from fixtures import GEOMETRY_CASES, blob_head, label_head

    shape = (30, 34, 28)
    root = tmp_path / "data"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        nib.save(nib.Nifti1Image(blob_head(shape, seed=i).data, GEOMETRY_CASES["oblique"]), str(root / "images" / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label_head(shape).astype(np.int16), GEOMETRY_CASES["oblique"]),
                 str(root / "labels" / f"s{i}.nii.gz"))
    torch.manual_seed(0)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 33}))
    weights, _ = save_native(base, tmp_path / "base" / "toy", info={"name": "toy", "label_scheme": "fs33"})
    made = []
    import brainfm.training.prior_shift as prior_shift

    original = prior_shift.PriorShift.apply

    def recording(self, net, **kw):
        w = original(self, net, **kw)
        made.append((self, w, net.head.final_conv_segmentation.bias.detach().clone()))
        return w

    mp = pytest.MonkeyPatch()
    mp.setattr(prior_shift.PriorShift, "apply", recording)
    try:
        res = finetune(str(weights), root, tmp_path / "ft", task="seg", steps=20, size=16, n_samples=1,
                       device="cpu", foreground_share=0.2)
        none = finetune(str(weights), root, tmp_path / "ft0", task="seg", steps=5, size=16, n_samples=1,
                        device="cpu", foreground_share=0.0)
    finally:
        mp.undo()
    assert made and none.native_model is not None
    shift, w, bias = made[-1]          # the last choice is the exported one
    assert w in PRIOR_WEIGHTS and shift.dice[w] == max(shift.dice.values())
    assert res.prior_weight == w and none.prior_weight is None
    loaded = load_model(res.native_model)
    exported = loaded.net.head.final_conv_segmentation.bias
    torch.testing.assert_close(exported.float(), bias.float(), atol=2e-3, rtol=2e-3)   # fp16 export
    priors = loaded.info.provenance["label_priors"]     # the model says what was taken back, and why
    assert priors["weight"] == w and set(priors["dice"]) == {str(x) for x in PRIOR_WEIGHTS}
    assert priors["measured_on"] == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]   # 3 pairs: no validation scan
    assert "label_priors" not in (load_model(none.native_model).info.provenance or {})
    assert len(made) == len([m for m in made if m[0] is shift])   # the run without sampling chose nothing


def test_scan_dice_scores_the_labels_the_product_makes_of_the_scans(tmp_path):
    """:class:`ScanDice` is the Dice of what the Predictor makes of the scan with the shifted head, the
    labels file read on the scan's grid (here stored flipped, LPS), and the head's biases are left as
    they were."""
    import nibabel as nib

    from brainfm.inference import Predictor
    from brainfm.labels import get_scheme
    from brainfm.models.common import LoadedModel
    from brainfm.training.export import native_info
    from brainfm.training.prior_shift import ScanDice
    from fixtures import GEOMETRY_CASES, blob_head, label_head

    shape = (30, 34, 28)
    aff = GEOMETRY_CASES["oblique"]
    nib.save(nib.Nifti1Image(blob_head(shape, seed=3).data, aff), str(tmp_path / "scan.nii.gz"))
    labels = label_head(shape)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    nib.save(nib.Nifti1Image(labels[::-1, ::-1].astype(np.int16), aff @ flip), str(tmp_path / "labels.nii.gz"))
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 33})).eval()
    scheme = get_scheme("fs33")
    info = native_info(net, inherit={"label_scheme": "fs33"})
    conv = net.head.final_conv_segmentation
    before = conv.bias.detach().clone()
    wm = scheme.fs_values.index(2)
    force_wm = torch.zeros(33)
    force_wm[wm] = -100.0                       # white matter everywhere in the head
    nothing = torch.full((33,), 100.0)
    nothing[0] = 0.0                            # no label at all
    shifts = [torch.zeros(33), force_wm, nothing]
    heard = []
    got = ScanDice([(tmp_path / "scan.nii.gz", tmp_path / "labels.nii.gz")], scheme=scheme, info=info,
                   progress=lambda f, m: heard.append((f, m)))(net, "segmentation", shifts)
    assert torch.equal(conv.bias, before)
    assert [f for f, _ in heard] == pytest.approx([0, 1 / 3, 2 / 3]) and "scan.nii.gz, 3 of 3" in heard[-1][1]
    present = [v for v in np.unique(labels) if v and v in scheme.fs_values]
    for shift, dice in zip(shifts, got):
        with torch.no_grad():
            conv.bias.copy_(before - shift)
        seg = np.asarray(Predictor(LoadedModel(net, info), device="cpu").predict(
            str(tmp_path / "scan.nii.gz"), tasks=["seg"])["seg"].data)
        want = np.mean([2 * np.sum((seg == v) & (labels == v)) / max(1, np.sum(seg == v) + np.sum(labels == v))
                        for v in present])
        assert dice == pytest.approx(want, abs=1e-9)
    assert got[2] == 0.0 and got[1] > 0.0      # nothing labelled: 0; white matter everywhere: its Dice only


def test_the_share_is_chosen_on_the_validation_scans_else_on_the_first_training_scans():
    from brainfm.labels import get_scheme
    from brainfm.training.finetune import calibration_scans
    from brainfm.training.prior_shift import MAX_SCANS

    pairs = [(f"i{n}.nii.gz", f"l{n}.nii.gz") for n in range(6)]
    scheme = get_scheme("fs33")
    pick = lambda n, n_val: [a.name for a, _ in calibration_scans(pairs[:n], n_val=n_val, scheme=scheme, info=None).pairs]  # noqa: E731
    assert pick(6, 1) == ["i5.nii.gz"] and pick(6, 2) == ["i4.nii.gz", "i5.nii.gz"]
    assert pick(3, 0) == ["i0.nii.gz", "i1.nii.gz", "i2.nii.gz"]
    assert pick(6, 0) == [f"i{n}.nii.gz" for n in range(MAX_SCANS)] and MAX_SCANS == 4
    assert pick(1, 1) == ["i0.nii.gz"]        # one pair: it trains, and is where the share is chosen
