"""The plausibility checks of a segmentation's structure volumes (``brainfm.labels.checks``)."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.labels.checks import RATIO_RANGE, volume_checks


def _brain():
    """Structure volumes (mm³) of a plausible adult brain: every checked pair and structure present."""
    from brainfm.labels import get_scheme

    vols = {int(v): 2000.0 for v in get_scheme("fs33").fs_values}
    vols.update({2: 250e3, 41: 255e3, 3: 260e3, 42: 262e3, 8: 55e3, 47: 56e3, 24: 300e3})
    return vols


def test_a_plausible_brain_passes_and_each_failure_is_named():
    vols = _brain()
    assert volume_checks(vols) == []
    half = {**vols, 41: 0.3 * vols[41], 42: 0.3 * vols[42]}  # the right hemisphere mostly lost
    found = volume_checks(half)
    assert any("Cerebral-White-Matter volume ratio 3.27" in f for f in found), found
    assert any("Cerebral-Cortex volume ratio" in f for f in found), found
    no_cerebellum = {**vols, 7: 0.0, 46: 0.0, 8: 0.0, 47: 0.0}  # a scan that stops above the cerebellum
    found = volume_checks(no_cerebellum)
    assert found[0].startswith("Left-Cerebellum-White-Matter, Left-Cerebellum-Cortex, Right-Cerebellum-White-Matter")
    assert not any("ratio" in f for f in found)  # both sides empty: said once, as missing
    tiny = {k: v / 20 for k, v in vols.items()}  # e.g. voxel sizes in cm read as mm
    assert volume_checks(tiny) == [f"labelled volume {sum(tiny.values()) / 1000:.0f} cm3 (expected 300-2500 cm3)"]
    lo, hi = RATIO_RANGE
    assert volume_checks({**vols, 8: lo * vols[47]}) == [] and volume_checks({**vols, 8: hi * vols[47]}) == []


@pytest.mark.shared
def test_real_scans_pass_and_a_lopsided_one_is_flagged(shared_data):
    """The bundled model on the stroke patient's T1 (a left lateral ventricle 1.9 times the right one:
    not checked) and the clinical CT: no check fires. The same T1 with its right hemisphere blanked
    out (the image's left half, RAS) is flagged, and the warning reaches the prediction."""
    from brainfm.evaluation import datasets
    from brainfm.inference import Predictor

    predictor = Predictor.from_pretrained("bundled")
    for key in ("stroke_t1", "ct"):
        pred = predictor.predict(datasets.load(shared_data, key), tasks=["seg"])
        assert not [w for w in pred.metadata.get("warnings", []) if "segmentation check" in w], key
    t1 = datasets.load(shared_data, "stroke_t1")
    data = np.array(t1.data, np.float32)
    ijk = np.indices(data.shape[:3]).reshape(3, -1)
    x = (np.asarray(t1.affine)[0, :3] @ ijk + np.asarray(t1.affine)[0, 3]).reshape(data.shape)
    mid = np.median(x[data > 0])
    data[x > mid] = 0  # the right hemisphere (RAS x > midline) removed
    pred = predictor.predict(t1.with_data(data), tasks=["seg"])
    checks = [w for w in pred.metadata.get("warnings", []) if "segmentation check" in w]
    assert any("left/right Cerebral-White-Matter volume ratio" in w for w in checks), checks
