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
