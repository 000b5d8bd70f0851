"""Signal equations at known parameter values, tissue tables, protocol ranges, CT units."""
from __future__ import annotations

import math

import pytest
import torch

from brainfm.generator import physics
from brainfm.generator.ct import nominal_hu, random_hu
from brainfm.generator.labels import ALL_LABELS, FS33, compact_flip_perm, to_compact


def _sig(name: str, proto: dict) -> dict:
    p = physics.nominal_params()
    s = physics.render(p, proto)
    return {lab: float(s[ALL_LABELS.index(lab)]) for lab in (2, 3, 24, 0)}


def test_spin_echo_matches_hand_values():
    pd, t1, t2 = torch.tensor(0.8), torch.tensor(1.2), torch.tensor(0.09)
    got = float(physics.spin_echo(pd, t1, t2, tr=2.5, te=0.08))
    assert got == pytest.approx(0.8 * (1 - math.exp(-2.5 / 1.2)) * math.exp(-0.08 / 0.09), rel=1e-5)


def test_flair_nulls_csf_at_t1_ln2():
    t1_csf = 4.2
    pd, t1, t2 = torch.tensor([1.0, 0.7]), torch.tensor([t1_csf, 0.85]), torch.tensor([2.0, 0.08])
    s = physics.flair(pd, t1, t2, tr=1e4, te=0.1, ti=t1_csf * math.log(2))
    assert float(s[0]) < 1e-6 and float(s[1]) > 0.1  # CSF nulled, WM not


def test_mprage_nulls_at_its_inversion_time():
    s = physics.mprage(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.05), tr=1e4,
                       ti=math.log(2), te=0.0, flip=math.radians(9))
    assert float(s) < 1e-6


def test_gre_at_ernst_angle():
    # Ernst angle cos(a) = e^{-TR/T1} maximises the spoiled GRE signal
    t1, tr = torch.tensor(1.0), 0.02
    ernst = math.acos(math.exp(-tr / t1))
    at = lambda a: float(physics.gre(torch.tensor(1.0), t1, torch.tensor(0.05), tr=tr, te=0.0, flip=a))
    assert at(ernst) > at(ernst * 0.7) and at(ernst) > at(ernst * 1.4)
    e1 = math.exp(-tr)
    assert at(ernst) == pytest.approx(math.sin(ernst) * (1 - e1) / (1 - math.cos(ernst) * e1), rel=1e-5)


def test_standard_protocol_contrasts():
    t1 = _sig("T1", physics.STANDARD_PROTOCOLS["T1"])
    t2 = _sig("T2", physics.STANDARD_PROTOCOLS["T2"])
    fl = _sig("FLAIR", physics.STANDARD_PROTOCOLS["FLAIR"])
    assert t1[2] > t1[3] > t1[24]  # MPRAGE: WM > GM > CSF
    assert t2[24] > t2[3] > t2[2]  # T2: CSF > GM > WM
    assert fl[3] > fl[2] > fl[24]  # FLAIR: CSF suppressed, GM > WM
    assert t1[0] == t2[0] == fl[0] == 0.0  # air


def test_lesion_darker_in_t1_brighter_in_t2_flair():
    p = physics.nominal_params()
    wm, les = ALL_LABELS.index(2), ALL_LABELS.index(77)
    for name, sign in (("T1", -1), ("T2", 1), ("FLAIR", 1)):
        s = physics.render(p, physics.STANDARD_PROTOCOLS[name])
        assert sign * float(s[les] - s[wm]) > 0, name


def test_protocol_sampling_ranges():
    g = torch.Generator().manual_seed(0)
    kinds = set()
    for _ in range(200):
        pr = physics.sample_protocol(g)
        kinds.add(pr["kind"])
        assert 0 < pr["te"] < pr["tr"]
        if pr["kind"] == "mprage":
            assert 0.6 <= pr["ti"] <= 0.9 and math.radians(5) <= pr["flip"] <= math.radians(12)
        if pr["kind"] == "gre":
            assert math.radians(5) <= pr["flip"] <= math.radians(50)
    assert kinds == set(physics.SEQUENCES)


def test_jittered_params_differ_per_seed_and_stay_positive():
    a = physics.jittered_params(torch.Generator().manual_seed(0), jitter=0.1)
    b = physics.jittered_params(torch.Generator().manual_seed(1), jitter=0.1)
    assert a.shape == (1, len(ALL_LABELS), 4) and not torch.equal(a, b)
    assert bool((a[..., 1:] > 0).all())


def test_ct_units():
    hu = nominal_hu()
    assert float(hu[ALL_LABELS.index(0)]) == -1000
    assert 20 <= float(hu[ALL_LABELS.index(2)]) < float(hu[ALL_LABELS.index(3)]) <= 45
    assert float(hu[ALL_LABELS.index(511)]) >= 700  # skull
    r = random_hu(torch.Generator().manual_seed(0), batch=3)
    assert float(r[:, ALL_LABELS.index(511)].min()) > 600
    assert float(r[:, ALL_LABELS.index(24)].max()) < 25


def test_label_tables():
    assert len(FS33) == 33 and FS33[:3] == (0, 2, 3)
    idx = to_compact(torch.tensor([2, 41, 1000, -3, 530]))
    assert [ALL_LABELS[i] for i in idx.tolist()] == [2, 41, 0, 0, 530]
    perm = compact_flip_perm()
    assert ALL_LABELS[int(perm[ALL_LABELS.index(2)])] == 41
    assert ALL_LABELS[int(perm[ALL_LABELS.index(24)])] == 24
    assert sorted(perm.tolist()) == list(range(len(ALL_LABELS)))
