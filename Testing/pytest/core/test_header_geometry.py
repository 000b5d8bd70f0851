"""NIfTI headers whose qform and sform disagree, or that nibabel would silently repair: every
output of ``brainfm run`` must open exactly where the input opens, in every reader.

Readers checked for each output against the input: SimpleITK (ITK, as 3D Slicer reads NIfTI),
nibabel, and the raw header (qform, sform, codes, pixdim: what sform-first readers such as
FreeSurfer and FSL, and qform-first readers, compute from).
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brainfm.cli import main
from brainfm.io import read_volume
from brainfm.io.nifti_header import read_raw_header
from file_fixtures import sha256, write_raw_nifti
from fixtures import affine, blob_head, rotation

ckpt_factory = pytest.importorskip("ckpt_factory")

SHAPE = (28, 32, 24)
Q = affine((1.1, 0.9, 1.2), rot=rotation(2, 12), origin=(-15.0, -14.0, -12.0))
S_FAR = Q.copy()
S_FAR[:3, 3] += [118.0, -40.0, 25.0]  # 130 mm away
S_TURNED = affine((1.1, 0.9, 1.2), rot=rotation(0, 25) @ rotation(2, 12), origin=(-15.0, -14.0, -12.0))
LEFT = affine((1.0, 1.0, 1.0), flip=(1, 1, -1), origin=(-14.0, -16.0, 12.0))

HEADERS = {
    # name: (write_raw_nifti keyword arguments, transforms agree?)
    "agreeing": (dict(qform=Q, qcode=1, sform=Q, scode=1), True),
    "disagreeing_far": (dict(qform=Q, qcode=2, sform=S_FAR, scode=2), False),
    "disagreeing_turned": (dict(qform=Q, qcode=1, sform=S_TURNED, scode=4), False),
    "qform_only": (dict(qform=Q, qcode=1), True),
    "sform_only": (dict(sform=S_FAR, scode=1), True),
    "qfac_minus_1": (dict(qform=LEFT, qcode=1), True),
    "negative_det_sform": (dict(qform=LEFT, qcode=1, sform=LEFT, scode=1), True),
    "negative_pixdim": (dict(qform=Q, qcode=1, pixdim=(1.1, -0.9, 1.2)), True),
}


from cli_fixtures import _private_cache, model  # noqa: E402,F401 - shared fixtures


def itk_geometry(path):
    """(origin, spacing, direction) as SimpleITK reads the file (3D Slicer's NIfTI reader is ITK's)."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return np.array(r.GetOrigin()), np.array(r.GetSpacing()), np.array(r.GetDirection())


def raw_geometry(path):
    h = read_raw_header(path)
    return {k: np.asarray(h[k], np.float64) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                                                       "qoffset_z", "qform_code", "srow_x", "srow_y", "srow_z",
                                                       "sform_code")} | {"pixdim": np.asarray(h["pixdim"][:4],
                                                                                              np.float64)}


def rule_based(path, prefer: str) -> np.ndarray:
    """The voxel -> world matrix of a reader that prefers ``prefer`` ("sform": FreeSurfer/FSL style,
    "qform": qform-first readers), computed from the raw header."""
    h = read_raw_header(path)
    q = nib.Nifti1Header.from_header(h, check=True)  # the repaired copy gives the qform matrix
    qform = q.get_qform() if int(h["qform_code"]) > 0 else None
    sform = np.vstack([np.asarray(h[k], np.float64) for k in ("srow_x", "srow_y", "srow_z")] + [[0, 0, 0, 1]]) \
        if int(h["sform_code"]) > 0 else None
    first, second = (sform, qform) if prefer == "sform" else (qform, sform)
    return first if first is not None else second


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_every_reader_places_outputs_on_the_input(tmp_path, model, capsys, name):
    kw, agree = HEADERS[name]
    src = write_raw_nifti(tmp_path / "in" / f"{name}.nii.gz", blob_head(SHAPE, seed=2).data, **kw)
    digest = sha256(src)
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["run", str(src), "-o", str(out), "--model", str(model), "--device", "cpu",
                                 "--tasks", "t1,seg", "--progress", "none", "--no-png"])
    assert code == 0, err
    assert sha256(src) == digest
    case = out / name
    outputs = sorted(case.glob("*.nii.gz"))
    assert [p.name for p in outputs] == ["seg.nii.gz", "synth_t1.nii.gz"]
    o_in, s_in, d_in = itk_geometry(src)
    for p in outputs:
        o, s, d = itk_geometry(p)
        np.testing.assert_allclose(o, o_in, atol=1e-4, err_msg=f"{p.name}: SimpleITK origin")
        np.testing.assert_allclose(s, s_in, atol=1e-5, err_msg=f"{p.name}: SimpleITK spacing")
        np.testing.assert_allclose(d, d_in, atol=1e-5, err_msg=f"{p.name}: SimpleITK direction")
        np.testing.assert_allclose(nib.load(str(p)).affine, nib.load(str(src)).affine, atol=1e-4,
                                   err_msg=f"{p.name}: nibabel affine")
        for prefer in ("sform", "qform"):
            np.testing.assert_allclose(rule_based(p, prefer), rule_based(src, prefer), atol=1e-4,
                                       err_msg=f"{p.name}: {prefer}-first reader")
        raw_in, raw_out = raw_geometry(src), raw_geometry(p)
        for key in raw_in:
            np.testing.assert_allclose(raw_out[key], raw_in[key], atol=1e-5, err_msg=f"{p.name}: header {key}")
    summary = json.loads((case / "summary.json").read_text())
    header = summary["input"]["header"]
    assert header["results_follow"] == ("sform" if kw.get("scode") else "qform")
    disagreement = [w for w in summary["warnings"] if "qform and sform disagree" in w]
    if agree:
        assert not disagreement and header.get("qform_sform_agree", True) is True
    else:
        assert header["qform_sform_agree"] is False and len(disagreement) == 1
        assert disagreement[0].startswith(f"{name}.nii.gz: ") and "results follow the sform" in disagreement[0]
        assert f"brainfm: warning: {name}: {name}.nii.gz: the header's qform and sform disagree" in err
    if name == "disagreeing_far":
        assert header["qform_sform_difference_mm"] > 100 and header["itk_follows"] == "qform"
        # SimpleITK places this input by its qform, 130 mm from where nibabel puts it: outputs follow each reader
        assert np.linalg.norm(o_in - itk_geometry(case / "seg.nii.gz")[0]) < 1e-4
    if name == "negative_pixdim":
        assert any("pixdim[2] is negative (-0.9)" in w for w in summary["warnings"])
        assert header["pixdim"][2] == pytest.approx(-0.9)


def test_read_then_write_keeps_both_transforms(tmp_path):
    """The Python API too: a volume read from such a file is written back with its header transforms."""
    from brainfm.io import write_volume

    src = write_raw_nifti(tmp_path / "x.nii", blob_head(SHAPE).data, **HEADERS["disagreeing_far"][0])
    v = read_volume(src)
    assert np.allclose(v.affine, S_FAR, atol=1e-4)  # nibabel: the sform
    out = write_volume(v.with_data(v.data * 2), tmp_path / "y.nii.gz")
    assert np.allclose(itk_geometry(out)[0], itk_geometry(src)[0], atol=1e-4)
    fresh = write_volume(type(v)(v.data, v.affine), tmp_path / "z.nii.gz", reference=v)
    assert np.allclose(itk_geometry(fresh)[0], itk_geometry(src)[0], atol=1e-4)
    other_grid = write_volume(type(v)(v.data[1:], v.affine), tmp_path / "w.nii.gz", reference=v)
    h = read_raw_header(other_grid)  # a different grid: one transform, qform = sform
    assert int(h["qform_code"]) == 1 and int(h["sform_code"]) == 1


def test_scaled_integers_recorded_and_label_warning_not_fooled(tmp_path, model, capsys):
    """An 8-bit image stored with an intensity offset (scl_inter): its background is not zero once
    scaled, which made the label-map check count the whole background as equal 'foreground'."""
    from brainfm.io import validate_image

    head = blob_head(SHAPE, seed=3).data
    img8 = np.clip(np.round(head * 2), 0, 250)
    src = write_raw_nifti(tmp_path / "in" / "mr8.nii.gz", img8 + 100.0, qform=Q, qcode=1, sform=Q, scode=1,
                          slope=1.0, inter=100.0, dtype=np.uint8)
    v = read_volume(src)
    assert v.meta["original_dtype"] == "uint8" and (v.meta["scl_slope"], v.meta["scl_inter"]) == (1.0, 100.0)
    assert float(v.data.min()) == 100.0
    assert not any("label map" in w for w in validate_image(v))
    labels = np.zeros(SHAPE)
    labels[4:20, 4:24, 4:18] = 2
    labels[8:14, 8:16, 6:12] = 41
    lab = write_raw_nifti(tmp_path / "lab.nii", labels * 1 + 0.5, qform=Q, qcode=1, slope=1.0, inter=0.5,
                          dtype=np.int16)
    assert any("label map" in w for w in validate_image(read_volume(lab)))  # a shifted label map is still one

    ct = write_raw_nifti(tmp_path / "in2" / "ct.nii.gz", np.round(head * 15) - 1024.0, qform=Q, qcode=1,
                         slope=1.0, inter=-1024.0, dtype=np.int16)
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["run", str(ct), "-o", str(out), "--model", str(model), "--device", "cpu",
                                 "--tasks", "t1", "--progress", "none", "--no-png"])
    assert code == 0, err
    inp = json.loads((out / "ct" / "summary.json").read_text())["input"]
    assert inp["on_disk_dtype"] == "int16" and inp["dtype"] == "float32"
    assert (inp["scl_slope"], inp["scl_inter"]) == (1.0, -1024.0)
