"""Small scene helpers: subject-hierarchy placement and parent transforms.

>>> import slicer
>>> from BrainFMSceneLib.scene_utils import place_next_to, parent_item_of, subject_hierarchy
>>> scene = slicer.vtkMRMLScene()
>>> a = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
>>> b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "b")
>>> sh = subject_hierarchy(scene)
>>> folder = sh.CreateFolderItem(sh.GetSceneItemID(), "subject 1")
>>> _ = sh.CreateItem(folder, a)  # full Slicer creates items for data nodes by itself
>>> place_next_to(b, a), parent_item_of(b) == folder
(True, True)
"""
from __future__ import annotations

from typing import Any, Iterable, Optional


def subject_hierarchy(scene: Any) -> Optional[Any]:
    """The scene's subject-hierarchy node (created on demand), or None if unavailable."""
    import slicer

    try:
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    except Exception:  # noqa: BLE001 - SH is optional for the data itself
        return None


def place_next_to(node: Any, reference_node: Any) -> bool:
    """Put ``node`` in the same subject-hierarchy folder/study as ``reference_node``.

    Also observes the reference's parent transform, so outputs computed in the reference's
    local frame stay aligned with it. Returns True when the hierarchy was updated.
    """
    if node is None or reference_node is None or node.GetScene() is None:
        return False
    transform_id = reference_node.GetTransformNodeID() if hasattr(reference_node, "GetTransformNodeID") else None
    if transform_id and hasattr(node, "SetAndObserveTransformNodeID") and node.GetID() != transform_id:
        node.SetAndObserveTransformNodeID(transform_id)
    sh = subject_hierarchy(node.GetScene())
    if sh is None:
        return False
    ref_item = sh.GetItemByDataNode(reference_node)
    if not ref_item:
        return False
    parent = sh.GetItemParent(ref_item)
    item = sh.GetItemByDataNode(node)
    if not item:  # full Slicer adds items automatically; slicer-core does not
        item = sh.CreateItem(parent, node)
        return bool(item)
    sh.SetItemParent(item, parent)
    return True


def parent_item_of(node: Any) -> int:
    """Subject-hierarchy parent item ID of ``node`` (0 when none)."""
    sh = subject_hierarchy(node.GetScene()) if node is not None and node.GetScene() is not None else None
    if sh is None:
        return 0
    item = sh.GetItemByDataNode(node)
    return int(sh.GetItemParent(item)) if item else 0


def remove_nodes(scene: Any, nodes: Iterable[Any]) -> None:
    """Remove ``nodes`` (and their display/storage nodes) from ``scene``; None entries are skipped."""
    for node in nodes:
        if node is None or node.GetScene() is not scene:
            continue
        for getter in ("GetNumberOfDisplayNodes", "GetNumberOfStorageNodes"):
            if hasattr(node, getter):
                kind = "DisplayNode" if "Display" in getter else "StorageNode"
                for i in reversed(range(getattr(node, getter)())):
                    sub = getattr(node, f"GetNth{kind}")(i)
                    if sub is not None and sub.GetScene() is scene:
                        scene.RemoveNode(sub)
        scene.RemoveNode(node)
