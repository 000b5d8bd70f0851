"""brainfm.models.registry: torch-free import, cache dir, model/atlas resolution, verified downloads."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from brainfm.errors import CheckpointError, InputError, ModelNotAvailableError
from brainfm.models import registry


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "bfm_home"
    monkeypatch.setenv("BRAINFM_HOME", str(h))
    monkeypatch.delenv("BRAINFM_ATLAS", raising=False)
    return h


def atlas_registry(url, sha):
    return [{"id": "gca", "version": "1", "kind": "atlas", "filename": "gca.mgz", "sha256": sha, "url": url,
             "bundled": False, "description": "test atlas"},
            {"id": "m1", "version": "1", "kind": "model", "filename": "m1.safetensors", "sha256": sha, "url": url,
             "bundled": False, "description": "test model"}]


def test_registry_module_imports_no_torch():
    code = "import sys, brainfm.models.registry as r; r.list_entries(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entries_content():
    entries = {e["id"]: e for e in registry.list_entries()}
    assert set(entries) == {"brainfm-compact", "brainfm-official", "brainid-official", "gca"}
    for e in entries.values():
        assert set(e) >= {"id", "version", "kind", "filename", "sha256", "url", "bundled", "description"}
    assert entries["brainfm-compact"]["bundled"] is True
    assert entries["brainfm-official"]["url"] is None and entries["brainid-official"]["url"] is None
    gca = entries["gca"]
    assert gca["kind"] == "atlas" and gca["url"].startswith("https://raw.githubusercontent.com/jhuldr/BrainFM/")
    assert [e["id"] for e in registry.list_entries(kind="atlas")] == ["gca"]


def test_gca_checksum_matches_shared_copy(shared_data):
    p = shared_data / "BrainFM" / "files" / "gca.mgz"
    if not p.is_file():
        pytest.skip(f"{p} not present")
    assert registry.sha256_file(p) == registry.get_entry("gca")["sha256"]


def test_cache_dir_env_override_and_private_mode(home):
    d = registry.cache_dir()
    assert d == home and d.is_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_resolve_model_paths_and_bundled_message(home, tmp_path, monkeypatch):
    f = tmp_path / "my.pth"
    f.write_bytes(b"x")
    assert registry.resolve_model(str(f)) == f
    with pytest.raises(ModelNotAvailableError, match="neither a file that exists nor a model name"):
        registry.resolve_model(str(tmp_path / "nope.pth"))
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(ModelNotAvailableError) as e:
        registry.resolve_model("bundled")
    assert str(e.value) == registry.BUNDLED_MISSING_MESSAGE
    assert "brainfm models add PATH/TO/brainfm_pretrained.pth" in str(e.value)
    assert "https://github.com/jhuldr/BrainFM#downloads" in str(e.value) and "GPU run" not in str(e.value)
    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "brainfm-compact.safetensors").write_bytes(b"w")
    assert registry.resolve_model("bundled") == tmp_path / "bundled" / "brainfm-compact.safetensors"
    assert registry.resolve_model("bundled") == registry.resolve_model("brainfm-compact")


def test_resolve_registry_model_without_url(home):
    with pytest.raises(ModelNotAvailableError, match="no download link.*--model PATH/TO/brainfm_pretrained.pth"):
        registry.resolve_model("brainfm-official")
    cached = home / "models" / "brainfm_pretrained.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert registry.resolve_model("brainfm-official") == cached  # no sha256 recorded: used as is


def test_download_file_url_good_bad_and_unreachable(home, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    good = registry.sha256_file(src)
    seen = []
    dest = registry.download(src.as_uri(), home / "d" / "a.bin", sha256=good, progress=lambda f, m: seen.append(f))
    assert dest.read_bytes() == src.read_bytes() and seen[-1] == 1.0
    assert os.listdir(dest.parent) == ["a.bin"]  # no partial file left
    with pytest.raises(CheckpointError, match="checksum mismatch.*corrupt or tampered"):
        registry.download(src.as_uri(), home / "d" / "b.bin", sha256="0" * 64)
    assert os.listdir(dest.parent) == ["a.bin"]  # nothing saved on mismatch
    with pytest.raises(ModelNotAvailableError, match="cannot download"):
        registry.download((tmp_path / "missing.bin").as_uri(), home / "d" / "c.bin", sha256=good)
    with pytest.raises(InputError, match="only http, https and file"):
        registry.download("ftp://example.org/x", home / "d" / "e.bin", sha256=good)


def test_registry_model_download_and_cache_check(home, tmp_path):
    src = tmp_path / "m1.safetensors"
    src.write_bytes(b"model bytes")
    reg = atlas_registry(src.as_uri(), registry.sha256_file(src))
    p = registry.resolve_model("m1", registry=reg)
    assert p == home / "models" / "m1.safetensors" and p.read_bytes() == b"model bytes"
    p.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="checksum mismatch for cached"):
        registry.resolve_model("m1", registry=reg)


def test_resolve_atlas_order(home, tmp_path, monkeypatch):
    src = tmp_path / "gca_src.mgz"
    src.write_bytes(b"atlas bytes")
    reg = atlas_registry(src.as_uri(), registry.sha256_file(src))
    explicit = tmp_path / "my_atlas.mgz"
    explicit.write_bytes(b"mine")
    assert registry.resolve_atlas(str(explicit), registry=reg) == explicit
    with pytest.raises(InputError, match="atlas file not found"):
        registry.resolve_atlas(str(tmp_path / "none.mgz"), registry=reg)
    monkeypatch.setenv("BRAINFM_ATLAS", str(explicit))
    assert registry.resolve_atlas(registry=reg) == explicit
    monkeypatch.delenv("BRAINFM_ATLAS")
    got = registry.resolve_atlas(registry=reg)  # downloaded into the cache
    assert got == home / "atlases" / "gca.mgz" and got.read_bytes() == b"atlas bytes"
    src.unlink()  # now "offline": the cached copy is used
    assert registry.resolve_atlas(registry=reg) == got


def test_resolve_atlas_offline_message(home, tmp_path):
    reg = atlas_registry((tmp_path / "unreachable.mgz").as_uri(), "a" * 64)
    with pytest.raises(ModelNotAvailableError) as e:
        registry.resolve_atlas(registry=reg)
    msg = str(e.value)
    assert "gca.mgz" in msg and "BRAINFM_ATLAS" in msg and "--atlas" in msg
    assert not (home / "atlases" / "gca.mgz").exists()


def test_a_failed_download_is_not_tried_again_for_a_while(home, tmp_path, monkeypatch):
    # a network that drops connections makes each try wait for the timeout: one try per RETRY_AFTER_S
    src = tmp_path / "gca_src.mgz"
    reg = atlas_registry(src.as_uri(), "b" * 64)
    calls = []
    real = registry.download
    monkeypatch.setattr(registry, "download", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(ModelNotAvailableError, match="cannot download"):
        registry.resolve_atlas(registry=reg)
    marker = home / "atlases" / ("gca.mgz" + registry.UNREACHABLE_SUFFIX)
    assert marker.is_file() and len(calls) == 1
    with pytest.raises(ModelNotAvailableError, match="not tried again") as e:
        registry.resolve_atlas(registry=reg)
    assert len(calls) == 1 and "BRAINFM_ATLAS" in str(e.value) and str(marker) in str(e.value)
    # once RETRY_AFTER_S has passed, a new try; when it succeeds, the note goes
    src.write_bytes(b"atlas bytes")
    reg = atlas_registry(src.as_uri(), registry.sha256_file(src))
    old = marker.stat().st_mtime - registry.RETRY_AFTER_S - 1
    os.utime(marker, (old, old))
    assert registry.resolve_atlas(registry=reg).read_bytes() == b"atlas bytes"
    assert len(calls) == 2 and not marker.exists()
