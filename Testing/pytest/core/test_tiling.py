"""Tiling, blending, tile-size choice, OOM fallback and device/precision selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brainfm.errors import InputError, ResourceError
from brainfm.inference import device as devmod
from brainfm.inference.forward import forward_tile, run_network, run_with_fallback
from brainfm.inference.tiling import TileAccumulator, blend_window, choose_tile_size, plan_tiles, tile_starts


@pytest.mark.parametrize("size,tile,overlap", [(100, 64, 0.25), (64, 64, 0.5), (37, 16, 0.25), (200, 96, 0.0)])
def test_tiles_cover_every_voxel_inside_bounds(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(size - tile, 0)
    cover = np.zeros(size, int)
    for s in starts:
        assert 0 <= s and s + min(tile, size) <= size
        cover[s:s + tile] += 1
    assert cover.min() >= 1
    if len(starts) > 1 and overlap > 0:  # consecutive tiles overlap by at least the requested amount
        assert min(b - a for a, b in zip(starts, starts[1:])) <= round(tile * (1 - overlap))


def test_plan_tiles_is_cartesian_product():
    tiles = plan_tiles((50, 40, 20), 24, 0.25)
    per = [len(tile_starts(n, 24, 0.25)) for n in (50, 40, 20)]
    assert len(tiles) == per[0] * per[1] * per[2]
    assert all(sl[2] == slice(0, 20) for sl in tiles)  # short axis: one full-length tile


def test_bad_overlap_is_an_input_error():
    with pytest.raises(InputError, match="overlap"):
        tile_starts(100, 32, 1.0)


def test_blend_window_is_smooth_positive_and_peaks_in_the_centre():
    w = blend_window((16, 12, 8))
    assert w.shape == (16, 12, 8) and w.dtype == np.float32
    assert float(w.min()) > 0 and float(w.max()) <= 1.0
    assert np.allclose(w, w[::-1, ::-1, ::-1])  # symmetric
    assert w[8, 6, 4] == pytest.approx(w.max()) and w[0, 0, 0] < 0.01


def test_accumulator_reproduces_a_tile_independent_field_exactly(rng):
    shape = (30, 26, 20)
    field = rng.normal(size=(2,) + shape).astype(np.float32)
    acc = TileAccumulator(shape)
    for sl in plan_tiles(shape, 16, 0.25):
        acc.add(sl, {"f": torch.from_numpy(field[(slice(None),) + sl][None].copy())})
    out = acc.result()["f"]
    np.testing.assert_allclose(out, field, rtol=1e-5, atol=1e-5)


def test_choose_tile_size_respects_budget_and_rules():
    t = choose_tile_size((300, 300, 300), 2.0e9, 3000.0)
    assert t % 16 == 0 and t >= 64 and t**3 * 3000.0 <= 2.0e9
    assert choose_tile_size((300, 300, 300), 1.0, 3000.0) == 64  # never below 64
    assert choose_tile_size((70, 60, 50), 1e15, 3000.0) == 70  # never above the volume


class _Pointwise(torch.nn.Module):
    """A 'network' without spatial context: tiling must give exactly the whole-volume result."""

    def __init__(self, limit_voxels=None):
        super().__init__()
        self.limit = limit_voxels
        self.calls = []
        self.head = torch.nn.Module()
        self.head.final_conv_A = torch.nn.Conv3d(2, 1, 1)

    def forward(self, x, *, heads=None):
        self.calls.append(tuple(x.shape[2:]))
        if self.limit is not None and x[0, 0].numel() > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        feat = torch.cat([x, x * x], 1)
        out = {"feat": feat}
        for h in heads if heads is not None else ["A"]:
            out[h] = getattr(self.head, f"final_conv_{h}")(feat)
        return out


def test_tiled_equals_whole_for_a_pointwise_net(rng):
    torch.manual_seed(0)
    net = _Pointwise()
    img = rng.random((33, 29, 21)).astype(np.float32)
    whole = run_network(net, img, heads=["A"], want_feat=True, device=torch.device("cpu"))
    tiled = run_network(net, img, heads=["A"], want_feat=True, device=torch.device("cpu"), tile_size=16)
    assert len(net.calls) > 2  # really tiled
    assert set(whole) == {"A", "feat"} and whole["A"].shape == (1, 33, 29, 21)
    np.testing.assert_allclose(tiled["A"], whole["A"], atol=1e-5)
    np.testing.assert_allclose(tiled["feat"], whole["feat"], atol=1e-5)


def test_only_requested_outputs_are_accumulated(rng):
    out = run_network(_Pointwise(), rng.random((8, 8, 8)).astype(np.float32), heads=["A"], want_feat=False,
                      device=torch.device("cpu"))
    assert set(out) == {"A"}


def test_oom_retries_with_tiles_then_raises_resource_error(rng):
    img = rng.random((40, 40, 40)).astype(np.float32)
    net = _Pointwise(limit_voxels=24**3)
    out, used = run_with_fallback(net, img, tile_size=None, fallback_tile_size=24, heads=["A"], want_feat=False,
                                  device=torch.device("cpu"))
    assert used == 24 and out["A"].shape == (1, 40, 40, 40)
    assert net.calls[0] == (40, 40, 40) and all(max(c) <= 24 for c in net.calls[1:])
    with pytest.raises(ResourceError, match="24\\^3 tiles") as e:
        run_with_fallback(_Pointwise(limit_voxels=10), img, tile_size=None, fallback_tile_size=24, heads=["A"],
                          want_feat=False, device=torch.device("cpu"))
    # on the CPU the advice never sends the user to the CPU, nor to options that do not exist
    assert "--device cpu" not in str(e.value) and "fast mode" not in str(e.value)
    assert "--tile-size" in str(e.value)


def test_bf16_backbone_keeps_heads_in_fp32(rng):
    torch.manual_seed(0)
    net = _Pointwise()
    x = torch.from_numpy(rng.random((1, 1, 8, 8, 8)).astype(np.float32))
    ref = forward_tile(net, x, ["A"], True, None)
    low = forward_tile(net, x, ["A"], True, torch.bfloat16)
    assert low["A"].dtype == torch.float32 and low["feat"].dtype == torch.float32
    torch.testing.assert_close(low["A"], ref["A"], atol=2e-2, rtol=2e-2)


def test_device_selection_and_errors(monkeypatch):
    assert devmod.select_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "_mps_available", lambda: False)
    assert devmod.select_device("auto").type == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ResourceError, match="device='cpu'") as e:
            devmod.select_device(name)
        assert "CPU-only" in str(e.value) or "no CUDA GPU" in str(e.value)
    with pytest.raises(ResourceError, match="MPS"):
        devmod.select_device("mps")
    with pytest.raises(InputError, match="unknown device"):
        devmod.select_device("tpu-ish!")


def test_precision_rules():
    cpu = torch.device("cpu")
    assert devmod.autocast_dtype("fp32", cpu) is None
    assert devmod.autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(InputError, match="fp16.*CUDA"):
        devmod.autocast_dtype("fp16", cpu)
    with pytest.raises(InputError, match="unknown precision"):
        devmod.autocast_dtype("int8", cpu)


def test_memory_model_and_budget():
    assert devmod.default_budget_bytes(torch.device("cpu")) > 0
    # at least 1.5x the measured peak of this implementation at 96^3 (935 B/voxel, bench_inference.py)
    assert devmod.forward_bytes_per_voxel(64) >= 1.5 * 935
    assert devmod.forward_bytes_per_voxel(8) < devmod.forward_bytes_per_voxel(64)
