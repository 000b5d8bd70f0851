"""Allowed folders, size-limited uploads, zip of the case folder, the model list and the CLI
options (no browser, no trame: runs in the extension-test environment)."""
from __future__ import annotations

import asyncio
import doctest
import importlib
import os
import stat
import zipfile

import pytest

from BrainFMSceneLib._errors import InputError
from brainfm_web.files import (
    AllowedFolders,
    UploadTooLarge,
    max_upload_bytes,
    safe_upload_name,
    save_upload,
    workspace,
    zip_case_folder,
)


async def _chunks(blocks):
    for block in blocks:
        yield block


def _save(blocks, name, folder, max_bytes, declared=None):
    return asyncio.run(save_upload(_chunks(blocks), name, folder, max_bytes=max_bytes, declared_size=declared))


def test_allowed_folders_resolve_links_and_refuse_escapes(tmp_path):
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "scan.nii.gz"
    inside.write_bytes(b"x")
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"y")
    (root / "link.nii.gz").symlink_to(secret)  # a link inside that points outside
    allowed = AllowedFolders([root])
    assert allowed.check(inside) == inside.resolve()
    assert allowed.check(str(root / "sub" / ".." / "sub" / "scan.nii.gz")) == inside.resolve()
    for bad in (secret, root / "link.nii.gz", root / ".." / "secret.nii.gz", tmp_path / "allowed-evil" / "x"):
        with pytest.raises(InputError, match="outside the folders"):
            allowed.check(bad)
    with pytest.raises(InputError, match="not found"):
        allowed.check(root / "missing.nii.gz")
    with pytest.raises(InputError, match="not found"):
        allowed.check(root / "sub")  # a folder is not a file
    with pytest.raises(InputError, match="does not exist"):
        AllowedFolders([tmp_path / "nope"])


def test_upload_names_are_reduced_to_safe_base_names():
    assert safe_upload_name("C:\\scans\\T1 w.nii") == "T1_w.nii"
    assert safe_upload_name("../../etc/cron.d/x.mgz") == "x.mgz"
    assert safe_upload_name("..nii.gz") == "scan.nii.gz"
    for bad in ("notes.txt", "archive.zip", "", "scan.nii.gz.exe"):
        with pytest.raises(InputError, match="not a supported image file"):
            safe_upload_name(bad)


def test_uploads_stop_at_the_limit_and_leave_nothing(tmp_path):
    folder = workspace(parent=tmp_path) / "uploads"
    assert stat.S_IMODE(os.stat(folder.parent).st_mode) == 0o700
    path = _save([b"a" * 600, b"b" * 400], "scan.nii", folder, 1000)
    assert path == folder / "scan.nii" and path.read_bytes() == b"a" * 600 + b"b" * 400
    with pytest.raises(UploadTooLarge, match="larger than"):
        _save([b"a" * 600, b"b" * 401], "big.nii", folder, 1000)
    with pytest.raises(UploadTooLarge, match="at most"):
        _save([b"a"], "declared.nii", folder, 1000, declared=5000)
    with pytest.raises(InputError, match="empty"):
        _save([], "empty.nii", folder, 1000)
    assert sorted(p.name for p in folder.iterdir()) == ["scan.nii"]  # no partial or temporary files
    with pytest.raises(InputError, match="positive"):
        max_upload_bytes(0)


def test_zip_holds_the_case_folder(tmp_path):
    case = tmp_path / "cases" / "head"
    (case / "extra").mkdir(parents=True)
    (case / "summary.json").write_text('{"outputs": {}}')
    (case / "extra" / "seg.nii").write_bytes(b"\x01" * 1000)
    archive = zip_case_folder(case, tmp_path / "cases" / "head.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["head/extra/seg.nii", "head/summary.json"]
        assert zf.read("head/extra/seg.nii") == b"\x01" * 1000
    assert sorted(p.name for p in archive.parent.iterdir()) == ["head", "head.zip"]
    with pytest.raises(InputError, match="no results"):
        zip_case_folder(tmp_path / "missing", tmp_path / "missing.zip")


def test_model_list_is_the_model_store_list_plus_given_files(tmp_path):
    from BrainFMSceneLib.registry import list_models
    from brainfm_web.models import model_options

    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"0")
    options = model_options([weights, tmp_path / "gone.pth"])
    registry = [c.spec for c in list_models()]
    assert registry[0] == "default"
    assert [o["value"] for o in options[: len(registry)]] == registry
    assert options[-2] == {"value": str(weights.resolve()), "title": "mine.safetensors (file)", "available": True,
                           "message": "", "description": ""}
    assert options[-1]["available"] is False and "not found" in options[-1]["message"]


def test_command_line_defaults_to_localhost():
    from brainfm_web.cli import _is_loopback, parse_args

    args = parse_args([])
    assert args.host == "127.0.0.1" and args.port == 8080 and args.allowed_dir is None
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.0.2.1")


@pytest.mark.parametrize("name", ["files", "models", "session", "cli"])
def test_module_examples(name):
    if name == "session":
        pytest.importorskip("slicer", reason="slicer-core wheel not installed")
    module = importlib.import_module(f"brainfm_web.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0, f"brainfm_web.{name}: {result}"
