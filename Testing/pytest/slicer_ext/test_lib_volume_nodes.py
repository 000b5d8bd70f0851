"""BrainFMSceneLib volume exchange: node <-> array/affine <-> file, in world coordinates."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")

from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.volume_files import export_volume_node, import_volume_file, read_volume_file  # noqa: E402
from BrainFMSceneLib.volume_nodes import (  # noqa: E402
    add_volume,
    grid_permutation,
    ijk_to_ras,
    reindex_to_grid,
    update_volume_from_array,
    volume_from_node,
    volume_to_array_and_affine,
)

SHAPE = (9, 11, 7)
CASES = sorted(GEOMETRY_CASES)


@pytest.mark.parametrize("case", CASES)
def test_node_array_round_trip_is_exact(scene, case, rng):
    aff = GEOMETRY_CASES[case]
    data = rng.normal(size=SHAPE).astype(np.float32)
    node = add_volume(scene, data, aff, f"vol {case}")
    arr, got = volume_to_array_and_affine(node)
    assert arr.shape == SHAPE and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, data)
    np.testing.assert_allclose(got, aff, atol=1e-9)
    # voxel (i, j, k) value is at world affine @ (i, j, k): check against slicer.util's [k, j, i] view
    import slicer

    kji = slicer.util.arrayFromVolume(node)
    assert kji[2, 3, 4] == data[4, 3, 2]
    # the returned array is a copy: editing it does not touch the node
    arr[0, 0, 0] = 1e6
    assert volume_to_array_and_affine(node)[0][0, 0, 0] == data[0, 0, 0]


def test_update_in_place_keeps_identity_and_vector_volumes(scene, rng):
    node = add_volume(scene, np.zeros((3, 4, 5), np.int16), np.eye(4), "in place")
    node_id = node.GetID()
    new = rng.integers(0, 100, size=(5, 6, 7)).astype(np.int16)
    update_volume_from_array(node, new, GEOMETRY_CASES["oblique"])
    assert node.GetID() == node_id and scene.GetNodeByID(node_id) is node
    arr, aff = volume_to_array_and_affine(node)
    np.testing.assert_array_equal(arr, new)
    np.testing.assert_allclose(aff, GEOMETRY_CASES["oblique"], atol=1e-9)
    vec = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    vnode = add_volume(scene, vec, np.eye(4), "vector")
    assert vnode.IsA("vtkMRMLVectorVolumeNode")
    np.testing.assert_array_equal(volume_to_array_and_affine(vnode)[0], vec)


def test_labelmap_and_bad_input(scene):
    lab = np.zeros((4, 4, 4), np.int64)
    lab[1, 2, 3] = 17
    node = add_volume(scene, lab, np.eye(4), "labels", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    arr, _ = volume_to_array_and_affine(node)
    assert arr.dtype == np.int32 and arr[1, 2, 3] == 17
    with pytest.raises(InputError, match="integer"):
        add_volume(scene, np.full((2, 2, 2), 0.5), np.eye(4), "bad", labelmap=True)
    with pytest.raises(InputError, match="singular"):
        add_volume(scene, np.zeros((2, 2, 2)), np.zeros((4, 4)), "bad")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        volume_to_array_and_affine(empty)


def test_brainfm_volume_conversion(scene):
    pytest.importorskip("brainfm.volume")
    vol = blob_head((8, 9, 10), GEOMETRY_CASES["left_handed"])
    node = add_volume(scene, vol.data, vol.affine, "head")
    back = volume_from_node(node)
    assert back.same_grid(vol, atol=1e-9) and back.is_left_handed
    np.testing.assert_array_equal(back.data, vol.data)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("suffix", [".nii", ".nrrd", ".nii.gz"])
def test_export_is_exact_in_world_and_leaves_input_untouched(scene, case, suffix, tmp_path, rng):
    aff = GEOMETRY_CASES[case]
    data = rng.normal(size=SHAPE).astype(np.float32)
    node = add_volume(scene, data, aff, "input")
    mtime, msr, n_nodes = node.GetMTime(), node.GetModifiedSinceRead(), scene.GetNumberOfNodes()
    path = export_volume_node(node, tmp_path / f"input{suffix}")
    # the input node is exactly as before: no storage node, same name, same modified state
    assert node.GetStorageNode() is None and node.GetName() == "input"
    assert node.GetMTime() == mtime and node.GetModifiedSinceRead() == msr
    assert scene.GetNumberOfNodes() == n_nodes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"input{suffix}"]  # no temp file left
    # read back with an independent reader (nibabel for NIfTI) and compare in physical space:
    # reindex_to_grid succeeds only when every voxel centre is at the same world position (1e-3 mm)
    if suffix != ".nrrd":
        import nibabel as nib

        img = nib.load(str(path))
        file_arr, file_aff = np.asarray(img.dataobj), img.affine
        np.testing.assert_allclose(file_aff, aff, atol=1e-4)  # NIfTI keeps even left-handed grids
    else:
        file_arr, file_aff = read_volume_file(path)
    aligned = reindex_to_grid(file_arr, file_aff, aff, SHAPE)
    assert aligned is not None
    np.testing.assert_array_equal(aligned, data)
    if suffix != ".nrrd":
        try:
            from brainfm.io import read_volume
        except ImportError:
            return
        vol = read_volume(path)
        np.testing.assert_array_equal(reindex_to_grid(vol.data, vol.affine, aff, SHAPE), data)


@pytest.mark.parametrize("case", CASES)
def test_import_result_copies_input_geometry(scene, case, tmp_path, rng):
    aff = GEOMETRY_CASES[case]
    data = rng.normal(size=SHAPE).astype(np.float32)
    node = add_volume(scene, data, aff, "input")
    path = export_volume_node(node, tmp_path / "result.nii.gz")
    raw_arr, raw_aff = read_volume_file(path)
    # NIfTI results are read with nibabel: the grid comes back as written, even a left-handed one
    # (Slicer's reader would return it K-flipped, which import_volume_file also handles: see below)
    np.testing.assert_allclose(raw_aff, aff, atol=1e-4)
    np.testing.assert_array_equal(raw_arr, data)
    out = import_volume_file(scene, path, name="input result", reference_node=node)
    arr, got = volume_to_array_and_affine(out)
    np.testing.assert_array_equal(got, ijk_to_ras(node))  # geometry copied exactly
    np.testing.assert_array_equal(arr, data)
    assert out.GetName() == "input result" and out is not node
    # existing node updated in place
    target = add_volume(scene, np.zeros((2, 2, 2), np.float32), np.eye(4), "target")
    same = import_volume_file(scene, path, name="ignored", reference_node=node, node=target)
    assert same is target and target.GetName() == "target"
    np.testing.assert_array_equal(volume_to_array_and_affine(target)[0], data)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii"])
def test_import_left_handed_result_from_slicer_reader_formats(scene, suffix, tmp_path, rng):
    """Slicer's reader returns left-handed NRRD grids K-flipped: the import re-indexes them exactly;
    NIfTI (read with nibabel) gives F-ordered arrays that land in the node unchanged."""
    aff = GEOMETRY_CASES["left_handed"]
    data = rng.normal(size=SHAPE).astype(np.float32)
    node = add_volume(scene, data, aff, "input")
    path = export_volume_node(node, tmp_path / f"result{suffix}")
    raw_arr, raw_aff = read_volume_file(path)
    if suffix == ".nrrd":
        assert np.linalg.det(raw_aff[:3, :3]) > 0
        np.testing.assert_array_equal(raw_arr, data[:, :, ::-1])
    else:
        assert raw_arr.flags["F_CONTIGUOUS"]
    out = import_volume_file(scene, path, name="result", reference_node=node)
    arr, got = volume_to_array_and_affine(out)
    np.testing.assert_array_equal(got, ijk_to_ras(node))
    np.testing.assert_array_equal(arr, data)


def test_grid_permutation_detects_same_and_different_grids():
    aff = GEOMETRY_CASES["oblique"]
    shape = (4, 5, 6)
    assert grid_permutation(aff, shape, aff, shape) == ((0, 1, 2), (False, False, False))
    flipped = aff.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = aff[:3, :3] @ [0, 0, shape[2] - 1] + aff[:3, 3]
    assert grid_permutation(flipped, shape, aff, shape) == ((0, 1, 2), (False, False, True))
    shifted = aff.copy()
    shifted[:3, 3] += 0.5
    assert grid_permutation(shifted, shape, aff, shape) is None
    assert grid_permutation(aff, (4, 5, 7), aff, shape) is None
    arr = np.arange(4 * 5 * 6).reshape(shape)
    np.testing.assert_array_equal(reindex_to_grid(arr[:, :, ::-1], flipped, aff, shape), arr)


def test_export_errors(scene, tmp_path):
    node = add_volume(scene, np.zeros((2, 2, 2), np.float32), np.eye(4), "v")
    with pytest.raises(InputError, match="use one of"):
        export_volume_node(node, tmp_path / "v.mgz")
    with pytest.raises(InputError, match="does not exist"):
        export_volume_node(node, tmp_path / "missing" / "v.nii")
    with pytest.raises(InputError, match="not found"):
        read_volume_file(tmp_path / "nothing.nii")
