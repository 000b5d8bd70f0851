"""Head-mode fine-tuning on cached features: the same features inference computes, the same exported
network, a learning head, resumable, and the per-step path when the features do not fit in memory."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from fixtures import GEOMETRY_CASES, blob_head, label_head
from brainfm.models import BrainFMNet, ModelConfig, load_model, save_native
from brainfm.training.feature_cache import GAMMAS, CachedFeatureSource, HeadOnlyNet, image_features
from brainfm.training.finetune import finetune

SHAPE = (30, 34, 28)


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    aff = GEOMETRY_CASES["oblique"]
    for i in range(3):
        nib.save(nib.Nifti1Image(blob_head(SHAPE, seed=i).data, aff), str(root / "images" / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label_head(SHAPE).astype(np.int16), aff), str(root / "labels" / f"s{i}.nii.gz"))
    return root


def _base_weights(tmp_path):
    torch.manual_seed(0)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False,
                                  heads={"image": 1, "segmentation": 33}))
    weights, _ = save_native(base, tmp_path / "base" / "toy", info={"name": "toy", "label_scheme": "fs33"})
    return base, weights


def test_cached_batches_are_the_backbone_features_of_the_whole_image_and_their_labels():
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 3}))
    rng = np.random.default_rng(0)
    x = rng.random((20, 22, 18)).astype(np.float32)
    t = rng.integers(0, 3, x.shape)
    whole = {g: image_features(net.backbone, x ** np.float32(g), device=torch.device("cpu")) for g in GAMMAS}
    with torch.no_grad():
        direct = net.backbone(torch.from_numpy(x)[None, None])[0]
    torch.testing.assert_close(whole[1.0].float(), direct, atol=2e-3, rtol=2e-3)  # stored in float16
    assert not torch.equal(whole[GAMMAS[0]], whole[GAMMAS[2]])  # three intensity variants

    # segmentation: random voxels of the whole image, each with its own label
    src = CachedFeatureSource(net.backbone, [(x, t)], [(x, t)], n_samples=2, voxels=500)
    flat = {g: w.float().reshape(4, -1) for g, w in whole.items()}
    labels = torch.from_numpy(t).reshape(-1)
    for step in range(3):
        b = src.batch(step)
        assert tuple(b.inputs.shape) == (2, 4, 500, 1, 1) and b.inputs.dtype == torch.float32
        for n in range(2):
            cols, tgt = b.inputs[n, :, :, 0, 0], b.targets["segmentation"][n, :, 0, 0]
            g = next(g for g in GAMMAS if (flat[g] == cols[:, :1]).all(0).any())  # one variant per sample
            for v in range(0, 500, 50):
                at = torch.nonzero((flat[g] == cols[:, v:v + 1]).all(0)).ravel()
                assert len(at) >= 1 and int(tgt[v]) in set(labels[at].tolist())
    val = list(src.val_batches())
    assert len(val) == 1 and torch.equal(val[0].inputs[0], whole[1.0].float())  # all voxels, gamma 1
    assert torch.equal(val[0].targets["segmentation"][0], torch.from_numpy(t).long())

    # an image head's loss compares neighbours: crops of the features and of the target image
    img = CachedFeatureSource(net.backbone, [(x, x)], task="image", target_key="T1", size=8, n_samples=1)
    b = img.batch(3)
    assert tuple(b.inputs.shape) == (1, 4, 8, 8, 8) and tuple(b.targets["T1"].shape) == (1, 1, 8, 8, 8)
    hits = [(i, j, k) for i in range(13) for j in range(15) for k in range(11)
            if any(torch.equal(b.inputs[0], w.float()[:, i:i + 8, j:j + 8, k:k + 8]) for w in whole.values())]
    assert len(hits) == 1
    i, j, k = hits[0]
    assert torch.equal(b.targets["T1"][0, 0], torch.from_numpy(x[i:i + 8, j:j + 8, k:k + 8]))



def _nearest(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Distance from each of ``values`` to the nearest element of ``pool``."""
    pool = np.sort(pool.astype(np.float64))
    i = np.clip(np.searchsorted(pool, values), 1, len(pool) - 1)
    return np.minimum(np.abs(values - pool[i - 1]), np.abs(values - pool[i]))


def test_a_third_of_every_segmentation_sample_is_drawn_from_the_labelled_voxels_and_the_image_can_ride_along():
    """A label the user drew on a thousandth of the image (a lesion) still fills about a third of each
    sample (``foreground_share``); 0 gives uniform voxels. ``with_image``: the image's channel follows the
    feature, the one that was computed from it (its gamma variant), and ``HeadOnlyNet`` splits them."""
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 2},
                                 head_image=["segmentation"]))
    rng = np.random.default_rng(0)
    x = rng.random((20, 22, 18)).astype(np.float32)
    t = np.zeros(x.shape, np.int64)
    t[3:5, 4:6, 5:7] = 1   # 8 of 7920 voxels
    shares = {}
    for share in (0.0, 1 / 3):
        src = CachedFeatureSource(net.backbone, [(x, t)], n_samples=2, voxels=3000, foreground_share=share,
                                  with_image=True)
        b = src.batch(0)
        assert tuple(b.inputs.shape) == (2, 5, 3000, 1, 1)
        shares[share] = float((b.targets["segmentation"] == 1).float().mean())
        for n in range(2):   # the last channel is the voxel's own intensity in one of the gamma variants
            raw = b.inputs[n, 4, :, 0, 0].double().numpy()
            assert any(_nearest(raw, x.ravel() ** g).max() < 1e-3 for g in GAMMAS)   # float16 storage
    assert shares[0.0] < 0.01 and 0.3 < shares[1 / 3] < 0.37
    head_only = HeadOnlyNet(net, heads=["segmentation"])
    feat = torch.rand(1, 5, 6, 6, 6)
    with torch.no_grad():
        out = head_only(feat)
        want = net.head(feat[:, :4], names=["segmentation"], image=feat[:, 4:])["segmentation"]
    assert torch.equal(out["segmentation"], want) and tuple(out["feat"].shape) == (1, 4, 6, 6, 6)

def test_head_only_net_trains_the_head_of_the_full_network():
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T1": 1, "segmentation": 3}))
    h = HeadOnlyNet(net, heads=["segmentation"])
    feat = torch.rand(1, 4, 6, 6, 6)
    out = h(feat)
    assert sorted(out) == ["feat", "segmentation"]
    out["segmentation"].sum().backward()
    assert net.head.final_conv_segmentation.weight.grad is not None  # the same parameters, not a copy


def test_fine_tuning_on_cached_features_learns_exports_the_full_network_and_resumes(data_dir, tmp_path):
    base, weights = _base_weights(tmp_path)
    seen = []
    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=30, size=24,
                   n_samples=1, lr=0.05, device="cpu", progress=lambda f, m: seen.append((f, m)))
    assert any("features cached" in m for _, m in seen)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # one bar: the features, then the steps
    assert all(f <= 0.2 for f, m in seen if "features" in m)
    assert np.mean(res.losses[-5:]) < 0.7 * np.mean(res.losses[:5])  # the head learns
    assert "dice" not in res.val  # three pairs: all of them train, none is held out
    tuned = load_model(res.native_model).net.state_dict()
    for k, v in base.state_dict().items():  # backbone and the other heads untouched
        if not k.startswith("head.final_conv_segmentation."):
            assert torch.equal(tuned[k], v), k
    assert not torch.equal(tuned["head.final_conv_segmentation.weight"],
                           base.state_dict()["head.final_conv_segmentation.weight"])
    more = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=35, size=24,
                    n_samples=1, lr=0.05, device="cpu")
    assert more.step == 35 and len(more.losses) == 5  # resumed from step 30


def test_without_room_for_the_features_every_step_runs_the_backbone(data_dir, tmp_path, monkeypatch):
    import brainfm.inference.device as device

    _base, weights = _base_weights(tmp_path)
    monkeypatch.setattr(device, "available_memory_bytes", lambda _dev: 1000)
    seen = []
    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=2, size=16,
                   n_samples=1, lr=0.01, device="cpu", progress=lambda f, m: seen.append(m))
    assert any("do not fit in memory" in m for m in seen) and not any("features cached" in m for m in seen)
    assert res.step == 2 and res.native_model is not None


def test_channel_stats_are_the_mean_and_spread_of_each_cached_channel_of_the_training_images():
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 2},
                                 head_image=["segmentation"]))
    rng = np.random.default_rng(1)
    images = [(rng.random((16, 18, 20)).astype(np.float32), np.zeros((16, 18, 20), np.int64)) for _ in range(2)]
    src = CachedFeatureSource(net.backbone, images, with_image=True)
    mean, std = src.channel_stats()
    want = np.concatenate([np.concatenate([image_features(net.backbone, x, device=torch.device("cpu")).float().numpy(),
                                           x[None].astype(np.float16).astype(np.float32)]).reshape(5, -1)
                           for x, _ in images], axis=1)
    np.testing.assert_allclose(mean.numpy(), want.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), want.std(1), rtol=1e-3, atol=1e-5)


def test_standardised_heads_compute_the_same_and_learn_a_channel_of_any_scale():
    """A head that trains on standardised inputs computes what its plain form computes (the weights are
    re-expressed, the state dict keeps the network's keys), and, unlike a head on the raw feature, learns
    a label that a channel a thousand times smaller than the others decides, in the same steps."""
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 5, 4096, 1, 1, generator=g) * 10
    feat[:, 4] = torch.rand(1, 4096, 1, 1, generator=g) * 1e-3   # the image channel of a lesion: tiny values
    target = (feat[0, 4] > 5e-4).long()[None]
    acc = {}
    for standardised in (False, True):
        torch.manual_seed(0)
        net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 2},
                                     head_image=["segmentation"]))
        stats = (feat.mean((0, 2, 3, 4)), feat.std((0, 2, 3, 4))) if standardised else None
        h = HeadOnlyNet(net, heads=["segmentation"], standardise=stats)
        assert sorted(h.state_dict()) == sorted(net.state_dict())
        opt = torch.optim.Adam(h.head.parameters(), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(h(feat)["segmentation"], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        plain = h.plain()
        with torch.no_grad():
            out = h(feat)["segmentation"]
            torch.testing.assert_close(plain(feat)["segmentation"], out, rtol=1e-4, atol=1e-3)
        assert not plain.standardised and (plain is h) == (not standardised)
        acc[standardised] = float((out.argmax(1) == target).float().mean())
    assert acc[True] > 0.97 and acc[False] < 0.8, acc


def test_the_learning_rate_by_default_suits_the_standardised_head_and_a_given_one_wins(data_dir, tmp_path):
    """1e-2 for a head on cached (standardised) features, tenfold lower after 60 % of the steps; 1e-3 when
    the backbone runs at every step; the rate the user gives (argument or ``--set optim.lr=``) in every case."""
    import csv

    from brainfm.training.finetune import HEAD_LR, HEAD_LR_DROP_AT, LR

    _base, weights = _base_weights(tmp_path)

    def rates(name, **kw):   # the learning rate at steps 5 and 10 (the log's rows)
        finetune(str(weights), data_dir, tmp_path / name, task="seg", mode="head", steps=10, size=16,
                 n_samples=1, device="cpu", **kw)
        return [float(r["lr"]) for r in csv.DictReader(open(tmp_path / name / "log.csv")) if r.get("lr")]

    assert (HEAD_LR, HEAD_LR_DROP_AT, LR) == (1e-2, 0.6, 1e-3)
    assert rates("cached") == pytest.approx([HEAD_LR, HEAD_LR / 10])
    assert rates("per-step", feature_cache=False) == pytest.approx([LR, LR])
    assert rates("given", lr=0.004) == pytest.approx([0.004, 0.0004])
    assert rates("set", overrides=["optim.lr=0.003", "optim.lr_drops=[]"]) == pytest.approx([0.003, 0.003])


def test_the_share_of_labelled_voxels_in_each_sample_is_a_fine_tuning_option(data_dir, tmp_path, monkeypatch):
    """``finetune(foreground_share=)`` reaches the cached samples (default FOREGROUND_SHARE); 0 draws
    every voxel of a sample uniformly from the image."""
    import brainfm.training.feature_cache as feature_cache
    from brainfm.training.finetune import FOREGROUND_SHARE

    made = []

    class Recorded(feature_cache.CachedFeatureSource):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(feature_cache, "CachedFeatureSource", Recorded)
    _base, weights = _base_weights(tmp_path)
    for name, kw in (("default", {}), ("none", {"foreground_share": 0.0}), ("half", {"foreground_share": 0.5})):
        finetune(str(weights), data_dir, tmp_path / name, task="seg", mode="head", steps=1, size=16,
                 n_samples=1, device="cpu", **kw)
    assert [m.foreground_share for m in made] == [FOREGROUND_SHARE, 0.0, 0.5]
    assert FOREGROUND_SHARE == 0.05
