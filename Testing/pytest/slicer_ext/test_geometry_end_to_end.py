"""End-to-end geometry QA of the Slicer path on every input geometry (real child, real torch).

For RAS, LPS-stored, oblique, left-handed and anisotropic (1 x 1 x 5 mm) inputs, the whole path
(``BrainFMJob``: export -> ``python -m brainfm run`` -> import) runs with a native model whose
weights are chosen so that results are predictable in world coordinates:

* the backbone passes the input through channel 0 (centre-tap identity convolutions, GroupNorm and
  ReLU are monotone), so the synthetic T1 is a monotone function of the input: a bright marker
  ball placed at a known world point must come back at that world point;
* the registration head is zero, so the predicted atlas coordinate is 0 everywhere and the grid
  transform must map every interior subject point ``p`` to the origin (``p + d(p) = 0``);
* the segmentation head labels the brightest features (the marker) Left-Hippocampus (17).

Every volume output must be on the input grid (same dimensions and IJK-to-RAS matrix).
``BRAINFM_GEOMETRY_QA_SIZE`` (default 32) sets the edge of the in-plane grid (96 for the QA run);
``BRAINFM_GEOMETRY_QA_IMAGE`` replaces the synthetic head by a real scan's voxels (QA runs).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")
vtk = pytest.importorskip("vtk")
torch = pytest.importorskip("torch")

from fixtures import affine, blob_head, rotation  # noqa: E402

from BrainFMSceneLib.job import BrainFMJob  # noqa: E402
from BrainFMSceneLib.parameters import RunParameters  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras, volume_to_array_and_affine  # noqa: E402

N = int(os.environ.get("BRAINFM_GEOMETRY_QA_SIZE", "32"))
MARKER_OFFSET_MM = np.array([0.22, -0.18, 0.12]) * N  # off-centre, no symmetry of the head maps it to itself
HEADS = {"T1": 1, "segmentation": 33, "bias_field_log": 1, "registration": 3}
LABEL = 17  # Left-Hippocampus, channel of fs33


def _geometries():
    """name -> (shape, voxel -> RAS affine) with the head centred near the world origin."""
    half = (N - 1) / 2.0
    cases = {
        "ras": ((N, N, N), affine((1, 1, 1), origin=(-half, -half, -half))),
        "lps_stored": ((N, N, N), affine((1, 1, 1), flip=(-1, -1, 1), origin=(half, half, -half))),
        "oblique": ((N, N, N), None),
        "left_handed": ((N, N, N), affine((1, 1, 1), flip=(1, 1, -1), origin=(-half, -half, half))),
        "anisotropic_1x1x5": ((N, N, max(8, round(N / 5))), None),
    }
    rot = rotation(2, 17) @ rotation(0, -9)
    obl = affine((1.1, 0.9, 1.05), rot=rot)
    obl[:3, 3] = -(obl[:3, :3] @ np.full(3, half))
    cases["oblique"] = ((N, N, N), obl)
    shape = cases["anisotropic_1x1x5"][0]
    ani = affine((1, 1, 5))
    ani[:3, 3] = -(ani[:3, :3] @ ((np.array(shape) - 1) / 2.0))
    cases["anisotropic_1x1x5"] = (shape, ani)
    return cases


GEOMETRIES = _geometries()


def _identity_model(path):
    """Native model: channel 0 carries the input through the UNet; heads as in the module doc."""
    from brainfm.models import BrainFMNet, ModelConfig, save_native

    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, unit_feat=False, heads=HEADS))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.zero_()
            if name.endswith("groupnorm.weight"):
                p.fill_(1.0)
            elif name.endswith("conv.weight"):
                p[0, 0, 1, 1, 1] = 1.0  # decoders: channel 0 of the concatenation is the skip
        net.head.final_conv_T1.weight[0, 0] = 1.0
        # segmentation: background wins (bias 8) except where feature 0 is large (the marker)
        net.head.final_conv_segmentation.bias[0] = 8.0  # feature 0: ~17 at the marker, < 4 elsewhere
        from brainfm.labels import get_scheme

        net.head.final_conv_segmentation.weight[get_scheme("fs33").fs_values.index(LABEL), 0] = 1.0
    weights, _ = save_native(net.eval(), path / "identity.safetensors",
                             info={"name": "identity-qa", "version": "0", "label_scheme": "fs33"})
    return str(weights)


@pytest.fixture(scope="module")
def model_and_atlas(tmp_path_factory):
    from brainfm.io import write_volume

    folder = tmp_path_factory.mktemp("geometry_qa")
    atlas_aff = np.eye(4)
    atlas_aff[:3, 3] = -16.0
    atlas = write_volume(blob_head((32, 32, 32), atlas_aff), folder / "atlas.nii.gz")
    return _identity_model(folder), str(atlas)


def _head_voxels(shape):
    """:func:`fixtures.blob_head` voxels, or those of the scan named by ``BRAINFM_GEOMETRY_QA_IMAGE``
    (zoomed to ``shape`` and scaled to 0..110, e.g. a real MRI from the shared data)."""
    path = os.environ.get("BRAINFM_GEOMETRY_QA_IMAGE")
    if not path:
        return blob_head(shape).data.copy()
    import nibabel as nib
    from scipy import ndimage

    scan = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    scan = ndimage.zoom(scan, [s / t for s, t in zip(shape, scan.shape)], order=1)
    return (110.0 * np.clip(scan - scan.min(), 0, None) / np.ptp(scan)).astype(np.float32)


def _input_with_marker(shape, aff):
    """Head image on the grid plus a bright ball (radius 3 mm) at MARKER_OFFSET_MM."""
    data = _head_voxels(shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    ball = (np.linalg.norm(world - MARKER_OFFSET_MM, axis=1) <= 3.0).reshape(shape)
    assert ball.any()
    data[ball] = 400.0
    return data


def _bright_world(node, fraction=0.9):
    """Intensity-weighted world centroid of the voxels above ``fraction`` of the maximum."""
    arr, aff = volume_to_array_and_affine(node)
    arr = arr.astype(np.float64)
    ijk = np.argwhere(arr >= fraction * arr.max())
    w = arr[tuple(ijk.T)]
    return (ijk @ aff[:3, :3].T + aff[:3, 3]).T @ w / w.sum()


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_outputs_on_input_grid_in_world(scene, model_and_atlas, geometry):
    model, atlas = model_and_atlas
    shape, aff = GEOMETRIES[geometry]
    data = _input_with_marker(shape, aff)
    node = add_volume(scene, data, aff, f"head {geometry}")
    params = RunParameters(tasks=("t1", "seg", "bias", "reg"), device="cpu", model=model, atlas=atlas)
    job = BrainFMJob(scene, node, params, python=sys.executable, create_labelmap=True,
                     import_keys=["synth_t1", "seg", "seg_labelmap", "bias_field", "reg_displacement"])
    outcome = job.start().wait(timeout=300)
    assert outcome.ok, (outcome.error, outcome.process.log[-10:])
    nodes = outcome.imported.nodes
    ref = ijk_to_ras(node)
    spacing_max = float(np.max(np.linalg.norm(aff[:3, :3], axis=0)))
    for key in ("synth_t1", "seg_labelmap", "bias_field"):
        out = nodes[key]
        assert out.GetImageData().GetDimensions() == shape, key
        np.testing.assert_allclose(ijk_to_ras(out), ref, atol=1e-6, err_msg=key)
    # the input node is untouched
    np.testing.assert_array_equal(volume_to_array_and_affine(node)[0], data)
    np.testing.assert_allclose(ijk_to_ras(node), aff, atol=1e-9)
    # the marker is where it was put, in world coordinates
    tol = 0.5 * spacing_max + 1.0
    marker_in = _bright_world(node)
    assert np.linalg.norm(marker_in - MARKER_OFFSET_MM) < tol
    marker_out = _bright_world(nodes["synth_t1"])
    assert np.linalg.norm(marker_out - marker_in) < tol, (geometry, marker_out, marker_in)
    # segmentation: the marker is labelled 17, on the reference grid of the input
    lab, lab_aff = volume_to_array_and_affine(nodes["seg_labelmap"])
    assert set(np.unique(lab).tolist()) == {0, LABEL}, np.unique(lab)
    ball = data == data.max()  # the marker voxels of the input (same grid)
    assert (lab[ball] == LABEL).mean() > 0.5, (geometry, (lab[ball] == LABEL).mean())
    seg = nodes["seg"].GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["Left-Hippocampus"]
    # the segment's binary labelmap lies on the input grid and holds the marker voxel
    segment = seg.GetNthSegment(0)
    rep = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    m = vtk.vtkMatrix4x4()
    rep.GetImageToWorldMatrix(m)
    np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], ref, atol=1e-6)
    ijk = np.rint(np.linalg.solve(ref[:3, :3], marker_in - ref[:3, 3])).astype(int)
    assert rep.GetScalarComponentAsDouble(*[int(v) for v in ijk], 0) == segment.GetLabelValue()
    # bias field: exp(0) = 1 inside the head
    field = volume_to_array_and_affine(nodes["bias_field"])[0]
    np.testing.assert_allclose(field[data > 50], 1.0, atol=1e-5)
    # registration: atlas coordinate 0 everywhere -> FromParent(p) = p + d(p) = origin
    transform = nodes["reg_displacement"].GetTransformFromParent()
    for p in (MARKER_OFFSET_MM, np.array([0.1, 0.15, -0.1]) * N, np.array([-0.15, 0.1, -0.05]) * N):
        np.testing.assert_allclose(transform.TransformPoint(*[float(v) for v in p]), 0.0, atol=1e-3,
                                   err_msg=f"{geometry} at {p}")
