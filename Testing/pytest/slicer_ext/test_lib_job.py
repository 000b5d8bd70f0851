"""BrainFMJob (export -> child -> import) with a stand-in ``brainfm`` package: fast, no torch.

The stand-in is a real child process (``python -m brainfm`` resolved through PYTHONPATH) that
reads the exported file with nibabel and writes a case folder like the engine does.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")
pytest.importorskip("nibabel")

from fixtures import GEOMETRY_CASES  # noqa: E402

from BrainFMSceneLib._errors import InputError, ResourceError  # noqa: E402
from BrainFMSceneLib.job import BrainFMJob, JobOutcome  # noqa: E402
from BrainFMSceneLib.parameters import RunParameters  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras, volume_to_array_and_affine  # noqa: E402

FAKE_MAIN = """
import json, os, sys, time
args = sys.argv[1:]
inp, out = args[1], args[args.index("-o") + 1]
print("BRAINFM_PROGRESS 0.1000 fake start", flush=True)
mode = os.environ["FAKE_MODE"]
if mode == "fail":
    print('BRAINFM_ERROR {"type": "ResourceError", "message": "CUDA out of memory: use the CPU"}', flush=True)
    sys.exit(4)
if mode == "sleep":
    time.sleep(600)
import nibabel as nib, numpy as np
img = nib.load(inp)
case = os.path.join(out, "input")
os.makedirs(case)
nib.save(nib.Nifti1Image((np.asarray(img.dataobj) * 2).astype(np.float32), img.affine),
         os.path.join(case, "synth_t1.nii.gz"))
summary = {"outputs": {"synth_t1": {"path": "synth_t1.nii.gz", "kind": "image", "units": "a.u."}},
           "args": args, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES")}
summary["home"] = os.environ.get("BRAINFM_HOME")
json.dump(summary, open(os.path.join(case, "summary.json"), "w"))
print("BRAINFM_PROGRESS 1.0000 done", flush=True)
"""


@pytest.fixture()
def fake_env(tmp_path):
    pkg = tmp_path / "fakepkgs" / "brainfm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(FAKE_MAIN))

    def make(mode):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(pkg.parent)
        env["FAKE_MODE"] = mode
        return env

    return make


def _job(scene, node, env, **kw):
    params = RunParameters(tasks=("t1",), device="cpu")
    return BrainFMJob(scene, node, params, python=sys.executable, base_env=env, **kw)


def test_job_runs_child_and_imports_on_the_input_grid(scene, fake_env):
    aff = GEOMETRY_CASES["left_handed"]
    data = np.random.default_rng(0).normal(size=(10, 12, 9)).astype(np.float32)
    node = add_volume(scene, data, aff, "T2 scan")
    job = _job(scene, node, fake_env("ok"), keep_temp=True, env_updates={"BRAINFM_HOME": "/models/cache"})
    seen, finished = [], []
    job.progress.connect(lambda f, m: seen.append((f, m)))
    job.finished.connect(finished.append)
    job.start()
    end = time.monotonic() + 60
    while job.outcome is None and time.monotonic() < end:  # GUI-style polling
        job.poll()
        time.sleep(0.05)
    outcome = job.outcome
    assert isinstance(outcome, JobOutcome) and outcome.ok and finished == [outcome]
    out = outcome.imported.nodes["synth_t1"]
    assert out.GetName() == "T2 scan synthetic T1w"
    arr, got = volume_to_array_and_affine(out)
    np.testing.assert_array_equal(got, ijk_to_ras(node))
    np.testing.assert_allclose(arr, 2 * data, rtol=1e-6)  # voxel order survived the left-handed round trip
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert "fake start" in [m for _, m in seen]
    summary = json.loads(next(job.output_dir.glob("*/summary.json")).read_text())
    assert summary["home"] == "/models/cache"
    assert summary["cvd"] == "-1" and summary["args"][summary["args"].index("--device") + 1] == "cpu"
    assert job.runner.temp_dir.is_dir()  # keep_temp=True keeps it for debugging
    job.runner.keep_temp = False
    job.runner.cleanup()


def test_job_failure_and_cancel_leave_the_scene_unchanged(scene, fake_env):
    node = add_volume(scene, np.ones((6, 6, 6), np.float32), np.eye(4), "scan")
    n_nodes = scene.GetNumberOfNodes()
    failed = _job(scene, node, fake_env("fail")).start().wait(timeout=60)
    assert not failed.ok and failed.process.exit_code == 4 and failed.imported is None
    with pytest.raises(ResourceError, match="use the CPU"):
        failed.raise_for_error()
    job = _job(scene, node, fake_env("sleep"))
    job.start()
    temp = job.runner.temp_dir
    end = time.monotonic() + 60
    while not any(getattr(e, "message", "") == "fake start" for e in job.poll()) and time.monotonic() < end:
        time.sleep(0.05)
    job.cancel()
    outcome = job.wait(timeout=60)
    assert outcome.process.cancelled and not outcome.ok and outcome.imported is None
    assert not temp.exists() and scene.GetNumberOfNodes() == n_nodes


def test_job_rejects_bad_inputs_before_starting(scene, tmp_path):
    image = add_volume(scene, np.ones((4, 4, 4), np.float32), np.eye(4), "img")
    labels = add_volume(scene, np.ones((4, 4, 4), np.int32), np.eye(4), "lab", labelmap=True)
    rgb = add_volume(scene, np.ones((4, 4, 4, 3), np.uint8), np.eye(4), "rgb")
    cases = [
        (labels, RunParameters(), "label map"),
        (rgb, RunParameters(), "color/vector"),
        (image, RunParameters(tasks=("nope",)), "Unknown task"),
    ]
    for node, params, message in cases:
        job = BrainFMJob(scene, node, params)
        with pytest.raises(InputError, match=message):
            job.start()
        assert job.runner._temp_dir is None  # nothing created
    same = BrainFMJob(scene, image, RunParameters(), output_nodes={"synth_t1": image})
    with pytest.raises(InputError, match="is the input volume"):
        same.start()
    missing = BrainFMJob(scene, image, RunParameters(), python=str(tmp_path / "no-such-python"))
    with pytest.raises(ResourceError, match="Could not start"):
        missing.start()
    assert missing.runner._temp_dir is None
