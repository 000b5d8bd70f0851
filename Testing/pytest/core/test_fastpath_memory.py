"""CPU fast path (precision ``auto``, channels_last) and bounded memory: compact blending, the memory
plan, early out-of-memory errors with advice that applies, streamed outputs. No timings here
(speed and memory figures live in Testing/benchmarks/bench_fastpath.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from brainfm.errors import ResourceError
from brainfm.inference import Predictor
from brainfm.inference import device as devmod
from brainfm.inference.forward import run_network
from brainfm.inference.plan import check_plan, memory_advice, plan_memory
from brainfm.inference.tiling import TileAccumulator, plan_tiles
from brainfm.models import BrainFMNet, ModelConfig
from brainfm.tasks.segmentation import channel_indices
from fixtures import blob_head

HEADS = {"T1": 1, "segmentation": 33, "distance": 4}

#: stated agreement of the fast path with fp32 (DESIGN.md, "Precision"): channels_last in fp32 changes
#: only the order of float additions
CL_MAX_REL = 1e-4
CL_LABELS_CHANGED = 1e-3


def tiny(seed=0, heads=None):
    torch.manual_seed(seed)
    return BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(heads or HEADS)))


class _Pointwise(torch.nn.Module):
    """No spatial context: blending must reproduce the whole-volume result."""

    def __init__(self, channels=5):
        super().__init__()
        torch.manual_seed(1)
        self.w = torch.randn(channels, 1, 1, 1, 1)

    def forward(self, x, *, heads=None):
        logits = torch.sin(self.w * x * 7.0)  # (1, C, ...)
        return {"feat": x, "S": logits, "A": 2 * x}


def test_argmax_while_blending_equals_argmax_of_the_blended_logits(rng):
    img = rng.random((70, 23, 19)).astype(np.float32)
    dev = torch.device("cpu")
    full = run_network(_Pointwise(), img, heads=["S", "A"], want_feat=False, device=dev, tile_size=24)
    compact = run_network(_Pointwise(), img, heads=["S", "A"], want_feat=False, device=dev, tile_size=24,
                          reduce={"S": "argmax"})
    assert compact["S"].shape == img.shape and compact["S"].dtype == np.uint8
    np.testing.assert_array_equal(compact["S"], channel_indices(full["S"]))
    np.testing.assert_array_equal(compact["A"], full["A"])


def test_band_holds_one_tile_edge_of_rows_and_matches_whole_volume_sums(rng):
    shape = (100, 30, 26)
    field = rng.normal(size=(3,) + shape).astype(np.float32)
    tiles = plan_tiles(shape, 32, 0.25)
    band, whole = TileAccumulator(shape, tiles, reduce={"h": "float16"}), TileAccumulator(shape)
    peak = 0
    for sl in tiles:
        part = field[(slice(None),) + sl][None]
        band.add(sl, {"f": torch.from_numpy(part.copy()), "h": torch.from_numpy(part.copy())})
        whole.add(sl, {"f": torch.from_numpy(part.copy()), "h": torch.from_numpy(part.copy())})
        peak = max(peak, band.sums_bytes)
    assert band.band == 32
    assert peak <= (2 * 3 + 1) * 4 * 32 * 30 * 26  # two outputs x 3 channels + weights, 32 rows only
    a, b = band.result(), whole.result()
    np.testing.assert_allclose(a["f"], field, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a["f"], b["f"])
    assert a["h"].dtype == np.float16
    np.testing.assert_allclose(a["h"].astype(np.float32), b["h"], rtol=1e-3, atol=1e-3)


def test_tiles_out_of_planned_order_are_refused():
    tiles = plan_tiles((80, 8, 8), 16, 0.25)
    acc = TileAccumulator((80, 8, 8), tiles)
    with pytest.raises(RuntimeError, match="planned order"):
        acc.add(tiles[-1], {"a": torch.ones((1, 1) + tuple(s.stop - s.start for s in tiles[-1]))})


def test_fast_path_agrees_with_fp32_within_the_stated_tolerance():
    net = tiny(3)
    img = blob_head((36, 40, 32))
    ref = Predictor(net, device="cpu", precision="fp32", channels_last=False).predict(img, tasks=["t1", "seg", "dist"])
    fast = Predictor(net, device="cpu", precision="fp32", channels_last=True).predict(img, tasks=["t1", "seg", "dist"])
    assert fast.metadata["channels_last"] is True and ref.metadata["channels_last"] is False
    for key in ("synth_t1", "dist_lp", "dist_rw"):
        a, b = ref[key].data.astype(np.float64), fast[key].data.astype(np.float64)
        assert np.max(np.abs(a - b)) <= CL_MAX_REL * np.max(np.abs(a)), key
    assert np.mean(ref["seg"].data != fast["seg"].data) <= CL_LABELS_CHANGED


def test_precision_auto_picks_bf16_only_with_native_cpu_support_and_a_validated_model(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devmod.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(devmod, "cpu_features", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert devmod.resolve_precision("auto", cpu, bf16_validated=True) == "fp32"  # emulated bf16 is slower
    monkeypatch.setattr(devmod, "cpu_features", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert devmod.resolve_precision("auto", cpu, bf16_validated=True) == "bf16"
    assert devmod.resolve_precision("auto", cpu) == "fp32"  # agreement not measured for this model
    monkeypatch.setattr(devmod, "cpu_features", lambda: frozenset({"amx_bf16"}))
    assert devmod.resolve_precision("auto", cpu, bf16_validated=True) == "bf16"
    assert devmod.resolve_precision("fp32", cpu, bf16_validated=True) == "fp32"  # users can always force fp32
    monkeypatch.setattr(devmod.platform, "machine", lambda: "arm64")
    assert devmod.resolve_precision("auto", cpu, bf16_validated=True) == "fp32"
    assert devmod.resolve_precision("auto", torch.device("cuda"), bf16_validated=True) == "fp16"


def test_predictor_auto_uses_the_model_quality_declaration(monkeypatch):
    from brainfm.models.common import LoadedModel, ModelInfo

    monkeypatch.setattr(devmod, "cpu_has_native_bf16", lambda: True)
    net = tiny()
    info = ModelInfo(name="t", version="0", format="native", sha256="", config=net.config)
    assert Predictor(LoadedModel(net, info), device="cpu").precision == "fp32"
    info.quality = {devmod.BF16_QUALITY_KEY: True}
    assert Predictor(LoadedModel(net, info), device="cpu").precision == "bf16"
    assert Predictor(LoadedModel(net, info), device="cpu", precision="fp32").precision == "fp32"


def test_auto_is_the_default_and_reports_what_it_chose():
    p = Predictor(tiny(), device="cpu")
    assert p.precision_requested == "auto"
    assert p.precision == "fp32"  # a bare network declares no measured bf16 agreement
    assert p.channels_last is True  # f_maps 8: a compact width


def test_budget_too_small_fails_early_with_advice_that_applies():
    net = tiny()
    calls = []
    p = Predictor(net, device="cpu", memory_budget_gb=devmod.resident_bytes() / 1e9 + 0.001)
    with pytest.raises(ResourceError) as e:
        p.predict(blob_head((40, 44, 36)), tasks=["t1", "seg"], progress=lambda f, m: calls.append(m))
    msg = str(e.value)
    assert "memory budget is" in msg and "--memory-gb" in msg and "--tasks" in msg
    assert "--device cpu" not in msg and "fast mode" not in msg
    assert not any("network forward" in m for m in calls)  # refused before any network work


def test_advice_lists_only_options_that_apply():
    base = dict(n_tasks=1, output_frame="1mm", output_voxels=1e6, net_voxels=1e6, streaming=True,
                probabilities=False, feat=False, budget_given=False, need_bytes=1e9, available_bytes=8e9, tiled=True)
    cpu = memory_advice(device=torch.device("cpu"), **base)
    assert not any("--device cpu" in t for t in cpu) and not any("--tasks" in t for t in cpu)
    gpu = memory_advice(device=torch.device("cuda"), **{**base, "n_tasks": 3, "budget_given": True,
                                                        "probabilities": True, "output_frame": "input",
                                                        "output_voxels": 8e6})
    text = " ".join(gpu)
    for opt in ("--device cpu", "--tasks", "--probabilities", "--output-frame 1mm", "--memory-gb"):
        assert opt in text


def test_default_budget_only_warns_when_the_memory_exists():
    kw = dict(output_voxels=1e6, f_maps=8, num_levels=3, channels={"T1": 1}, tasks=["t1"], baseline_bytes=1e8,
              device=torch.device("cpu"))
    over = plan_memory((100, 100, 100), budget_bytes=1.2e8, **kw)
    assert not over.fits
    assert "default budget" in check_plan(over, available_bytes=64e9, advice=["x"])
    with pytest.raises(ResourceError, match="available"):
        check_plan(over, available_bytes=1e6, advice=["x"])
    hard = plan_memory((100, 100, 100), budget_bytes=1.2e8, budget_given=True, **kw)
    with pytest.raises(ResourceError, match="memory budget is 0.1 GB"):
        check_plan(hard, available_bytes=64e9, advice=["x"])


def test_streamed_outputs_equal_kept_outputs():
    net = tiny(1)
    img = blob_head((30, 34, 28))
    kept = Predictor(net, device="cpu").predict(img, tasks=["t1", "seg", "dist"])
    got = {}
    streamed = Predictor(net, device="cpu").predict(img, tasks=["t1", "seg", "dist"],
                                                    on_output=lambda k, v: got.__setitem__(k, v))
    assert streamed.outputs == {} and streamed.metadata["streamed_outputs"] == list(got)
    assert set(got) == set(kept.outputs)
    for k in kept.outputs:
        np.testing.assert_array_equal(got[k].data, kept[k].data)
        np.testing.assert_allclose(got[k].affine, kept[k].affine)
    assert streamed.tables["seg_volumes"] == kept.tables["seg_volumes"]


_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    from fixtures import blob_head
    from brainfm.inference import Predictor
    from brainfm.inference.device import resident_bytes
    from brainfm.models import BrainFMNet, ModelConfig
    torch.set_num_threads(1)
    torch.manual_seed(0)
    heads = {"T1": 1, "segmentation": 33, "distance": 4}
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=heads))
    img = blob_head((128, 128, 128))
    budget = resident_bytes() + 300e6
    p = Predictor(net, device="cpu", memory_budget_gb=budget / 1e9)
    kept = {}
    def sink(key, vol):  # a writer would save it; keep only a checksum
        kept[key] = float(np.asarray(vol.data, np.float64).sum())
    try:  # restart the peak-RSS counter: the peak of the prediction itself (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    pred = p.predict(img, tasks=["t1", "seg", "dist"], on_output=sink)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        peak = min(peak, 1024 * int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]))
    except (OSError, IndexError, ValueError):
        pass
    import os; status = open("/proc/self/status").read()
    print("RESULT " + json.dumps({"status": [l for l in status.splitlines() if l.startswith(("VmHWM", "VmRSS", "RssFile", "RssAnon"))], "peak": peak, "budget": budget, "plan": pred.metadata["memory_plan"],
                                  "tile": pred.metadata["tile_size"], "outputs": sorted(kept),
                                  "full_accumulators": 4.0 * 39 * 128**3}))
""")


def test_large_input_stays_within_a_small_budget(tmp_path):
    """128^3 input, 38 head channels: float32 whole-volume accumulators alone (320 MB) would exceed
    the 300 MB budget above the process's starting memory; the band-wise plan stays within it."""
    from pathlib import Path

    fixtures_dir = str(Path(__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-c", _CHILD, fixtures_dir], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert out["tile"] is not None and out["plan"]["band_rows"] == out["tile"]
    assert out["full_accumulators"] > out["budget"] - out["plan"]["baseline_gb"] * 1e9  # the old design would not fit
    assert out["peak"] <= out["budget"], (out["peak"] / 1e9, out["budget"] / 1e9, out["plan"], out["status"])
    assert out["outputs"] == sorted(["synth_t1", "seg", "dist_lp", "dist_lw", "dist_rp", "dist_rw"])


def test_samseg_peer_is_optional_and_shown_as_a_column():
    from brainfm.evaluation import peer_samseg
    from brainfm.evaluation.table import markdown_table

    assert peer_samseg.find_samseg_python(sys.executable) is None  # samseg is not a brainfm dependency
    skipped = peer_samseg.peer_summary(None, "t1.nii.gz", None, "out")
    assert skipped["status"] == "skipped" and "pip install samseg" in skipped["reason"]
    cmd = peer_samseg.samseg_command("/env/bin/python", "t1.nii.gz", "out", threads=2)
    assert cmd[0] == "/env/bin/python" and cmd[-2:] == ["--threads", "2"]  # argument list, no shell
    rows = [{"row": "segmentation", "status": "ok", "headline": "merged-17 Dice 0.801", "goal": "", "passed": True,
             "command": "c", "peer": {"method": "SAMSEG 0.4a0", "status": "ok", "mean_dice_merged17": 0.815,
                                      "seconds": 523.0, "peak_rss_gb": 4.39, "threads": 1}},
            {"row": "speed", "status": "ok", "headline": "12 s", "goal": "", "passed": None, "command": "d"}]
    md = markdown_table(rows).splitlines()
    assert md[0].split("|")[4].strip() == "peer"
    assert "SAMSEG 0.4a0: merged-17 Dice 0.815, 523 s, 4.39 GB (1 threads)" in md[2]
    assert md[3].split("|")[4].strip() == "-"
    assert "peer" not in markdown_table(rows[1:])  # no peer: the table keeps its columns


def test_plan_counts_the_padded_side_and_picks_tiles_that_need_no_padding():
    # the backbone pads each side to a multiple of 2 ** (levels - 1): 81 voxels cost 96 at 5 levels
    kw = dict(output_voxels=0.0, f_maps=16, channels={"T1": 1}, tasks=[], baseline_bytes=0.0,
              device=torch.device("cpu"))
    aligned = plan_memory((80, 80, 80), num_levels=5, budget_bytes=64e9, **kw)
    odd = plan_memory((81, 80, 80), num_levels=5, budget_bytes=64e9, **kw)
    assert aligned.tile_size is None and odd.tile_size is None
    act = devmod.forward_bytes(96 * 80 * 80, 16) - devmod.forward_bytes(80 ** 3, 16)
    assert odd.forward_bytes - aligned.forward_bytes == pytest.approx(1.15 * act, rel=0.02)
    # a 6-level network (official BrainFM) gets tiles that are multiples of 32 when it must tile
    for levels, step in ((5, 16), (6, 32)):
        small = plan_memory((300, 300, 300), num_levels=levels, budget_bytes=1.0e9, **kw)
        assert small.tile_size is not None and small.tile_size % step == 0 and small.fallback_tile % step == 0


def test_plan_counts_the_refinement_while_the_labels_are_held():
    """A refined segmentation holds its tissue model (REFINE_CHANNELS per output voxel) through
    post-processing, streamed or not; a plain one does not."""
    from brainfm.inference.plan import REFINE_CHANNELS, SLACK

    kw = dict(output_voxels=160 * 192 * 224, f_maps=16, num_levels=5, channels={"segmentation": 33}, tasks=["seg"],
              baseline_bytes=0.0, budget_bytes=64e9, device=torch.device("cpu"))
    for streaming in (False, True):
        plain = plan_memory((80, 96, 112), streaming=streaming, **kw)
        refined = plan_memory((80, 96, 112), streaming=streaming, refine=True, **kw)
        extra = refined.postprocess_bytes - plain.postprocess_bytes
        assert extra == pytest.approx(SLACK * 4.0 * REFINE_CHANNELS * kw["output_voxels"])
        assert refined.forward_bytes == plain.forward_bytes
