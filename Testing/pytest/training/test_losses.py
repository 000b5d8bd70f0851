"""Losses, objectives, schedule and config: values checked against hand computations."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from brainfm.errors import InputError
from brainfm.training import losses as L
from brainfm.training.config import LossSection, TrainConfig, apply_overrides, load_config
from brainfm.training.objectives import BrainFMObjective, ContrastiveTerm, build_objective
from brainfm.training.optim import build_optimizer, lr_factor


def test_image_and_gradient_losses():
    x = torch.zeros(1, 1, 3, 4, 5)
    ramp = torch.arange(3.0).view(1, 1, 3, 1, 1).expand(1, 1, 3, 4, 5)
    assert float(L.l1_loss(ramp, x)) == pytest.approx(1.0)
    # only axis 0 varies, by 1 per voxel: the valid-difference gradient loss is exactly 1 (the
    # reference's zeroed last slice would give 2/3)
    assert float(L.gradient_l1_loss(ramp, x)) == pytest.approx(1.0)
    assert float(L.gradient_l1_loss(ramp + 5.0, ramp)) == 0.0  # offsets do not matter
    w = torch.zeros_like(x)
    w[..., :2, :, :] = 1
    assert float(L.l1_loss(ramp, x, w)) == pytest.approx(0.5)  # mean of 0 and 1 over the weighted voxels


def test_masked_mse_averages_over_the_mask():
    p, t = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    p[0, 0, 0] = 2.0
    m = torch.zeros_like(p, dtype=torch.bool)
    m[0, 0, 0] = True
    assert float(L.masked_mse(p, t, m)) == pytest.approx(4.0)
    assert float(L.masked_mse(p, t, None)) == pytest.approx(2.0)


def test_dice_and_cross_entropy():
    t = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    t[:, :2] = 1
    t[:, 3] = 2
    logits = F.one_hot(t, 4).movedim(-1, 1).float() * 100
    assert float(L.soft_dice_loss(logits, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.cross_entropy_loss(logits, t)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, 4, 4, 4, 4)
    assert float(L.cross_entropy_loss(uniform, t)) == pytest.approx(math.log(4))
    # uniform prediction: class c with n_c voxels gets dice 2*(n_c/4)/(n_c/4*... ) -> hand value
    n = torch.tensor([16.0, 32.0, 16.0])  # voxels of classes 0, 1, 2 per sample
    dice = 2 * (n / 4) / (64 / 4 + n)
    assert float(L.soft_dice_loss(uniform, t)) == pytest.approx(float((1 - dice).mean()), rel=1e-5)


def _one_hot_reference(logits, t, eps=1e-5):
    """Cross-entropy and soft Dice written out with a one-hot volume (the textbook form)."""
    p = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(t, logits.shape[1]).movedim(-1, 1).float()
    ce = -(torch.log(p) * onehot).sum(1).mean()
    dims = (2, 3, 4)
    dice = 2 * (p * onehot).sum(dims) / ((p + onehot).sum(dims)).clamp_min(eps)
    present = (onehot.sum(dims) > 0).float()
    return ce, (((1 - dice) * present).sum(1) / present.sum(1)).mean()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_bf16"])
def test_segmentation_losses_match_the_one_hot_form_in_value_and_gradient(layout):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 6, 5, 4, generator=g) * 3
    t = torch.randint(0, 6, (2, 6, 5, 4), generator=g)  # class 6 absent: not averaged in
    if layout != "contiguous":
        logits = logits.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    a = logits.detach().clone().requires_grad_(True)
    b = logits.detach().clone().requires_grad_(True)
    ce, dice = L.segmentation_losses(a, t[:, None])  # (N,1,...) targets as the generator gives them
    ce_ref, dice_ref = _one_hot_reference(b, t)
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert dice.item() == pytest.approx(dice_ref.item(), rel=1e-5)
    assert L.soft_dice_loss(logits, t).item() == pytest.approx(dice_ref.item(), rel=1e-5)
    (ce + 0.7 * dice).backward()
    (ce_ref + 0.7 * dice_ref).backward()
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=2e-2 if layout != "contiguous" else 1e-4,
                               atol=1e-7 if layout == "contiguous" else 1e-5)


def test_contrastive_losses_prefer_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    other = torch.randn(32, 16, generator=g)
    assert float(L.nt_xent_loss(z, z + 0.01 * other)) < float(L.nt_xent_loss(z, other))
    # chance level of NT-Xent with 2K-1 candidates is log(2K-1)
    big = torch.randn(512, 64, generator=g)
    assert float(L.nt_xent_loss(big, torch.randn(512, 64, generator=g))) == pytest.approx(math.log(1023), rel=0.05)
    f = torch.randn(8, 400, generator=g)
    assert float(L.cifl_loss(f, f)) < float(L.cifl_loss(f, torch.randn(8, 400, generator=g)))
    feat = torch.randn(2, 8, 6, 6, 6, generator=g)
    for kind in ("simclr", "cifl"):
        term = ContrastiveTerm(kind, n_voxels=100)
        same = torch.stack([feat[0], feat[0]])
        assert float(term(same, generator=torch.Generator().manual_seed(1))) < float(
            term(feat, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="n_samples >= 2"):
        ContrastiveTerm("simclr")(feat[:1])


def test_brainfm_objective_broadcasts_and_skips_missing_targets():
    n, s = 2, 6
    batch = SimpleNamespace(inputs=torch.rand(n, 1, s, s, s), targets={
        "T1": torch.rand(1, 1, s, s, s), "segmentation": torch.randint(0, 33, (1, s, s, s)),
        "bias_field_log": torch.rand(n, 1, s, s, s), "brain_mask": torch.ones(1, 1, s, s, s, dtype=torch.bool)})
    out = {"T1": torch.zeros(n, 1, s, s, s), "CT": torch.zeros(n, 1, s, s, s),
           "segmentation": torch.zeros(n, 33, s, s, s), "bias_field_log": torch.zeros(n, 1, s, s, s)}
    obj = BrainFMObjective({"seg_ce": 2.0})
    total, parts = obj(out, batch)
    assert set(parts) == {"T1", "T1_grad", "seg_ce", "seg_dice", "bias_field_log"}  # no CT target
    assert float(parts["T1"]) == pytest.approx(float(batch.targets["T1"].mean()), rel=1e-6)
    assert float(parts["seg_ce"]) == pytest.approx(math.log(33), rel=1e-6)
    expected = sum(float(v) for k, v in parts.items()) + float(parts["seg_ce"])  # seg_ce weighted 2
    assert float(total) == pytest.approx(expected, rel=1e-6)
    bad = dict(out, segmentation=torch.zeros(n, 4, s, s, s))
    with pytest.raises(ValueError, match="label scheme mismatch"):
        obj(bad, batch)
    comb = build_objective(LossSection(contrastive="simclr", contrast_voxels=50))
    out["feat"] = torch.randn(n, 4, s, s, s)
    t2, p2 = comb(out, batch, generator=torch.Generator().manual_seed(0))
    assert "contrastive" in p2 and float(t2) > float(total) - float(parts["seg_ce"])


def test_brainid_objective_uses_the_anatomy_head():
    s = 6
    t1 = torch.rand(1, 1, s, s, s)
    batch = SimpleNamespace(inputs=torch.rand(2, 1, s, s, s), targets={"T1": t1})
    obj = build_objective(LossSection(objective="brainid"))
    total, parts = obj({"image": t1.expand(2, -1, -1, -1, -1) + 0.5, "feat": torch.rand(2, 4, s, s, s)}, batch)
    assert set(parts) == {"anat", "anat_grad"}
    assert float(parts["anat"]) == pytest.approx(0.5) and float(parts["anat_grad"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="needs head"):
        obj({"segmentation": torch.zeros(2, 33, s, s, s)}, batch)


def test_schedule_and_optimizer():
    assert [lr_factor(s, warmup_steps=3, lr_drops=[5, 8], drop_factor=0.5) for s in (0, 1, 2, 4, 5, 8)] == \
        pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.5, 0.25])
    net = torch.nn.Linear(2, 1)
    net.bias.requires_grad = False
    opt, sched = build_optimizer(net.parameters(), lr=0.1, warmup_steps=2)
    assert len(opt.param_groups[0]["params"]) == 1  # frozen parameters are not optimised
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1])


def test_config_files_and_overrides(tmp_path):
    from pathlib import Path

    train_dir = Path(__file__).resolve().parents[3] / "Training" / "configs"
    pre = load_config(train_dir / "pretrain.yaml")
    assert (pre.model.f_maps, pre.model.num_levels, pre.model.heads["segmentation"]) == (16, 5, 33)
    cont = load_config(train_dir / "continue.yaml", ["optim.lr=3e-5"])
    assert cont.model == pre.model and cont.optim.lr == 3e-5 and cont.optim.warmup_steps == 50
    smoke = load_config(train_dir / "smoke.yaml")
    assert smoke.generator.size == 24 and smoke.run.max_steps == 4
    with pytest.raises(InputError, match="unknown config key 'optim.learning_rate'"):
        apply_overrides(TrainConfig(), ["optim.learning_rate=1"])
    with pytest.raises(InputError, match="must be int"):
        apply_overrides(TrainConfig(), ["generator.size=big"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_validation_metrics_are_the_evaluation_metrics():
    """Training validation's Dice and PSNR are brainfm.metrics' (the evaluation table's), unrounded:
    classes absent from the target are skipped, even when predicted."""
    import numpy as np

    from brainfm.evaluation.metrics import dice_per_label as eval_dice, psnr_masked as eval_psnr
    from brainfm.training.evaluate import dice_scores, psnr

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, (9, 8, 7))
    p = np.where(rng.random(t.shape) < 0.3, rng.integers(0, 6, t.shape), t)  # classes 4, 5 only predicted
    got = dice_scores(torch.from_numpy(p), torch.from_numpy(t), n_classes=6)
    assert sorted(got) == [1, 2, 3]
    ref = eval_dice(p, t, labels=[1, 2, 3], ndigits=None)
    assert got == ref and all(round(v, 6) == r for v, r in zip(got.values(), eval_dice(p, t).values()))
    assert sorted(dice_scores(torch.from_numpy(p), torch.from_numpy(t), n_classes=6, ignore_background=False)) == [0, 1, 2, 3]
    x, y = rng.random((5, 6, 7)).astype(np.float32), rng.random((5, 6, 7)).astype(np.float32)
    assert psnr(torch.from_numpy(x), torch.from_numpy(y), data_range=2.0) == eval_psnr(x, y, data_range=2.0, ndigits=None)
    assert round(psnr(torch.from_numpy(x), torch.from_numpy(y), data_range=2.0), 4) == eval_psnr(x, y, data_range=2.0)
    assert psnr(torch.from_numpy(x), torch.from_numpy(x)) == float("inf")


def test_metrics_and_cross_scheme_class_map():
    from brainfm.labels import get_scheme
    from brainfm.training.evaluate import class_map_to, dice_scores, evaluate_batches, psnr

    assert psnr(torch.zeros(8), torch.full((8,), 0.01)) == pytest.approx(40.0)
    p = torch.tensor([0, 1, 1, 2])
    assert dice_scores(p, torch.tensor([0, 1, 2, 2]), n_classes=3) == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    b56, f33 = get_scheme("brainfm56"), get_scheme("fs33")
    m = class_map_to("fs33", 56)
    hip = b56.fs_values.index(17)  # Left-Hippocampus
    assert f33.fs_values[int(m[hip])] == 17
    assert class_map_to("fs33", 33) is None
    # a "model" that outputs the perfect fs33 segmentation through the 56-channel scheme
    s = 6
    tgt = torch.zeros(1, s, s, s, dtype=torch.long)
    tgt[:, :3] = f33.fs_values.index(17)

    class Perfect56(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 56, s, s, s)
            logits[:, b56.fs_values.index(0)] = 1.0
            logits[:, hip, :3] = 5.0
            return {"segmentation": logits}

    batch = SimpleNamespace(inputs=torch.rand(1, 1, s, s, s), targets={"segmentation": tgt})
    assert evaluate_batches(Perfect56(), [batch], class_map=m)["dice"] == pytest.approx(1.0)
