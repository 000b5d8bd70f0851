"""Generator batches: target shapes/units, determinism, flips, skull stripping, mild vs severe,
pathology, real images; one 96^3 sample from a real SynthSeg label map when shared data exist."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from brainfm.errors import InputError
from brainfm.generator import Generator, GeneratorConfig, SubjectData
from brainfm.generator.config import CorruptionParams
from brainfm.generator.distance import distance_maps
from brainfm.generator.labels import FS33, fs33_flip_perm
from fixtures import label_head

S = 32


def _subject(shell: bool = False, images: bool = False) -> SubjectData:
    lab = label_head((48, 48, 48))
    if shell:  # scalp (507) and skull (511) around the brain
        x, y, z = np.meshgrid(*[np.linspace(-1, 1, 48)] * 3, indexing="ij")
        r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
        lab[(r < 1.0) & (lab == 0)] = 511
        lab[(r >= 1.0) & (r < 1.15)] = 507
    coords = torch.stack(torch.meshgrid(*[torch.arange(48.0) - 23.5] * 3, indexing="ij"))
    imgs = {}
    if images:
        imgs["T1"] = torch.from_numpy(np.where(np.isin(lab, (2, 41)), 200.0, 0.0) +
                                      np.where(np.isin(lab, (3, 42)), 120.0, 0.0)).float()
    return SubjectData(torch.from_numpy(lab), images=imgs, atlas_coords=coords,
                       distance=torch.from_numpy(distance_maps(lab)))


def test_targets_shapes_units_ranges():
    b = Generator().sample(_subject(shell=True), n_samples=4, size=S, seed=3)
    t = b.targets
    assert b.inputs.shape == (4, 1, S, S, S) and b.inputs.dtype == torch.float32
    assert float(b.inputs.min()) >= 0 and float(b.inputs.max()) == pytest.approx(1.0)
    for k in ("T1", "T2", "FLAIR"):
        assert t[k].shape == (1, 1, S, S, S)
        assert float(t[k].min()) == pytest.approx(0) and float(t[k].max()) == pytest.approx(1)
    assert t["CT"].shape == (1, 1, S, S, S)
    assert float(t["CT"].min()) >= -1.0001 and 0.02 < float(t["CT"].max()) <= 1.5  # HU/1000, skull
    seg = t["segmentation"]
    assert seg.shape == (1, S, S, S) and seg.dtype == torch.int64
    assert set(seg.unique().tolist()) <= set(range(len(FS33)))
    assert {FS33[i] for i in seg.unique().tolist()} >= {0, 2, 41}
    assert t["distance"].shape == (1, 4, S, S, S)
    assert float(t["distance"].abs().max()) <= 3.0 and float(t["distance"].min()) < 0
    # inside left white matter lw < 0, far right side lw > 0
    lw = t["distance"][0, 1][seg[0] == FS33.index(2)]
    assert float(lw.mean()) < 0
    assert t["registration"].shape == (1, 3, S, S, S)
    assert float(t["registration"].abs().max()) < 0.3  # atlas mm / 100
    for k in ("bias_field_log", "high_res_residual"):
        assert t[k].shape == (4, 1, S, S, S)
    assert t["brain_mask"].dtype == torch.bool and t["head_mask"].sum() >= t["brain_mask"].sum()
    hot = Generator().sample(_subject(), n_samples=1, size=S, seed=3, one_hot=True)
    assert hot.targets["segmentation"].shape == (1, 33, S, S, S)
    assert torch.allclose(hot.targets["segmentation"].sum(1), torch.ones(1, S, S, S))


def test_seed_determinism():
    s = _subject()
    a = Generator().sample(s, n_samples=2, size=S, seed=11)
    b = Generator().sample(s, n_samples=2, size=S, seed=11)
    c = Generator().sample(s, n_samples=2, size=S, seed=12)
    assert torch.equal(a.inputs, b.inputs)
    for k in a.targets:
        assert torch.equal(a.targets[k], b.targets[k]), k
    assert not torch.equal(a.inputs, c.inputs)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(Generator().sample(s, n_samples=1, size=S, generator=g1).inputs,
                       Generator().sample(s, n_samples=1, size=S, generator=g2).inputs)


def test_flip_swaps_channels_and_negates_x():
    s = _subject()
    base = GeneratorConfig(p_pathology=0.0)
    a = Generator(replace(base, p_flip=0.0)).sample(s, n_samples=1, size=S, seed=4, one_hot=True)
    b = Generator(replace(base, p_flip=1.0)).sample(s, n_samples=1, size=S, seed=4, one_hot=True)
    assert not a.params["flip"] and b.params["flip"]
    perm = fs33_flip_perm()
    assert perm[FS33.index(2)] == FS33.index(41) and perm[FS33.index(24)] == FS33.index(24)
    sa, sb = a.targets["segmentation"], b.targets["segmentation"]
    assert torch.equal(sb, sa.flip(2)[:, perm])
    ra, rb = a.targets["registration"], b.targets["registration"]
    assert torch.allclose(rb[:, 0], -ra[:, 0].flip(1)) and torch.allclose(rb[:, 1:], ra[:, 1:].flip(2))
    da, db = a.targets["distance"], b.targets["distance"]
    assert torch.allclose(db[:, 0], da[:, 2].flip(1)) and torch.allclose(db[:, 3], da[:, 1].flip(1))
    assert torch.allclose(b.targets["T1"], a.targets["T1"].flip(2), atol=1e-5)  # symmetric tissues


def _clean(cfg: GeneratorConfig) -> GeneratorConfig:
    none = CorruptionParams(gamma_std=0.0, bias_scale=(0.02, 0.02), bias_std=(0.0, 0.0), noise_std=(0.0, 0.0))
    return replace(cfg, mild=none, severe=none, p_res_iso=1.0, p_pathology=0.0, p_gmm=1.0,
                   p_physics=0.0, p_ct=0.0, p_black_background=1.0, gmm_mu=(100, 200), gmm_sigma=(1, 2))


def test_extra_cerebral_removal():
    s = _subject(shell=True)
    cfg = _clean(GeneratorConfig())
    kept = Generator(replace(cfg, p_skull_strip=0.0)).sample(s, n_samples=2, size=S, seed=2)
    gone = Generator(replace(cfg, p_skull_strip=1.0)).sample(s, n_samples=2, size=S, seed=2)
    head, brain = kept.targets["head_mask"], kept.targets["brain_mask"]
    from scipy import ndimage
    ring = head[0, 0].numpy() & ~ndimage.binary_dilation(brain[0, 0].numpy(), iterations=2)
    ring = torch.from_numpy(ring)
    assert int(ring.sum()) > 50
    assert all(x["skull_stripped"] for x in gone.params["samples"])
    assert float(gone.inputs[:, 0][:, ring].max()) < 0.02  # background-black outside the brain
    assert float(kept.inputs[:, 0][:, ring].mean()) > 0.2
    inner = torch.from_numpy(ndimage.binary_erosion(brain[0, 0].numpy(), iterations=2))
    assert float(gone.inputs[:, 0][:, inner].mean()) > 0.2  # brain still there


def test_mild_samples_less_corrupted_than_severe():
    s = _subject()
    for seed in range(3):
        b = Generator().sample(s, n_samples=4, size=S, seed=seed)
        info = b.params["samples"]
        assert [x["severity"] for x in info] == ["mild", "mild", "severe", "severe"]
        bf = b.targets["bias_field_log"].flatten(1).std(1)
        assert float(bf[:2].max()) < 0.03 < float(bf[2:].min())  # bias-field std: mild << severe
        assert max(x["noise_std"] for x in info[:2]) <= min(x["noise_std"] for x in info[2:])
        assert max(abs(np.log(x["gamma"])) for x in info[:2]) < 0.05


def test_corruption_sets_come_from_a_config_file():
    # a YAML config gives the sets as mappings (lists for ranges); unset fields keep the defaults
    cfg = GeneratorConfig(mild={"bias_std": [0.2, 0.3]}, severe_fraction=0.0)
    assert isinstance(cfg.mild, CorruptionParams) and cfg.mild.bias_std == (0.2, 0.3)
    assert cfg.mild.noise_std == GeneratorConfig().mild.noise_std and cfg.severe == GeneratorConfig().severe
    b = Generator(cfg).sample(_subject(), n_samples=2, size=S, seed=0)
    assert [x["severity"] for x in b.params["samples"]] == ["mild", "mild"]
    assert all(0.2 <= x["bias_std"] <= 0.3 for x in b.params["samples"])
    assert float(b.targets["bias_field_log"].flatten(1).std(1).min()) > 0.03  # real fields in mild samples
    with pytest.raises(InputError, match="unknown keys"):
        GeneratorConfig(severe={"bias": [0.0, 1.0]})


def test_pathology_in_white_matter_and_signs():
    cfg = replace(GeneratorConfig(), p_pathology=1.0, lesion_threshold=(1.0, 1.0), lesion_scale=(0.2, 0.2))
    b = Generator(cfg).sample(_subject(), n_samples=1, size=S, seed=0)
    t = b.targets
    les = t["pathology"]
    assert int(les.sum()) > 10
    seg = t["segmentation"][:, None]
    wm = (seg == FS33.index(2)) | (seg == FS33.index(41))
    assert bool(wm[les].all())  # lesions only inside WM, segmentation keeps WM there
    healthy = wm & ~les
    for k, sign in (("T1", -1), ("FLAIR", 1), ("T2", 1)):
        assert sign * float(t[k][les].mean() - t[k][healthy].mean()) > 0.05, k


def test_real_images_used_for_targets_and_inputs():
    s = _subject(images=True)
    cfg = replace(_clean(GeneratorConfig()), p_real_input=1.0, p_flip=0.0)
    b = Generator(cfg).sample(s, n_samples=2, size=S, seed=1)
    assert all(x["contrast"] == "real_T1" for x in b.params["samples"])
    assert torch.allclose(b.inputs[0], b.targets["T1"][0], atol=1e-5)
    wm = b.targets["segmentation"] == FS33.index(2)
    assert float(b.targets["T1"][:, 0][wm].mean()) > 0.9


def test_bad_input_errors():
    with pytest.raises(InputError, match="3D"):
        SubjectData(torch.zeros(4, 4))
    with pytest.raises(InputError, match="not aligned"):
        SubjectData(torch.zeros(4, 4, 4, dtype=torch.long), images={"T1": torch.zeros(5, 4, 4)})
    with pytest.raises(InputError, match="probability"):
        GeneratorConfig(p_flip=1.5)
    with pytest.raises(InputError, match="n_samples"):
        Generator().sample(SubjectData(torch.zeros(8, 8, 8, dtype=torch.long)), n_samples=0)


def test_real_label_map_sample(shared_data):
    import nibabel as nib
    path = shared_data / "SynthSeg" / "data" / "training_label_maps" / "training_seg_01.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    img = nib.as_closest_canonical(nib.load(str(path)))
    lab = torch.from_numpy(np.asarray(img.dataobj).astype(np.int64))
    b = Generator().sample(SubjectData(lab), n_samples=1, size=96, seed=0)
    t = b.targets
    assert b.inputs.shape == (1, 1, 96, 96, 96) and 0 <= float(b.inputs.min()) <= float(b.inputs.max()) <= 1
    classes = {FS33[i] for i in t["segmentation"].unique().tolist()}
    assert {2, 3, 4, 41, 42, 43, 17, 53}.issubset(classes)  # brain centred in the field of view
    assert float(t["CT"].max()) > 0.5  # skull present in the whole-head map
    assert float(t["brain_mask"].float().mean()) > 0.2


def test_torch_band_distance_matches_scipy():
    from brainfm.generator.distance import band_distance_maps

    lab = label_head((40, 48, 36))
    ref = distance_maps(lab, clip=4.0)
    got = band_distance_maps(torch.from_numpy(lab), clip=4.0).numpy()
    assert np.abs(ref - got).max() < 1e-4
    assert ref.min() == -4.0 and ref.max() == 4.0
    # sign convention: negative inside the left white surface, positive in the right hemisphere
    assert ref[1][lab == 2].max() < 0 and ref[1][lab == 41].min() > 0


def test_window_centre_shift_moves_the_window_over_the_anatomy():
    """``shift_mm``: the window centre is the brain's centroid plus a uniform shift per axis (mm);
    the atlas coordinates under the window's centre show where the window went."""
    rigid = replace(GeneratorConfig(), rotation_deg=0.0, shear=0.0, scaling=0.0, svf_std=(0.0, 0.0), p_flip=0.0)
    s = _subject()

    def centre_coords(cfg, seed):
        reg = Generator(cfg).sample(s, n_samples=1, size=S, seed=seed).targets["registration"][0]
        mid = slice(S // 2 - 1, S // 2 + 1)
        return reg[:, mid, mid, mid].mean((1, 2, 3)) * 100.0  # atlas mm at the window centre

    moved = []
    for seed in range(6):
        still = centre_coords(rigid, seed)
        shifted = centre_coords(replace(rigid, shift_mm=10.0), seed)
        d = shifted - still
        assert float(d.abs().max()) <= 10.0 + 1e-3
        moved.append(d)
    moved = torch.stack(moved)
    assert float(moved.abs().max()) > 3.0  # the windows moved
    assert float(moved.std(0).min()) > 1.0  # differently for each sample, on every axis


def test_subvoxel_partial_volume_mixes_the_tissues_of_a_coarse_voxel():
    from brainfm.generator.batch import _subvoxel_labels
    from brainfm.generator.contrast_gmm import paint

    # 1 mm stripes along x (labels 1, 2, 1, 2, ...); a 2 mm voxel centred between two stripes holds
    # half of each
    lab = torch.from_numpy(np.tile((np.arange(16) % 2 + 1)[:, None, None], (1, 16, 16))).float()[None, None]
    centres = torch.stack(torch.meshgrid(*[torch.arange(4, 12, 2.0) + 0.5] * 3, indexing="ij"))[None]
    assert _subvoxel_labels(lab, centres, torch.eye(3), 2.0, 1) is None
    sub = _subvoxel_labels(lab, centres, torch.eye(3), 2.0, 2)
    assert sub.shape == (8, 1, 4, 4, 4)
    assert torch.equal((sub == 1).sum(0), torch.full((1, 4, 4, 4), 4))     # 4 of 8 points in each stripe
    mean = torch.tensor([[0.0, 40.0, 200.0]])
    img = paint(sub, mean, torch.zeros(1, 3), pv_sigma=torch.zeros(1), generator=torch.Generator())
    assert torch.allclose(img, torch.full_like(img, 120.0))                # the two tissues' average
    one = paint(sub[:1], mean, torch.zeros(1, 3), pv_sigma=torch.zeros(1), generator=torch.Generator())
    assert set(one.unique().tolist()) <= {40.0, 200.0}                     # the centre label only


def test_subvoxel_partial_volume_keeps_the_targets_and_the_random_stream():
    s = _subject(shell=True)
    a = Generator().sample(s, n_samples=2, size=S, seed=4, voxel_mm=2.0)
    b = Generator(GeneratorConfig(pv_subsamples=2)).sample(s, n_samples=2, size=S, seed=4, voxel_mm=2.0)
    for k in a.targets:
        if k not in ("high_res_residual",):
            assert torch.equal(a.targets[k], b.targets[k]), k
    assert not torch.equal(a.inputs, b.inputs)
    assert float((a.inputs - b.inputs).abs().mean()) < 0.05                # same anatomy, edges differ
    with pytest.raises(InputError, match="pv_subsamples"):
        GeneratorConfig(pv_subsamples=0)


def test_brain_extraction_at_the_cortex_removes_the_outer_csf_from_input_and_target():
    from brainfm.generator.batch import brain_surface_mask
    from brainfm.generator.labels import ALL_LABELS, to_compact

    # the toy head: a CSF shell (24) around cortex; the closing keeps the brain, not the shell
    lab = to_compact(torch.from_numpy(label_head((32, 32, 32))))[None, None]
    for radius in (0, 2):
        m = brain_surface_mask(lab, radius)
        csf = lab == ALL_LABELS.index(24)
        assert m.shape == lab.shape and not bool((m & csf).any()) and bool(csf.any())
        assert bool(m[(lab > 0) & ~csf].all())
    s = _subject(shell=True)
    cfg = GeneratorConfig(p_tight_strip=1.0, tight_strip_mm=(2.0, 2.0), p_real_input=0.0, p_mix_real=0.0)
    b = Generator(cfg).sample(s, n_samples=2, size=S, seed=5)
    plain = Generator(replace(cfg, p_tight_strip=0.0)).sample(s, n_samples=2, size=S, seed=5)
    seg, seg0 = b.targets["segmentation"], plain.targets["segmentation"]
    csf = FS33.index(24)
    assert b.params["brain_surface_strip"] and not plain.params["brain_surface_strip"]
    # the shell is outside the closed brain but for a few voxels of concavities the closing bridged
    assert int((seg == csf).sum()) < 0.1 * int((seg0 == csf).sum())
    assert torch.equal(seg[seg0 != csf], seg0[seg0 != csf])                # the rest of the target kept
    assert all(info["skull_stripped"] for info in b.params["samples"])
    # without blur, bias or noise, the removed shell looks like the background around the head
    clean = replace(cfg, pv_sigma=(0.0, 0.0), p_res_iso=1.0, severe_fraction=0.0, p_pathology=0.0,
                    mild={"gamma_std": 0.0, "bias_std": (0.0, 0.0), "noise_std": (0.0, 0.0)})
    c = Generator(clean).sample(s, n_samples=2, size=S, seed=5)
    c0 = Generator(replace(clean, p_tight_strip=0.0)).sample(s, n_samples=2, size=S, seed=5)
    removed = (c0.targets["segmentation"] == csf) & (c.targets["segmentation"] == 0)
    outside = c.targets["head_mask"][:, 0] == 0
    assert int(removed.sum()) > 1000
    for i in range(2):
        x = c.inputs[i, 0][None]
        assert abs(float(x[removed].mean()) - float(x[outside].mean())) < 0.02

