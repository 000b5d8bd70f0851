"""The bad and unusual inputs ``brainfm run`` is tried with, as runnable scenarios.

Each scenario builds its inputs in a fresh folder, runs ``brainfm run`` in-process and records the
exit code, the first line the user reads, what was written and whether every input is byte for
byte unchanged (SHA-256). Used by ``Testing/pytest/core/test_bad_inputs.py`` (assertions) and
``Testing/benchmarks/bad_inputs_table.py`` (the table case -> exit code -> message -> written).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from bad_input_runner import Outcome, Scenario, mount_tmpfs, out_entries, run_scenario  # noqa: F401 - re-exported
from file_fixtures import write_dicom_series, write_multiframe_dicom, write_raw_nifti
from fixtures import affine, blob_head, rotation

SHAPE = (28, 32, 24)
Q = affine((1.1, 0.9, 1.2), rot=rotation(2, 12), origin=(-15.0, -14.0, -12.0))
LEFT = affine((1.0, 1.0, 1.0), flip=(1, 1, -1), origin=(-14.0, -16.0, 12.0))
DICOM_AFFINE = affine((0.9, 0.8, 2.0), rot=rotation(0, 10), origin=(-12.0, -14.0, -20.0))
RUN_OPTIONS = ["--device", "cpu", "--tasks", "t1,seg", "--progress", "none", "--no-png"]


def _nifti(base: Path, name: str, **kw) -> Path:
    return write_raw_nifti(base / "in" / name, blob_head(SHAPE, seed=2).data, **kw)


def _run_args(src, out, model, *extra) -> List[str]:
    return ["run", *[str(s) for s in (src if isinstance(src, list) else [src])], "-o", str(out),
            "--model", str(model), *RUN_OPTIONS, *extra]


def _case_files(*names: str) -> List[str]:
    return sorted(names)


def _itk_origin(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return np.array(r.GetOrigin() + r.GetDirection())


def _same_itk_place(case: str, src: Path) -> Callable[[Outcome], None]:
    def check(o: Outcome) -> None:
        for name in ("seg.nii.gz", "synth_t1.nii.gz"):
            assert np.allclose(_itk_origin(o.scenario.out / case / name), _itk_origin(src), atol=1e-4), name
    return check


# -- the scenarios ------------------------------------------------------------------------------
def qform_sform_disagree(base, model, tools):
    s = Q.copy()
    s[:3, 3] += [118.0, -40.0, 25.0]
    src = _nifti(base, "disagree.nii.gz", qform=Q, qcode=2, sform=s, scode=2)
    out = base / "out"
    return Scenario(_run_args(src, out, model), [src], out, 0, r"warning: disagree: .*qform and sform disagree",
                    ["disagree", "run_summary.json", "seg_volumes_all.csv"], check=_same_itk_place("disagree", src),
                    note="outputs repeat both transforms: each reader places them like the input")


def pixdim_zero(base, model, tools):
    src = _nifti(base, "zero.nii.gz", qform=Q, qcode=1, pixdim=(1.1, 0.0, 1.2))
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"zero\.nii\.gz: header field pixdim\[2\] is 0")


def singular_qform(base, model, tools):
    src = _nifti(base, "singular_q.nii", qform=Q, qcode=1, pixdim=(0.0, 0.9, 1.2))
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"singular_q\.nii: header field pixdim\[1\] is 0")


def singular_sform(base, model, tools):
    s = Q.copy()
    s[:3, 2] = 0.0
    src = _nifti(base, "singular_s.nii.gz", qform=Q, qcode=1, sform=s, scode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"singular_s\.nii\.gz: header fields srow_x/srow_y/srow_z .* singular")


def pixdim_negative(base, model, tools):
    src = _nifti(base, "negpix.nii.gz", qform=Q, qcode=1, pixdim=(1.1, -0.9, 1.2))

    def check(o: Outcome) -> None:
        import json

        summary = json.loads((o.scenario.out / "negpix" / "summary.json").read_text())
        assert any("pixdim[2] is negative" in w for w in summary["warnings"])
        _same_itk_place("negpix", src)(o)

    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0,
                    r"warning: negpix: negpix\.nii\.gz: header field pixdim\[2\] is negative",
                    ["negpix", "run_summary.json", "seg_volumes_all.csv"], check=check, note="warning recorded in summary.json")


def qfac_minus_1(base, model, tools):
    src = _nifti(base, "qfac.nii.gz", qform=LEFT, qcode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["qfac", "run_summary.json", "seg_volumes_all.csv"], check=_same_itk_place("qfac", src))


def negative_det_sform(base, model, tools):
    src = _nifti(base, "leftsform.nii.gz", qform=LEFT, qcode=1, sform=LEFT, scode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["leftsform", "run_summary.json", "seg_volumes_all.csv"], check=_same_itk_place("leftsform", src))


def input_named_like_output(base, model, tools):
    src = _nifti(base, "seg.nii.gz", qform=Q, qcode=1, sform=Q, scode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["run_summary.json", "seg", "seg_volumes_all.csv"], note="case folder seg/ holds seg.nii.gz; the input is untouched")


def case_folder_contains_input(base, model, tools):
    src = write_raw_nifti(base / "out" / "seg" / "seg.nii.gz", blob_head(SHAPE).data, qform=Q, qcode=1)
    return Scenario(_run_args(src, base / "out", model, "--overwrite"), [src], base / "out", 2,
                    r"the case folder .*seg would contain the input")


def output_is_input_file(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    return Scenario(_run_args(src, src, model), [src], src, 2, r"output folder .*a\.nii\.gz is .* the input file")


def output_is_input_folder(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    return Scenario(_run_args(base / "in", base / "in", model), [src], base / "in", 2,
                    r"output folder .*in is the input folder")


def output_inside_input_folder(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    return Scenario(_run_args(base / "in", base / "in" / "results", model), [src], base / "in" / "results", 2,
                    r"output folder .*results is inside the input folder")


def output_read_only(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    ro = base / "readonly"
    ro.mkdir()
    unmount = mount_tmpfs(ro, "1m", read_only=True)
    note = "read-only tmpfs"
    cleanup = unmount
    if unmount is None:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            return Scenario([], [src], ro / "out", 5, "", skip="root without mount: cannot make a read-only folder")
        os.chmod(ro, 0o555)
        note = "folder mode 0555"
        cleanup = lambda: os.chmod(ro, 0o755)  # noqa: E731
    return Scenario(_run_args(src, ro / "out", model), [src], ro / "out", 5,
                    r"cannot create the folder .*out: (the location is on a read-only file system|permission denied)",
                    cleanup=cleanup, note=note)


def disk_full_tmpfs(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    small = base / "small"
    unmount = mount_tmpfs(small, "64k")
    if unmount is None:
        return Scenario([], [src], small / "out", 5, "", skip="needs root to mount a 64 KB tmpfs")
    return Scenario(_run_args(src, small / "out", model), [src], small / "out", 5,
                    r"not enough free space in .*out: .* free, about .* needed", cleanup=unmount,
                    note="64 KB tmpfs: refused before the model is loaded")


def disk_full_while_writing(base, model, tools):
    """ENOSPC injected when the first case's volumes are written: that case fails with an I/O
    error and leaves no folder; the second case is done; run_summary.json records both."""
    import brainfm.io.writers as writers

    a = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    b = _nifti(base, "b.nii.gz", qform=Q, qcode=1)
    real = writers._write_nifti

    def full_for_a(img, data, tmp, *args, **kw):
        if tmp.parent.parent.name.startswith(".a."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(img, data, tmp, *args, **kw)

    def check(o: Outcome) -> None:
        import json

        run = json.loads((o.scenario.out / "run_summary.json").read_text())
        assert [(c["case"], c["status"]) for c in run["cases"]] == [("a", "failed"), ("b", "done")]
        assert run["cases"][0]["error"]["type"] == "StorageError"

    return Scenario(_run_args([a, b], base / "out", model), [a, b], base / "out", 5,
                    r"cannot write .*: the disk is full", ["b", "run_summary.json", "seg_volumes_all.csv"],
                    patches=[(writers, "_write_nifti", full_for_a)], check=check,
                    note="injected OSError(ENOSPC) for case a; case b still done")


def folder_with_foreign_files(base, model, tools):
    d = base / "in"
    src = _nifti(base, "sub-01_T1w.nii.gz", qform=Q, qcode=1)
    (d / "sub-01_T1w.json").write_text('{"RepetitionTime": 2.3}')
    (d / "notes.txt").write_text("scanned on Monday")
    (d / ".DS_Store").write_bytes(b"\0\1")
    inputs = [src, d / "sub-01_T1w.json", d / "notes.txt", d / ".DS_Store"]
    return Scenario(_run_args(d, base / "out", model), inputs, base / "out", 0, r"skipped .*\.DS_Store: hidden file",
                    ["run_summary.json", "seg_volumes_all.csv", "sub-01_T1w"], note="sidecar, text and hidden files listed as skipped")


def _dicom(folder: Path, **kw) -> List[Path]:
    data = np.round(blob_head((24, 28, 12), seed=kw.pop("seed", 0)).data * 10).astype(np.int16)
    return write_dicom_series(folder, data, DICOM_AFFINE, **kw)


def dicom_series_folder(base, model, tools):
    files = _dicom(base / "dicom")
    return Scenario(_run_args(base / "dicom", base / "out", model), files, base / "out", 0,
                    r"1 done, 0 skipped, 0 failed", ["3_T1_MPRAGE", "run_summary.json", "seg_volumes_all.csv"])


def dicom_two_series(base, model, tools):
    files = _dicom(base / "dicom", description="t1 sag", number=3, uid="1.2.826.0.1.3680043.2.1125.77.3", prefix="A")
    files += _dicom(base / "dicom", description="FLAIR ax", number=7, uid="1.2.826.0.1.3680043.2.1125.77.7",
                    prefix="B", seed=1)
    return Scenario(_run_args(base / "dicom", base / "out", model), files, base / "out", 0,
                    r"2 done, 0 skipped, 0 failed", ["3_t1_sag", "7_FLAIR_ax", "run_summary.json", "seg_volumes_all.csv"])


def single_dcm_file(base, model, tools):
    files = _dicom(base / "dicom", extension=".dcm")
    return Scenario(_run_args(files[3], base / "out", model), files, base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["3_T1_MPRAGE", "run_summary.json", "seg_volumes_all.csv"], note="the file's whole series (12 files)")


def multiframe_dicom(base, model, tools):
    src = write_multiframe_dicom(base / "in" / "enhanced.dcm", np.ones((24, 28, 12)) * 7 + np.arange(12))
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"enhanced\.dcm is a multi-frame DICOM .*dcm2niix")


def unreadable_dcm(base, model, tools):
    src = base / "in" / "scan.dcm"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"not a dicom file at all" * 40)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"cannot read the DICOM file scan\.dcm .*dcm2niix")


def foreign_pickle(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    ckpt = base / "model" / "evil.pth"
    ckpt.parent.mkdir()
    tools.write_forbidden_pickle(ckpt)
    return Scenario(_run_args(src, base / "out", ckpt), [src, ckpt], base / "out", 3,
                    r"refused: evil\.pth holds executable objects \(ckpt_factory\.UntrustedObject\)")


def os_system_pickle(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    ckpt = base / "model" / "model.pth"
    ckpt.parent.mkdir()
    marker = base / "PWNED"
    tools.write_os_system_pickle(ckpt, marker)

    def check(o: Outcome) -> None:
        assert not marker.exists(), "the pickle's os.system call ran"

    return Scenario(_run_args(src, base / "out", ckpt), [src, ckpt], base / "out", 3,
                    r"refused: model\.pth holds executable objects \(os\.system\) \u2014 only load checkpoints you "
                    r"trust", check=check, note="marker file not created")


def checkpoint_cut_in_half(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)
    ckpt = base / "model" / "half.pth"
    ckpt.parent.mkdir()
    tools.write_official(ckpt, heads={"T1": 1})
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    return Scenario(_run_args(src, base / "out", ckpt), [src, ckpt], base / "out", 3,
                    r"cannot read checkpoint .*half\.pth: .*truncated")


def empty_volume(base, model, tools):
    src = write_raw_nifti(base / "in" / "empty.nii.gz", np.zeros(SHAPE, np.float32), qform=Q, qcode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"empty\.nii\.gz: the volume is empty")


def nan_voxels(base, model, tools):
    data = blob_head(SHAPE).data
    data[3:5, 4:6, 5:7] = np.nan
    src = write_raw_nifti(base / "in" / "nan.nii.gz", data, qform=Q, qcode=1)
    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 2,
                    r"nan\.nii\.gz: the volume contains 8 NaN/Inf voxels")


def scaled_int16_ct(base, model, tools):
    src = write_raw_nifti(base / "in" / "ct.nii.gz", np.round(blob_head(SHAPE).data * 15) - 1024.0, qform=Q,
                          qcode=1, slope=1.0, inter=-1024.0, dtype=np.int16)

    def check(o: Outcome) -> None:
        import json

        inp = json.loads((o.scenario.out / "ct" / "summary.json").read_text())["input"]
        assert (inp["on_disk_dtype"], inp["scl_slope"], inp["scl_inter"]) == ("int16", 1.0, -1024.0)

    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["ct", "run_summary.json", "seg_volumes_all.csv"], check=check, note="on-disk int16, scl_slope 1, scl_inter -1024 in summary.json")


def uint8_with_intercept(base, model, tools):
    img8 = np.clip(np.round(blob_head(SHAPE, seed=3).data * 2), 0, 250)
    src = write_raw_nifti(base / "in" / "mr8.nii.gz", img8 + 100.0, qform=Q, qcode=1, slope=1.0, inter=100.0,
                          dtype=np.uint8)

    def check(o: Outcome) -> None:
        assert "label map" not in o.stderr

    return Scenario(_run_args(src, base / "out", model), [src], base / "out", 0, r"1 done, 0 skipped, 0 failed",
                    ["mr8", "run_summary.json", "seg_volumes_all.csv"], check=check, note="no 'looks like a label map' warning")


def precision_auto_on_cpu(base, model, tools):
    src = _nifti(base, "a.nii.gz", qform=Q, qcode=1)

    def check(o: Outcome) -> None:
        import json

        s = json.loads((o.scenario.out / "a" / "summary.json").read_text())
        assert s["precision"] == ("fp16" if str(s["device"]).startswith("cuda") else "fp32")

    args = _run_args(src, base / "out", model, "--precision", "auto")
    args[args.index("--device") + 1] = "auto"
    return Scenario(args, [src], base / "out", 0, r"1 done, 0 skipped, 0 failed", ["a", "run_summary.json", "seg_volumes_all.csv"],
                    check=check, note="what Slicer's Quality Fast + Device Auto sends; fp32 on a CPU")


SCENARIOS: Dict[str, Callable] = {f.__name__: f for f in (
    qform_sform_disagree, pixdim_zero, singular_qform, singular_sform, pixdim_negative, qfac_minus_1,
    negative_det_sform, input_named_like_output, case_folder_contains_input, output_is_input_file,
    output_is_input_folder, output_inside_input_folder, output_read_only, disk_full_tmpfs, disk_full_while_writing,
    folder_with_foreign_files, dicom_series_folder, dicom_two_series, single_dcm_file, multiframe_dicom,
    unreadable_dcm, foreign_pickle, os_system_pickle, checkpoint_cut_in_half, empty_volume, nan_voxels,
    scaled_int16_ct, uint8_with_intercept, precision_auto_on_cpu)}
