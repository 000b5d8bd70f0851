"""BrainFMSceneLib grid transforms (point mapping in RAS mm) and structure-volume tables."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")

from fixtures import GEOMETRY_CASES, label_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.table_nodes import (  # noqa: E402
    COLUMNS,
    add_structure_table,
    rows_from_csv,
    structure_rows,
    table_rows,
)
from BrainFMSceneLib.transform_nodes import (  # noqa: E402
    displacement_to_grid_transform,
    grid_transform_to_displacement,
)
from BrainFMSceneLib.volume_nodes import add_volume  # noqa: E402

SHAPE = (8, 9, 7)


def _smooth_field(aff, shape, amplitude=1.5):
    """An invertible, smooth displacement (RAS mm) varying along every axis."""
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    xyz = idx @ aff[:3, :3].T + aff[:3, 3]
    d = np.stack([amplitude * np.sin(xyz[:, 1] / 7.0) + 0.8,
                  amplitude * np.cos(xyz[:, 2] / 9.0) - 0.5,
                  amplitude * np.sin(xyz[:, 0] / 8.0) + 0.3], axis=1)
    return d.reshape(shape + (3,))


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_grid_transform_maps_subject_points_to_atlas_points(scene, case):
    import slicer

    aff = GEOMETRY_CASES[case]
    d = _smooth_field(aff, SHAPE)
    subject = add_volume(scene, np.zeros(SHAPE, np.float32), aff, "subject")
    node = displacement_to_grid_transform(scene, d, aff, "subject to atlas", reference_node=subject)
    assert node.IsA("vtkMRMLGridTransformNode")
    from_parent = node.GetTransformFromParent()
    to_parent = node.GetTransformToParent()
    rng = np.random.default_rng(3)
    for ijk in [(0, 0, 0), (7, 8, 6), (3, 4, 2), (5, 1, 4)]:
        p = aff[:3, :3] @ np.array(ijk, float) + aff[:3, 3]
        q = np.array(from_parent.TransformPoint(p))
        np.testing.assert_allclose(q, p + d[ijk], atol=1e-6)  # exact at voxel centres
        if min(ijk) > 0 and all(i < s - 1 for i, s in zip(ijk, SHAPE)):
            np.testing.assert_allclose(to_parent.TransformPoint(q), p, atol=1e-3)  # inverse direction
    for _ in range(3):  # trilinear interpolation between voxel centres
        f = rng.uniform(1, np.array(SHAPE) - 2)
        i0 = np.floor(f).astype(int)
        w = f - i0
        expected = np.zeros(3)
        for corner in np.ndindex(2, 2, 2):
            weight = np.prod([w[a] if c else 1 - w[a] for a, c in enumerate(corner)])
            expected += weight * d[tuple(i0 + np.array(corner))]
        p = aff[:3, :3] @ f + aff[:3, 3]
        np.testing.assert_allclose(from_parent.TransformPoint(p), p + expected, atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(node).transpose(2, 1, 0, 3), d)
    np.testing.assert_allclose(grid_transform_to_displacement(node), d)


def test_grid_transform_rejects_bad_fields(scene):
    with pytest.raises(InputError, match=r"\(X, Y, Z, 3\)"):
        displacement_to_grid_transform(scene, np.zeros((4, 4, 4)), np.eye(4), "t")
    bad = np.zeros((4, 4, 4, 3))
    bad[1, 1, 1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        displacement_to_grid_transform(scene, bad, np.eye(4), "t")
    with pytest.raises(InputError, match="non-singular"):
        displacement_to_grid_transform(scene, np.zeros((4, 4, 4, 3)), np.zeros((4, 4)), "t")


def test_structure_table_contents_and_units(scene, tmp_path):
    aff = GEOMETRY_CASES["anisotropic"]  # 0.8 x 0.8 x 3 mm -> 1.92 mm^3 per voxel
    labels = label_head((20, 24, 18))
    rows = structure_rows(labels, aff, names={2: "Left-Cerebral-White-Matter"})
    counts = {int(v): int(c) for v, c in zip(*np.unique(labels, return_counts=True)) if v}
    assert [r["value"] for r in rows] == sorted(counts)
    for r in rows:
        assert r["voxels"] == counts[r["value"]]
        assert r["volume_mm3"] == pytest.approx(counts[r["value"]] * 0.8 * 0.8 * 3.0)
    node = add_structure_table(scene, rows, name="volumes")
    table = node.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(COLUMNS)
    assert node.GetNumberOfRows() == len(rows)
    assert node.GetColumnUnitLabel("Volume (mm3)") == "mm3"
    assert table_rows(node) == rows
    assert node.GetCellText(0, 1) == "Left-Cerebral-White-Matter"
    # the engine's CSV (column names may differ in case/spelling)
    csv_path = tmp_path / "seg_volumes.csv"
    csv_path.write_text("# BrainFM structure volumes\nvalue,name,voxels,volume_mm3\n"
                        "41,Right-Cerebral-White-Matter,10,19.2\n2,Left-Cerebral-White-Matter,5,9.6\n")
    parsed = rows_from_csv(csv_path)
    assert [r["value"] for r in parsed] == [2, 41] and parsed[1]["volume_mm3"] == pytest.approx(19.2)
    same = add_structure_table(scene, parsed, name="ignored", node=node)
    assert same is node and table_rows(node) == parsed
    csv_path.write_text("value,name\n2,x\n")
    with pytest.raises(InputError, match="voxels"):
        rows_from_csv(csv_path)
