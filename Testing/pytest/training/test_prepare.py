"""Data preparation: 1 mm RAS crop, atlas registration cache, manifest idempotence, errors."""
from __future__ import annotations

import argparse
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from brainfm.errors import InputError
from brainfm.generator import Generator
from brainfm.cli import prepare_cmd
from brainfm.generator.physics import render_t1_like
from brainfm.training.prepare import list_prepared, load_subject, prepare_dataset
from fixtures import label_head

SHIFT = np.array([6.0, -4.0, 3.0])  # atlas world = subject world + SHIFT


def _save(arr, affine, path):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


@pytest.fixture()
def dataset(tmp_path):
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    aff = np.eye(4)
    aff[:3, 3] = [-24, -24, -24]
    lab = label_head((48, 48, 48))
    _save(lab.astype(np.int32), aff, lab_dir / "sub1.nii.gz")
    # the same anatomy stored LPS (flipped axes 0 and 1) with float32 values, as in SynthSeg files
    lps = aff.copy()
    lps[:3, :3] = np.diag([-1.0, -1.0, 1.0])
    lps[:3, 3] = [23, 23, -24]
    _save(lab[::-1, ::-1].astype(np.float32), lps, lab_dir / "sub2.nii.gz")
    atlas_aff = aff.copy()
    atlas_aff[:3, 3] += SHIFT
    big = np.zeros((56, 56, 56), np.int32)
    big[4:52, 4:52, 4:52] = lab
    atlas_aff[:3, 3] -= 4
    atlas = _save(render_t1_like(big), atlas_aff, tmp_path / "atlas.nii.gz")
    return lab_dir, atlas, aff


def _world(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def test_prepare_load_and_idempotence(dataset, tmp_path):
    lab_dir, atlas, aff = dataset
    out = tmp_path / "prepared"
    seen = []
    res = prepare_dataset(lab_dir, out, atlas_path=atlas, nonlinear=False, progress=lambda f, m: seen.append(f))
    assert sorted(res["prepared"]) == ["sub1", "sub2"] and res["skipped"] == []
    assert seen[-1] == 1.0
    files = list_prepared(out)
    assert [f.name for f in files] == ["sub1.npz", "sub2.npz"]
    z1, z2 = np.load(files[0]), np.load(files[1])
    assert z1["labels"].dtype == np.uint16
    assert np.allclose(np.diag(z1["affine"])[:3], 1.0)  # RAS, 1 mm
    assert np.array_equal(z1["labels"], z2["labels"]) and np.allclose(z1["affine"], z2["affine"])
    assert z1["labels"].shape[0] < 48 and z1["labels"].size < 48 ** 3  # cropped to the head (+4 mm)
    # atlas coordinates = subject world + SHIFT (affine registration of identical anatomy)
    s = load_subject(files[0], "cpu")
    world = torch.from_numpy(_world(s.labels.shape, z1["affine"]).astype(np.float32)).permute(3, 0, 1, 2)
    brain = s.labels > 0
    err = (s.atlas_coords - world - torch.from_numpy(SHIFT).float().view(3, 1, 1, 1)).norm(dim=0)[brain]
    assert float(err.mean()) < 1.5
    assert s.distance.shape == (4,) + tuple(s.labels.shape) and float(s.distance.min()) < -3
    b = Generator().sample(s, n_samples=1, size=24, seed=0)
    assert b.targets["registration"].shape == (1, 3, 24, 24, 24)
    # second run: nothing to do, files untouched
    mtimes = [f.stat().st_mtime_ns for f in files]
    res2 = prepare_dataset(lab_dir, out, atlas_path=atlas, nonlinear=False)
    assert res2["prepared"] == [] and sorted(res2["skipped"]) == ["sub1", "sub2"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # a changed source is prepared again (resumable, verified by checksums)
    lab = label_head((48, 48, 48))
    lab[20:24, 20:24, 20:24] = 24
    _save(lab.astype(np.int32), aff, lab_dir / "sub1.nii.gz")
    res3 = prepare_dataset(lab_dir, out, atlas_path=atlas, nonlinear=False)
    assert res3["prepared"] == ["sub1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["subjects"]) == {"sub1", "sub2"}
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary leftovers


def test_nonlinear_registration_stores_compact_residual(dataset, tmp_path):
    lab_dir, atlas, _ = dataset
    (lab_dir / "sub2.nii.gz").unlink()
    res = prepare_dataset(lab_dir, tmp_path / "p", atlas_path=atlas, nonlinear=True)
    entry = res["subjects"]["sub1"]
    assert "bspline_metric" in entry["registration"]
    z = np.load(tmp_path / "p" / "sub1.npz")
    assert z["atlas_residual"].dtype == np.float16 and z["atlas_residual"].shape[0] == 3
    assert z["atlas_residual"].shape[1] <= z["labels"].shape[0] // 5 + 2


def test_unknown_labels_listed_or_rejected(dataset, tmp_path):
    lab_dir, atlas, aff = dataset
    lab = label_head((48, 48, 48))
    lab[10:14, 20:24, 20:24] = 999
    _save(lab.astype(np.int32), aff, lab_dir / "sub1.nii.gz")
    with pytest.raises(InputError, match=r"sub1.*\[999\]"):
        prepare_dataset(lab_dir, tmp_path / "r", atlas_path=atlas, nonlinear=False, unknown="reject")
    res = prepare_dataset(lab_dir, tmp_path / "z", atlas_path=atlas, nonlinear=False)
    assert res["subjects"]["sub1"]["unknown_labels"] == [999]
    assert 999 not in np.unique(np.load(tmp_path / "z" / "sub1.npz")["labels"])


def test_bad_inputs(dataset, tmp_path):
    lab_dir, atlas, aff = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no label maps"):
        prepare_dataset(empty, tmp_path / "o", atlas_path=atlas)
    with pytest.raises(InputError, match="atlas not found"):
        prepare_dataset(lab_dir, tmp_path / "o", atlas_path=tmp_path / "missing.mgz")
    (lab_dir / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a nifti")
    with pytest.raises(InputError, match="broken"):
        prepare_dataset(lab_dir, tmp_path / "o", atlas_path=atlas, nonlinear=False)
    (lab_dir / "broken.nii.gz").unlink()
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    _save(np.zeros((40, 48, 48), np.float32), aff, img_dir / "sub1_T1.nii.gz")
    with pytest.raises(InputError, match="not aligned"):
        prepare_dataset(lab_dir, tmp_path / "o2", atlas_path=atlas, images_dir=img_dir, nonlinear=False)
    with pytest.raises(InputError, match="prepared subject"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, labels=np.zeros((2, 2, 2)))
        load_subject(bad)


def test_prepare_command(dataset, tmp_path, capsys):
    lab_dir, atlas, _ = dataset
    parser = argparse.ArgumentParser()
    p = prepare_cmd.add_parser(parser.add_subparsers())
    args = p.parse_args([str(lab_dir), "-o", str(tmp_path / "cli"), "--atlas", str(atlas),
                         "--affine-only", "--progress", "machine", "--workers", "2"])
    assert prepare_cmd.main(args) == 0
    out = capsys.readouterr().out
    assert "BRAINFM_PROGRESS 1.0000" in out and "prepared 2, skipped 0" in out


def test_the_renderer_is_still_importable_from_prepare():
    from brainfm.training import prepare

    assert prepare.render_t1_like is render_t1_like  # moved to the generator's physics; the old name remains


def test_non_1mm_oblique_map_resampled_to_1mm_ras(dataset, tmp_path):
    _lab_dir, atlas, _ = dataset
    d = tmp_path / "coarse"
    d.mkdir()
    c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([2.0, 2.0, 1.5])
    aff[:3, 3] = [-24, -24, -18]
    _save(label_head((24, 24, 24)).astype(np.int16), aff, d / "coarse.nii.gz")
    prepare_dataset(d, tmp_path / "o", atlas_path=atlas, nonlinear=False)
    z = np.load(tmp_path / "o" / "coarse.npz")
    assert np.allclose(z["affine"][:3, :3], np.eye(3))  # RAS, 1 mm, axis aligned
    assert z["labels"].shape[0] > 40 and z["labels"].shape[2] > 30
    assert {0, 2, 3, 41, 42} <= set(np.unique(z["labels"]).tolist())
