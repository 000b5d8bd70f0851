"""The local model store, the SHA-256 cache and the default-model order, with official-format,
Brain-ID and native files generated here (random weights, real key names and shapes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brainfm.errors import CheckpointError, InputError, ModelNotAvailableError
from brainfm.models import hashing, load_model, registry, selection, store
from brainfm.models.jsonfile import read_json

ckpt_factory = pytest.importorskip("ckpt_factory")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("BRAINFM_HOME", str(h))
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")
    return h


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    ckpt_factory.write_official(d / "brainfm_pretrained.pth")
    ckpt_factory.write_official(d / "other_official.pth", seed=5)
    ckpt_factory.write_brainid(d / "brain_id_pretrained.pth")
    ckpt_factory.write_native(d / "finetuned", heads={"T1": 1, "high_res_residual": 1, "segmentation": 33,
                                                     "distance": 4},
                              info={"name": "my-finetuned", "voxel_mm": 2.0,
                                    "quality": {"level": "preview", "real_t1_dice17": 0.734}})
    ckpt_factory.write_forbidden_pickle(d / "evil.pth")
    (d / "garbage.pth").write_bytes(os.urandom(4096))
    return d


class HashCounter:
    """Counts the files hashed through ``brainfm.models.hashing.sha256_file``."""

    def __init__(self, monkeypatch):
        self.paths = []
        real = hashing.sha256_file

        def counting(path, **kw):
            self.paths.append(Path(path).name)
            return real(path, **kw)

        monkeypatch.setattr(hashing, "sha256_file", counting)


def test_add_official_records_it_and_copies_it(home, files):
    src = files / "brainfm_pretrained.pth"
    before = src.read_bytes()
    seen = []
    m = store.add_model(src, progress=lambda f, msg: seen.append(f))
    assert m.name == "official" and m.format == "brainfm-official" and m.storage == "copy"
    assert m.sha256 == hashing.sha256_file(src) and m.size_bytes == src.stat().st_size
    assert m.heads["segmentation"] == 56 and len(m.heads) == 9 and m.label_scheme == "brainfm56"
    assert m.tasks == ["t1", "t2", "flair", "ct", "sr", "seg", "dist", "bias", "reg", "feat"]
    assert m.architecture["num_levels"] == 3 and m.architecture["f_maps"] == 8 and m.voxel_mm == 1.0
    assert seen and seen[-1] == 1.0 and all(b >= a for a, b in zip(seen, seen[1:]))
    assert m.path.is_file() and m.path.read_bytes() == before and m.path.stat().st_ino != src.stat().st_ino
    assert str(m.path).startswith(str(home)) and src.read_bytes() == before  # input never modified
    assert registry.resolve_model("official") == m.path
    assert registry.resolve_model("brainfm-official") == m.path  # the registry id finds the stored copy
    assert registry.resolve_model("default") == m.path
    loaded = load_model(registry.resolve_model("official"))
    assert loaded.info.format == "brainfm-official" and loaded.info.sha256 == m.sha256
    doc = read_json(store.store_file())
    assert doc["format"] == "brainfm-model-store" and [e["name"] for e in doc["models"]] == ["official"]
    assert [x.name for x in store.list_models()] == ["official"]
    assert oct(os.stat(m.path.parent).st_mode & 0o777) == "0o700"


def test_add_native_and_brainid_keep_their_description(home, files):
    native = store.add_model(files / "finetuned.json")  # the sidecar path works too
    assert native.name == "my-finetuned" and native.format == "native" and native.voxel_mm == 2.0
    assert native.quality == {"level": "preview", "real_t1_dice17": 0.734} and native.label_scheme == "fs33"
    assert native.sidecar.is_file() and native.tasks == ["t1", "seg", "dist", "feat"]  # no 1 mm "sr" at 2 mm
    assert load_model(registry.resolve_model("my-finetuned")).info.name == "my-finetuned"
    bid = store.add_model(files / "brain_id_pretrained.pth")
    assert bid.name == "brainid" and bid.format == "brainid" and bid.heads == {"image": 1}
    assert bid.tasks == ["t1", "feat"]
    listed = {d["name"]: d for d in selection.available_models()}
    assert listed["my-finetuned"]["quality_text"] == "preview (merged-17 Dice 0.734 on a real T1)"
    assert listed["brainid"]["quality_text"] == "unmeasured"
    assert not any(d["is_default"] for d in listed.values())  # neither is the official model


@pytest.mark.parametrize("name, words", [
    ("evil.pth", "holds executable objects"),
    ("garbage.pth", "cannot read checkpoint"),
    ("missing.pth", "model file not found"),
])
def test_files_that_are_not_models_are_refused_and_nothing_is_stored(home, files, name, words):
    with pytest.raises((CheckpointError, InputError), match=words):
        store.add_model(files / name)
    assert store.list_models() == [] and not (home / "models" / "store").exists()


def test_names_conflicts_and_idempotent_add(home, files):
    first = store.add_model(files / "brainfm_pretrained.pth")
    again = store.add_model(files / "brainfm_pretrained.pth")
    assert again == first and len(store.list_models()) == 1  # same file: no second copy
    with pytest.raises(InputError, match="already has a different model called 'official'.*--name"):
        store.add_model(files / "other_official.pth")
    other = store.add_model(files / "other_official.pth", name="official-2")
    assert other.name == "official-2" and other.sha256 != first.sha256
    for bad in ("default", "bundled", "../x", "a b", ""):
        with pytest.raises(InputError):
            store.add_model(files / "other_official.pth", name=bad)
    assert selection.default_model().spec == "official"  # the one named "official" wins
    store.remove_model("official")
    assert selection.default_model().spec == "official-2"
    with pytest.raises(ModelNotAvailableError, match="no model 'official'.*official-2"):
        store.get_model("official")
    with pytest.raises(ModelNotAvailableError, match="neither a file that exists nor a model name.*official-2"):
        registry.resolve_model("official")


def test_link_reference_and_remove(home, files, tmp_path):
    src = tmp_path / "copy_of_official.pth"
    src.write_bytes((files / "brainfm_pretrained.pth").read_bytes())
    linked = store.add_model(src, storage="link")
    assert linked.path.stat().st_ino == src.stat().st_ino and linked.path != src
    store.remove_model("official")
    assert not linked.path.exists() and src.is_file()  # the store's link goes, the user's file stays
    ref = store.add_model(src, storage="reference", name="mine")
    assert ref.path == src.resolve() and registry.resolve_model("mine") == src.resolve()
    store.remove_model("mine")
    assert src.is_file()  # never deleted
    with pytest.raises(ModelNotAvailableError, match="no model 'mine'"):
        store.remove_model("mine")


def test_hash_cache_no_rehash_when_unchanged_and_reverify_after_change(home, files, monkeypatch):
    m = store.add_model(files / "brainfm_pretrained.pth")
    counter = HashCounter(monkeypatch)
    for _ in range(3):  # resolve + load as every Slicer Apply does
        load_model(registry.resolve_model("official"))
    assert counter.paths == []
    # a change that keeps size and modification time is still noticed (inode change time on POSIX)
    data = bytearray(m.path.read_bytes())
    st = m.path.stat()
    data[-100] ^= 0xFF
    m.path.write_bytes(bytes(data))
    os.utime(m.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert m.path.stat().st_size == st.st_size and m.path.stat().st_mtime_ns == st.st_mtime_ns
    if os.name != "nt":
        with pytest.raises(CheckpointError, match="checksum mismatch for model 'official'"):
            registry.resolve_model("official")
        assert counter.paths == ["brainfm_pretrained.pth"]
    with pytest.raises(CheckpointError, match="brainfm models remove official"):
        store.verify_model("official")  # explicit verify always hashes again


def test_hash_cache_is_shared_by_processes(home, files):
    """A new process (every Slicer Apply) finds the digest recorded by an earlier one."""
    m = store.add_model(files / "brainfm_pretrained.pth")
    cache = hashing.cache_file()
    entry = read_json(cache)["files"][str(m.path)]
    code = ("import brainfm.models.hashing as h, sys\n"
            "calls = []\nreal = h.sha256_file\n"
            "h.sha256_file = lambda p, **k: calls.append(p) or real(p, **k)\n"
            "from brainfm.models.registry import resolve_model\n"
            "print(resolve_model('official'), len(calls))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "BRAINFM_HOME": str(home)})
    path, calls = out.stdout.split()
    assert path == str(m.path) and calls == "0"
    assert read_json(cache)["files"][str(m.path)] == entry


def test_default_order_official_then_bundled_preview_then_message(home, files, tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError) as e:
        registry.resolve_model("default")
    assert str(e.value).startswith(selection.NO_MODEL_MESSAGE)
    assert "https://github.com/jhuldr/BrainFM#downloads" in str(e.value)
    assert "brainfm models add PATH/TO/brainfm_pretrained.pth" in str(e.value)
    bundled = tmp_path / "bundled"
    monkeypatch.setattr(registry, "BUNDLED_DIR", bundled)
    ckpt_factory.write_native(bundled / "brainfm-compact", info={
        "name": "brainfm-compact", "quality": {"level": "below-preview", "real_t1_dice17": 0.61}})
    with pytest.raises(ModelNotAvailableError, match="below preview quality.*--model bundled"):
        registry.resolve_model("default")
    assert registry.resolve_model("bundled") == bundled / "brainfm-compact.safetensors"  # still usable
    ckpt_factory.write_native(bundled / "brainfm-compact", info={
        "name": "brainfm-compact", "quality": {"level": "preview", "real_t1_dice17": 0.734}})
    assert selection.default_model().spec == "bundled"
    assert registry.resolve_model("default") == bundled / "brainfm-compact.safetensors"
    store.add_model(files / "finetuned.safetensors")  # a fine-tuned model does not change the default
    assert selection.default_model().spec == "bundled"
    store.add_model(files / "brainfm_pretrained.pth")
    chosen = selection.default_model()
    assert chosen.spec == "official" and registry.resolve_model("default") == store.get_model("official").path
    listed = selection.available_models()
    assert [d["name"] for d in listed] == ["my-finetuned", "official", "bundled"]
    assert [d["name"] for d in listed if d["is_default"]] == ["official"]


def test_no_default_message_lists_stored_models(home, files):
    store.add_model(files / "finetuned.safetensors")
    with pytest.raises(ModelNotAvailableError, match="Models in your store.*my-finetuned"):
        selection.default_model()


_ADD = "import sys; from brainfm.models import store; store.add_model(sys.argv[1], name=sys.argv[2])"


def test_two_processes_adding_at_once_both_land_in_a_valid_store(home, files):
    env = {**os.environ, "BRAINFM_HOME": str(home)}
    jobs = [("brainfm_pretrained.pth", "a"), ("other_official.pth", "b"), ("finetuned.safetensors", "c"),
            ("brain_id_pretrained.pth", "d")]
    procs = [subprocess.Popen([sys.executable, "-c", _ADD, str(files / f), n], env=env, stderr=subprocess.PIPE,
                              text=True) for f, n in jobs]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    doc = json.loads(store.store_file().read_text())
    assert sorted(e["name"] for e in doc["models"]) == ["a", "b", "c", "d"]
    for m in store.list_models():
        store.verify_model(m.name)
    leftovers = [p for p in (home / "models").rglob("*") if p.name.endswith((".part", ".tmp", ".link"))]
    assert leftovers == []


_BUMP = ("import sys\nfrom brainfm.models.jsonfile import update_json\n"
         "for _ in range(int(sys.argv[2])):\n"
         "    update_json(sys.argv[1], lambda d: {'n': d['n'] + 1}, default={'n': 0})\n")


def test_locked_updates_lose_nothing_across_processes(tmp_path):
    target = tmp_path / "counter.json"
    procs = [subprocess.Popen([sys.executable, "-c", _BUMP, str(target), "40"]) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert json.loads(target.read_text()) == {"n": 120}


def test_one_sha256_implementation():
    from brainfm.training import checkpoint, prepare

    assert registry.sha256_file is hashing.sha256_file and prepare.sha256_file is hashing.sha256_file
    assert checkpoint._sha256 is hashing.sha256_file
