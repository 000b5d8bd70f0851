"""Sampling onto a subdivided grid (a coarse model's outputs on a 1 mm grid) without grid_sample:
the values of the general pull-back (``resample_to_grid``, both backends), for permuted and flipped
axes, fractional offsets, voxels outside the source, and in the product's mapper."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.geometry import GridMapper, resample_to_grid
from brainfm.geometry.subdivide import Subdivision
from brainfm.volume import Volume


def _case(seed: int, factor: int, *, aligned: bool):
    """A 2 mm source and a target grid ``factor`` times finer along permuted, flipped source axes,
    extending beyond the source on some sides. ``aligned``: target voxels are voxels of the source
    subdivided over its box (else shifted by a fraction of a target voxel)."""
    rng = np.random.default_rng(seed)
    src_shape = tuple(int(n) for n in rng.integers(4, 9, 3))
    src = np.eye(4)
    src[:3, :3] = np.diag([2.0, 2.0, 2.0])
    src[:3, 3] = rng.normal(size=3) * 10
    perm, signs = rng.permutation(3), rng.choice([-1, 1], 3)
    lin = np.zeros((3, 3))
    for j in range(3):
        lin[perm[j], j] = signs[j] * 2.0 / factor
    shape = tuple(int(src_shape[perm[j]] * factor + rng.integers(-2, 4)) for j in range(3))
    # source voxel (i - (f - 1) / 2) / f of the subdivided box, shifted by whole target voxels
    m = np.eye(4)
    m[:3, :3] = lin / 2.0
    for j in range(3):
        a = perm[j]
        u0 = int(rng.integers(-2, 3)) if signs[j] > 0 else src_shape[a] * factor - 1 + int(rng.integers(-2, 3))
        m[a, 3] = (u0 - (factor - 1) / 2.0) / factor
    if not aligned:
        m[:3, 3] += rng.uniform(0.05, 0.45, 3) / factor
    return src, src_shape, src @ m, shape


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subdivided_sampling_equals_the_general_pull_back(seed, factor, aligned):
    src_aff, src_shape, dst_aff, dst_shape = _case(seed, factor, aligned=aligned)
    mapper = GridMapper(src_aff, src_shape, dst_aff, dst_shape)
    assert mapper.kind == "resample" and mapper.subdivision is not None
    assert mapper.subdivision.factor == factor
    assert (mapper.subdivision.fine_permutation is not None) == aligned
    rng = np.random.default_rng(seed + 10)
    ch = rng.normal(size=(3,) + src_shape).astype(np.float32)
    for backend in ("torch", "scipy"):
        ref = np.stack([resample_to_grid(Volume(c, src_aff), dst_aff, dst_shape, fill=-5.0, backend=backend).data
                        for c in ch], -1)
        np.testing.assert_allclose(mapper.channels(ch, "linear", -5.0), ref, rtol=0, atol=2e-5)
    assert (ref == -5.0).any() and (ref != -5.0).any()  # voxels outside the source take the fill
    vox = np.argwhere(np.ones(dst_shape, bool))[rng.permutation(int(np.prod(dst_shape)))[:400]]
    want = ref[vox[:, 0], vox[:, 1], vox[:, 2]]
    np.testing.assert_allclose(mapper.points(ch, vox, "linear", -5.0), want, rtol=0, atol=2e-5)
    # the channels side by side in memory (how the refinement stores its probabilities): same values
    cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(ch, 0, -1)), -1, 0)
    np.testing.assert_allclose(mapper.points(cl, vox, "linear", -5.0), want, rtol=0, atol=2e-5)


def test_subdivision_is_recognised_only_for_whole_factors_along_the_axes():
    assert Subdivision.of(np.diag([0.5, 0.5, 0.5, 1.0]), (4, 4, 4)).axes == (0, 1, 2)
    swapped = np.array([[0, -0.5, 0, 3.25], [0.5, 0, 0, 0.25], [0, 0, 0.5, 0.25], [0, 0, 0, 1.0]])
    sub = Subdivision.of(swapped, (4, 4, 4))
    assert sub.axes == (1, 0, 2) and sub.factor == 2 and sub.fine_permutation is not None
    assert Subdivision.of(np.diag([0.5, 0.5, 1 / 3, 1.0]), (4, 4, 4)) is None  # factors differ per axis
    assert Subdivision.of(np.diag([0.4, 0.4, 0.4, 1.0]), (4, 4, 4)) is None  # not a whole factor
    c, s = np.cos(0.2), np.sin(0.2)
    oblique = np.diag([0.5, 0.5, 0.5, 1.0])
    oblique[:2, :2] = 0.5 * np.array([[c, -s], [s, c]])
    assert Subdivision.of(oblique, (4, 4, 4)) is None
    assert Subdivision.of(np.diag([0.5, 0.5, 0.5, 1.0]), (4, 1, 4)) is None  # a single-voxel axis
    # a coarser target is anti-aliased by the general path, never subdivided
    assert GridMapper(np.eye(4), (8, 8, 8), np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4)).subdivision is None


def test_sampling_at_the_source_voxels_themselves_is_exact():
    """Target voxels that coincide with source voxels (fractional weight 0) take their values exactly;
    the cell is counted from the slot, so no rounding of the position moves it to a neighbour."""
    m = np.diag([0.5, 0.5, 0.5, 1.0])  # target 2k lies on source voxel k
    sub = Subdivision.of(m, (5, 4, 3))
    arr = np.arange(60, dtype=np.float32).reshape(1, 5, 4, 3)
    vox = np.array([[2 * i, 2 * j, 2 * k] for i in range(5) for j in range(4) for k in range(3)])
    got = sub.points(arr, vox)[:, 0]
    assert got.tolist() == arr[0][vox[:, 0] // 2, vox[:, 1] // 2, vox[:, 2] // 2].tolist()
    mid = sub.points(arr, np.array([[1, 0, 0], [3, 2, 2]]))[:, 0]
    np.testing.assert_allclose(mid, [(0 + 12) / 2, (arr[0, 1, 1, 1] + arr[0, 2, 1, 1]) / 2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["ras", "lps_stored", "left_handed"])
def test_coarse_model_outputs_equal_with_and_without_the_subdivision(case, monkeypatch):
    """A 2 mm model on 1 mm inputs (any axis order): the refined labels, the synthesis and the distance
    maps are those of the general path (grid_sample), which the subdivision replaces."""
    import torch

    import brainfm.geometry.mapping as mapping
    from brainfm.inference import Predictor
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.common import LoadedModel, ModelInfo
    from fixtures import GEOMETRY_CASES, blob_head

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "segmentation": 33, "distance": 4}))
    info = ModelInfo(name="tiny", version="1", format="native", sha256="", config=net.config,
                     label_scheme="fs33", voxel_mm=2.0)
    p = Predictor(LoadedModel(net, info), device="cpu")
    head = blob_head((34, 38, 30), GEOMETRY_CASES[case])
    used = []
    real = GridMapper.points

    def spy(self, *a, **k):
        used.append(self.subdivision is not None)
        return real(self, *a, **k)

    monkeypatch.setattr(GridMapper, "points", spy)
    fast = p.predict(head, tasks=["t1", "seg", "dist"], seg_method="fit")
    assert used and all(used)  # the refinement's prior went through the subdivision
    monkeypatch.setattr(mapping.Subdivision, "of", classmethod(lambda cls, *a, **k: None))
    general = p.predict(head, tasks=["t1", "seg", "dist"], seg_method="fit")
    assert used[-1] is False
    assert fast.metadata["seg_method"] == general.metadata["seg_method"]
    # the two paths agree up to float32 rounding, so a label may differ only where two structures tie
    # within it (on this random network one voxel in the LPS case: decision margin 1e-6); a path that
    # maps the wrong voxel changes thousands
    differ = np.asarray(fast["seg"].data) != np.asarray(general["seg"].data)
    assert int(differ.sum()) <= differ.size // 10000, f"{int(differ.sum())} of {differ.size} labels differ"
    for key in ("synth_t1", "dist_lp", "dist_rw"):
        np.testing.assert_allclose(np.asarray(fast[key].data), np.asarray(general[key].data), rtol=0, atol=1e-4)
