"""The evaluation harness (``brainfm eval-table``): metrics on hand-made arrays, every row on tiny
generated data (tiny random model, oracle predictors with known answers), n/a and skipped rows,
and the shared-data rows when ../shared/data is present."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from brainfm.errors import InputError
from brainfm.evaluation import datasets, metrics
from brainfm.evaluation.registration import carry_labels
from brainfm.evaluation.segmentation import dice_report, evaluate_segmentation
from brainfm.inference import Predictor
from brainfm.inference.prediction import Prediction
from brainfm.io import write_volume
from brainfm.volume import Volume

ALL_HEADS = {"T1": 1, "T2": 1, "FLAIR": 1, "CT": 1, "segmentation": 33, "bias_field_log": 1, "registration": 3}
N = 28  # edge of the generated volumes


# ---------------------------------------------------------------- metrics on hand-made arrays
def test_dice_values_and_absent_labels():
    a = np.zeros((4, 4, 4), np.int32); a[:2] = 2; a[3, 3, 3] = 41
    b = np.zeros_like(a); b[:, :2] = 2; b[0, 0, 0] = 17
    d = metrics.dice_per_label(a, b, labels=[2, 17, 41, 99])
    # label 2: 32 voxels in a, 31 in b (one became 17), 15 shared; 99 absent from both: skipped
    assert d == {2: pytest.approx(30 / 63, abs=1e-6), 17: 0.0, 41: 0.0}
    assert metrics.mean_dice(a, a) == 1.0
    with pytest.raises(InputError, match="shape"):
        metrics.dice_per_label(a, b[:2])


def test_linear_fit_psnr_ssim_correlation():
    rng = np.random.default_rng(0)
    t = rng.random((16, 16, 16))
    src = 4.0 * t - 3.0
    keep = src.copy()
    mask = t > 0.1
    assert np.allclose(metrics.linear_fit(src, t, mask=mask), t)
    assert np.array_equal(src, keep)                  # inputs untouched
    # PSNR: error 0.1 everywhere, range 1 -> 20 dB
    tt = np.zeros((4, 4, 4)); tt[0, 0, 0] = 1.0
    assert metrics.psnr_masked(tt + 0.1, tt) == pytest.approx(20.0, abs=1e-3)
    assert metrics.psnr_masked(tt, tt) == float("inf")
    noisy = t + 0.2 * rng.standard_normal(t.shape)
    s_clean = metrics.fitted_scores(src, t, mask)
    s_noisy = metrics.fitted_scores(noisy, t, mask)
    assert s_clean["ssim"] == pytest.approx(1.0) and s_clean["psnr"] > 100  # float rounding only
    assert 0.0 < s_noisy["ssim"] < 0.9 and 5.0 < s_noisy["psnr"] < 30.0
    assert metrics.correlation(src, t) == pytest.approx(1.0)
    assert metrics.correlation(-src, t) == pytest.approx(-1.0)
    assert np.isnan(metrics.correlation(np.ones(5), np.arange(5.0)))
    with pytest.raises(InputError, match="mask"):
        metrics.linear_fit(src, t, mask=np.zeros(t.shape, bool))


def test_dice_report_merges_hemispheres():
    t = np.zeros((6, 6, 6), np.int32); t[:3] = 2; t[3:] = 41; t[2:4, 2:4, 2:4] = 17
    swapped = np.where(t == 2, 41, np.where(t == 41, 2, t))
    rep = dice_report(swapped, t)
    assert rep["mean_merged17"] == 1.0
    assert rep["per_label_lr"][2] == 0.0 and rep["per_label_lr"][17] == 1.0


def test_carry_labels_through_shifted_atlas_coordinates():
    lab = np.zeros((10, 10, 10), np.int32); lab[2:5] = 2; lab[5:8] = 41; lab[4:6, 4:6, 4:6] = 17
    ijk = np.stack(np.meshgrid(*[np.arange(10.0)] * 3, indexing="ij"), -1)
    # B is A shifted by 2 voxels along i; both map to atlas coordinates = A index + 50 mm
    lab_b = np.zeros_like(lab); lab_b[2:] = lab[:-2]
    coords_a, coords_b = ijk + 50.0, ijk + 50.0 - np.array([2.0, 0, 0])
    moved = carry_labels(lab, coords_a, coords_b, mask_a=lab > 0, mask_b=lab_b > 0)
    assert np.array_equal(moved, lab_b)
    assert not np.array_equal(carry_labels(lab, coords_a, ijk + 50.0, mask_a=lab > 0, mask_b=lab_b > 0), lab_b)


# ---------------------------------------------------------------- generated data folder
def _labels() -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(N) - (N - 1) / 2.0] * 3, indexing="ij")
    r = np.sqrt((x / 12.0) ** 2 + (y / 13.0) ** 2 + (z / 11.0) ** 2)
    lab = np.zeros((N, N, N), np.int32)
    left = x < 0
    lab[r < 1.0] = 24
    lab[r < 0.92] = np.where(left, 3, 42)[r < 0.92]
    lab[r < 0.75] = np.where(left, 2, 41)[r < 0.75]
    lab[(r < 0.25)] = np.where(left, 4, 43)[r < 0.25]
    lab[(np.abs(x) > 5) & (np.abs(x) < 8) & (np.abs(y) < 2) & (np.abs(z) < 2)] = np.where(left, 17, 53)[
        (np.abs(x) > 5) & (np.abs(x) < 8) & (np.abs(y) < 2) & (np.abs(z) < 2)]
    lab[(np.abs(x) < 1.5) & (y < -6) & (r < 0.7)] = 16
    return lab


def _images(lab: np.ndarray) -> Dict[str, np.ndarray]:
    from brainfm.generator.labels import to_compact
    from brainfm.generator.targets import render_image_targets

    comp = to_compact(torch.from_numpy(lab.astype(np.int64)))[None, None]
    out = render_image_targets(comp)
    return {k: v[0, 0].numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared_data")
    lab = _labels()
    imgs = _images(lab)
    brain = lab > 0
    aff = np.diag([-1.0, 1.0, 1.0, 1.0]); aff[:3, 3] = [14.0, -14.0, -14.0]
    x = np.linspace(-1, 1, N)[:, None, None]

    def put(key: str, data: np.ndarray, affine=aff) -> None:
        p = root / datasets.DATA[key] if key in datasets.DATA else root / datasets.DATA["label_dir"] / f"{key}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_volume(Volume(data, affine), p)

    put("voxelmorph_vol", (imgs["T1"] * brain).astype(np.float32))
    put("voxelmorph_seg", lab.astype(np.int16))
    for c in ("T1", "T2", "FLAIR"):
        put(f"stroke_{c.lower()}", np.rint(255 * imgs[c] * brain).astype(np.uint8), np.diag([1.0, 1, 1, 1]))
    put("seg3d_mr", np.rint(200 * imgs["T1"] * np.exp(0.4 * x) * (lab > 0)).astype(np.uint8))
    put("training_seg_19", lab)
    put("training_seg_20", np.roll(lab, 1, axis=1))
    ct = np.where(lab > 0, imgs["CT"] * 1000.0, -1000.0).astype(np.int16)
    put("ct", ct, np.diag([0.9, 0.9, 2.0, 1.0]))
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from ckpt_factory import write_native

    _, w, _ = write_native(tmp_path_factory.mktemp("model") / "tiny.safetensors", heads=ALL_HEADS)
    return w


class Oracle:
    """A predictor that answers from known arrays (makes the rows' numbers predictable)."""

    info = None  # no measured quality
    registration_method = Predictor.registration_method  # the product's choice, from info and the tasks

    @property
    def segments_anatomy(self) -> bool:  # FreeSurfer's labels whenever it segments
        return "seg" in self.available_tasks

    def __init__(self, tasks: List[str], answer) -> None:
        self.available_tasks = tasks
        self.answer = answer
        self.device = "oracle"
        self.calls = 0

    def predict(self, image: Volume, *, tasks, atlas=None, bias_method="auto", reg_method="auto") -> Prediction:
        self.calls += 1
        return Prediction(outputs=self.answer(image, list(tasks)))


def test_segmentation_row_oracle_scores_one_and_na_without_head(data_root, tmp_path):
    truth = datasets.load_labels(data_root, "voxelmorph_seg")
    perfect = Oracle(["seg"], lambda img, t: {"seg": truth})
    r = evaluate_segmentation(perfect, data_root, montage_path=tmp_path / "m.png")
    assert r["status"] == "ok" and r["passed"] is True
    assert r["metrics"]["mean_dice_merged17"] == 1.0 and r["metrics"]["mean_dice_lr"] == 1.0
    assert (tmp_path / "m.png").stat().st_size > 1000
    swapped = truth.with_data(np.where(truth.data == 2, 41, truth.data).astype(np.int32))
    r2 = evaluate_segmentation(Oracle(["seg"], lambda img, t: {"seg": swapped}), data_root)
    assert r2["metrics"]["mean_dice_merged17"] == 1.0 > r2["metrics"]["mean_dice_lr"]
    na = evaluate_segmentation(Oracle(["t1"], None), data_root)
    assert na["status"] == "n/a" and na["headline"] == "n/a: model has no segmentation head"


def test_synthesis_row_oracle_beats_baseline(data_root):
    from brainfm.evaluation.synthesis import evaluate_synthesis, load_trio

    trio = load_trio(data_root)
    names = {"t1": "T1", "t2": "T2", "flair": "FLAIR"}
    rng = np.random.default_rng(3)

    def answer(img, tasks):
        c = names[tasks[0]]
        real = np.asarray(trio[c].data, np.float32) / 255.0
        return {f"synth_{tasks[0]}": img.with_data(real + 0.01 * rng.standard_normal(real.shape).astype(np.float32))}

    r = evaluate_synthesis(Oracle(["t1", "t2", "flair"], answer), data_root)
    assert set(r["metrics"]["pairs"]) == {"T1->T2", "T1->FLAIR", "T2->T1", "FLAIR->T1"}
    for v in r["metrics"]["pairs"].values():
        assert v["beats_baseline"] and v["ssim"] > v["baseline"]["ssim"]
    assert r["passed"] is True
    # only a T1 head: the pairs towards T2/FLAIR are n/a and the goal is not met
    r2 = evaluate_synthesis(Oracle(["t1"], answer), data_root)
    assert r2["metrics"]["pairs"]["T1->T2"]["status"] == "n/a: model has no T2 head" and r2["passed"] is False

    class Fitted(Oracle):
        """The product fits its synthesis to the scan (the real target); its head gives the input back."""

        def predict(self, image, *, tasks, synth_method="auto", **kw):
            from brainfm.tasks.synthesis import METHOD_NAMES

            self.calls += 1
            how = "head" if synth_method == "head" else "fit"
            out = answer(image, list(tasks)) if how == "fit" else {f"synth_{tasks[0]}": image}
            return Prediction(outputs=out, metadata={"synth_method": METHOD_NAMES[how]})

    r3 = evaluate_synthesis(Fitted(["t1", "t2", "flair"], answer), data_root)
    pair = r3["metrics"]["pairs"]["T1->T2"]
    assert pair["method"].startswith("fitted to the scan") and r3["headline"].startswith("fitted to the scan")
    assert pair["head"] == pytest.approx(pair["baseline"])  # the head scored beside: here the input itself
    assert "; head " in r3["headline"]


def test_registration_row_with_true_coordinates(data_root):
    from brainfm.evaluation.registration import evaluate_registration, held_out_pair

    def world(img, tasks):  # atlas = world space: the true map for identical anatomy
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij"), -1)
        return {"reg_atlas_coords": img.with_data((ijk @ img.affine[:3, :3].T + img.affine[:3, 3]).astype(np.float32))}

    r = evaluate_registration(Oracle(["reg"], world), data_root,
                              anchors={"registration": {"mean_dice_lr": 0.5, "seconds": 1e6}})
    lab_a, lab_b, _, _ = held_out_pair(data_root)
    # identity map: B receives A's labels unchanged, so the Dice is that of the two label maps
    expected = dice_report(np.where(np.asarray(lab_b.data) > 0, lab_a.data, 0), np.asarray(lab_b.data))["mean_lr"]
    assert r["metrics"]["mean_dice_lr"] == pytest.approx(expected, abs=0.02)
    assert 0.3 < r["metrics"]["mean_dice_lr"] < 1.0 and r["passed"] is True


def test_registration_row_segments_the_atlas_once_before_the_pair_and_says_so(data_root, tmp_path, monkeypatch):
    """A model whose head is not reliable has its map fitted: the atlas's segmentation (once per
    model) is timed apart from the pair, and the row says whether it came from the disk cache."""
    from types import SimpleNamespace

    from brainfm.evaluation.registration import evaluate_registration
    from brainfm.tasks.registration import METHOD_NAMES

    from brainfm.io import write_volume

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    root = tmp_path / "data"  # the held-out maps of ``data_root``, and an atlas
    root.mkdir()
    for child in Path(data_root).iterdir():
        (root / child.name).symlink_to(child)
    write_volume(Volume(np.random.default_rng(0).random((20, 22, 24), np.float32), np.eye(4)),
                 root / datasets.DATA["atlas"])
    data_root = root
    events = []

    class Fitted(Oracle):
        info = SimpleNamespace(sha256="ab" * 32, quality={"reg_carried_dice17": 0.3})

        def atlas_labels(self, atlas, *, cancel=None):
            events.append(("atlas", tuple(atlas.shape)))
            return atlas

        def predict(self, image, *, tasks, atlas=None, bias_method="auto", reg_method="auto"):
            events.append(("pair", reg_method))
            ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), -1)
            coords = image.with_data((ijk @ image.affine[:3, :3].T + image.affine[:3, 3]).astype(np.float32))
            return Prediction(outputs={"reg_atlas_coords": coords},
                              metadata={"reg_method": METHOD_NAMES["fit" if reg_method == "auto" else reg_method]})

    r = evaluate_registration(Fitted(["reg", "seg"], None), data_root)
    atlas_shape = tuple(datasets.load(data_root, "atlas").shape)
    assert events[0] == ("atlas", atlas_shape) and events[1:3] == [("pair", "auto")] * 2
    assert r["metrics"]["atlas_segmentation_from_cache"] is False
    assert r["metrics"]["atlas_segmentation_seconds"] >= 0.0
    assert "once per model, before the pair, the atlas was segmented in" in r["headline"]
    # a model whose head is reliable uses it: no atlas segmentation
    events.clear()
    Fitted.info = SimpleNamespace(sha256="ab" * 32, quality={"reg_carried_dice17": 0.9})
    r = evaluate_registration(Fitted(["reg", "seg"], None), data_root)
    assert all(kind == "pair" for kind, _ in events) and "atlas_segmentation_seconds" not in r["metrics"]


def test_bias_row_oracle_field_correlates_with_n4(data_root):
    from brainfm.evaluation.biasfield import evaluate_bias

    def answer(img, tasks):
        x = np.linspace(-1, 1, img.shape[0])[:, None, None] * np.ones(img.shape)
        if tasks == ["bias"]:
            return {"bias_field": img.with_data(np.exp(0.4 * x).astype(np.float32))}
        return {"seg": datasets.load_labels(data_root, "voxelmorph_seg")}

    r = evaluate_bias(Oracle(["bias"], answer), data_root, shrink=2)
    assert r["metrics"]["mask"] == "head (Otsu)"
    assert r["metrics"]["correlation_with_n4"] > 0.8
    flat = evaluate_bias(Oracle(["bias"], lambda img, t: {"bias_field": img.with_data(
        np.exp(0.4 * np.linspace(-1, 1, img.shape[2]))[None, None, :] * np.ones(img.shape, np.float32))}),
        data_root, shrink=2)
    assert flat["metrics"]["correlation_with_n4"] < 0.5 and flat["passed"] is False

    def both(img, tasks):                             # a model with both heads answers both at once
        out = {"bias_field": answer(img, ["bias"])["bias_field"]}
        if "seg" in tasks:
            out["seg"] = img.with_data(np.where(np.asarray(img.data) > 0, 2, 0).astype(np.int32))
        return out

    segmenter = Oracle(["bias", "seg"], both)
    r3 = evaluate_bias(segmenter, data_root, shrink=2)
    assert r3["metrics"]["mask"].startswith("brain (model segmentation)")
    assert r3["metrics"]["correlation_with_n4"] > 0.8
    assert segmenter.calls == 1 + len(r3["metrics"]["correlation_with_applied_each"])  # one pass on seg3D
    assert r3["metrics"]["model_tasks"] == ["bias", "seg"] and " s with the brain mask (N4" in r3["headline"]
    assert r["metrics"]["model_tasks"] == ["bias"] and "with the brain mask" not in r["headline"]


def test_bias_row_scores_fields_applied_to_the_real_t1(data_root):
    from brainfm.evaluation.biasfield import applied_t1, evaluate_bias

    t1, brain, fields = applied_t1(data_root)
    keep = np.asarray(t1.data).copy()
    clean = np.asarray(t1.data, np.float64)
    inside = clean > 0

    def knows_the_scan(img, tasks):
        # the field is the scan over the clean T1 (1 outside it); on these tiny data seg3D is the
        # same T1 times exp(0.4 x) on the same grid, so the oracle answers that one too
        ratio = np.where(inside, np.asarray(img.data, np.float64) / np.where(inside, clean, 1.0), 1.0)
        return {"bias_field": img.with_data(ratio.astype(np.float32))}

    anchors = {"n4_applied_t1": {"mean_correlation": 0.83}, "n4_seg3d": {"shrink2_seconds": 1e6}}
    r = evaluate_bias(Oracle(["bias"], knows_the_scan), data_root, shrink=2, anchors=anchors)
    m = r["metrics"]
    assert len(fields) == 3 and all(abs(float(f[brain].mean())) < 1e-5 and f[brain].std() > 0.05 for f in fields)
    assert m["correlation_with_applied_each"] == pytest.approx([1.0] * 3, abs=1e-3)
    assert m["n4_correlation_with_applied"] == 0.83 and "(N4 0.830)" in r["headline"]
    assert r["anchor"]["n4_applied_t1"]["mean_correlation"] == 0.83
    assert r["metrics"]["correlation_with_n4"] > 0.8 and r["passed"] is True
    assert np.array_equal(np.asarray(datasets.load(data_root, "voxelmorph_vol").data), keep)

    def blind(img, tasks):                            # a field that ignores the scan
        return {"bias_field": img.with_data(np.exp(0.2 * np.linspace(-1, 1, img.shape[1]))[None, :, None]
                                            * np.ones(img.shape, np.float32))}
    r2 = evaluate_bias(Oracle(["bias"], blind), data_root, shrink=2)
    assert max(abs(c) for c in r2["metrics"]["correlation_with_applied_each"]) < 0.9
    assert r2["metrics"]["n4_correlation_with_applied"] is None and "N4 0." not in r2["headline"].split(";")[1]


def test_eval_table_cli_tiny_model(data_root, tiny_model, tmp_path):
    from brainfm.cli.main import main

    out = tmp_path / "table"
    rows = ["segmentation", "robustness", "synthesis", "bias", "registration", "ct"]
    rc = main(["eval-table", "--model", str(tiny_model), "--data", str(data_root), "-o", str(out),
               "--device", "cpu", "--progress", "none", "--rows", *rows])
    assert rc == 0
    doc = json.loads((out / "eval_table.json").read_text())
    got = {r["row"]: r for r in doc["rows"]}
    assert [r["status"] for r in doc["rows"]] == ["ok"] * 6, [r["headline"] for r in doc["rows"]]
    assert 0.0 <= got["segmentation"]["metrics"]["mean_dice_merged17"] <= 1.0
    assert len(got["synthesis"]["metrics"]["pairs"]) == 4
    assert -1.0 <= got["bias field"]["metrics"]["correlation_with_n4"] <= 1.0
    assert got["CT input"]["metrics"]["checks"]["labelled_cm3"] >= 0
    for name in ("montage_segmentation.png", "montage_robustness.png", "montage_synthesis.png", "montage_ct.png"):
        assert (out / name).stat().st_size > 1000
    md = (out / "eval_table.md").read_text()
    assert md.count("\n| ") == 7 and "`brainfm eval-table --model" in md and "--rows registration" in md
    assert doc["model"]["heads"] and doc["model"]["sha256"]


def test_eval_table_na_skipped_and_speed(tmp_path, data_root):
    from ckpt_factory import write_native

    from brainfm.evaluation.speed import evaluate_speed
    from brainfm.evaluation.table import run_table

    _, w, _ = write_native(tmp_path / "t1only.safetensors", heads={"T1": 1})
    empty = tmp_path / "no_data"; empty.mkdir()
    doc = run_table(w, empty, tmp_path / "out", device="cpu",
                    rows=["segmentation", "bias", "registration", "synthesis", "ct"])
    heads = {r["row"]: r["headline"] for r in doc["rows"]}
    assert heads["segmentation"] == "n/a: model has no segmentation head"
    assert heads["bias field"] == "n/a: model has no bias field head"
    assert heads["registration"] == "n/a: model has no registration head"
    assert heads["synthesis"].startswith("skipped: evaluation data missing")  # has a T1 head, no data
    with pytest.raises(InputError, match="unknown rows"):
        run_table(w, empty, tmp_path / "out", rows=["nonsense"])
    img = datasets.load(data_root, "seg3d_mr")
    r = evaluate_speed(w, None, image=img)
    assert r["metrics"]["shape"] == list(img.shape) and r["metrics"]["tasks"] == ["t1"]
    assert 0 < r["metrics"]["peak_rss_gb"] < 6 and r["metrics"]["predict_seconds"] > 0


def test_thick_slices_keep_the_world_position_of_what_they_average():
    from brainfm.evaluation.resolution import array_axis, thick_slices

    rot = np.array([[0.0, 0.0, -1.0], [0.96, 0.28, 0.0], [-0.28, 0.96, 0.0]])  # oblique, left-handed
    affine = np.eye(4)
    affine[:3, :3] = rot * [1.0, 1.2, 0.9]
    affine[:3, 3] = [10.0, -20.0, 5.0]
    data = np.random.default_rng(0).random((6, 11, 7)).astype(np.float32)
    vol = Volume(data, affine)
    axis = array_axis(affine, 2)  # the array axis nearest to S
    assert axis == 1
    thick = thick_slices(vol, axis=axis, mm=5)
    assert thick.shape == (6, 2, 7)
    np.testing.assert_allclose(thick.data[:, 1], data[:, 5:10].mean(1), rtol=1e-6)
    # the thick voxel's centre is the mean of the centres of the slices it averages
    centre = (thick.affine @ [2, 1, 3, 1])[:3]
    np.testing.assert_allclose(centre, np.mean([(affine @ [2, j, 3, 1])[:3] for j in range(5, 10)], 0))
    np.testing.assert_allclose(np.linalg.norm(thick.affine[:3, 1]), 6.0)


def test_resolution_row_scores_what_thick_slices_lose(data_root, tmp_path):
    """A predictor that sees only the scan's own voxels (the true labels read at the input's voxel
    centres) scores 1 on the 1 mm scan and less on thick slices; the row compares the two."""
    from brainfm.evaluation.resolution import SLICINGS, evaluate_resolution
    from brainfm.geometry import resample_to_grid

    truth = datasets.load_labels(data_root, "voxelmorph_seg")

    class Sampler:
        available_tasks = ["seg"]
        frames = []

        def predict(self, image, *, tasks, output_frame="input"):
            self.frames.append(output_frame)
            seg = resample_to_grid(truth, image.affine, image.shape, order="nearest")
            return Prediction(outputs={"seg": seg.with_data(np.asarray(seg.data).astype(np.int32))})

    r = evaluate_resolution(Sampler(), data_root, montage_path=tmp_path / "res.png")
    m = r["metrics"]
    assert m["dice17_1mm"] == pytest.approx(1.0)
    assert set(m["dice17"]) == {name for name, _, _ in SLICINGS}
    assert all(0.3 < d < 0.99 for d in m["dice17"].values())
    assert m["max_loss"] == pytest.approx(1.0 - min(m["dice17"].values()), abs=1e-4)
    assert r["passed"] is (m["max_loss"] <= 0.05)
    assert set(m["dice17_input_frame"]) == set(m["dice17"])
    assert all(0.3 < d < 0.99 for d in m["dice17_input_frame"].values())
    assert Sampler.frames == ["1mm"] + ["1mm", "input"] * len(SLICINGS)
    assert (tmp_path / "res.png").stat().st_size > 1000
    assert evaluate_resolution(Oracle(["t1"], None), data_root)["status"] == "n/a"


def test_samseg_beside_the_resolution_row_reads_the_axial_thick_slices(data_root, tmp_path, monkeypatch):
    from brainfm.evaluation import peer_samseg, table
    from brainfm.evaluation.resolution import SLICINGS, array_axis
    from brainfm.io import read_volume

    seen = {}

    def summary(python, image, truth, folder, *, threads=1):
        seen["image"], seen["folder"] = Path(image), Path(folder)
        return {"method": "SAMSEG 0.4", "status": "ok", "seconds": 500.0, "peak_rss_gb": 2.0, "threads": threads,
                "mean_dice_merged17": 0.75}

    monkeypatch.setattr(peer_samseg, "find_samseg_python", lambda given: given)
    monkeypatch.setattr(peer_samseg, "peer_summary", summary)
    peer = table._samseg_peer("/opt/samseg/bin/python", data_root, tmp_path, row="resolution")
    one_mm = datasets.load(data_root, "voxelmorph_vol")
    given = read_volume(seen["image"])
    axis = array_axis(one_mm.affine, SLICINGS[0][1])
    assert given.shape[axis] == one_mm.shape[axis] // SLICINGS[0][2]
    assert seen["folder"] == tmp_path / "samseg_resolution" and peer["scan"] == SLICINGS[0][0]
    assert "SAMSEG 0.4 on the axial 5 mm slices (its own grid): merged-17 Dice 0.750" in table._peer_text({"peer": peer})
    # the segmentation row's SAMSEG reads the 1 mm scan, in its own folder
    table._samseg_peer("/opt/samseg/bin/python", data_root, tmp_path, row="segmentation")
    assert seen["image"] == datasets.data_path(data_root, "voxelmorph_vol") and seen["folder"] == tmp_path / "samseg"


_FAKE_SAMSEG = """
import argparse, nibabel as nib, numpy as np
def main():
    p = argparse.ArgumentParser(); p.add_argument("-i"); p.add_argument("-o"); p.add_argument("--threads")
    a = p.parse_args()
    img = nib.load(a.i); x = np.asarray(img.dataobj, np.float32)
    lab = np.where(x > np.median(x[x > 0]), 2, np.where(x > 0, 3, 0)).astype(np.int32)
    flip = np.diag([1.0, 1.0, 1.0, 1.0])
    if "T2" in a.i:   # this one stored flipped: the same places on another grid
        flip[0, 0], flip[0, 3], lab = -1.0, x.shape[0] - 1, lab[::-1].copy()
    nib.save(nib.MGHImage(lab, img.affine @ flip), a.o + "/seg.mgz")
    return 0
"""


def test_samseg_beside_the_robustness_row_measures_its_own_agreement_between_contrasts(tmp_path, monkeypatch):
    """:func:`peer_agreement` runs SAMSEG (here a stand-in package with SAMSEG's entry point, run as a
    child process) on each contrast into its own folder, brings every segmentation onto the first scan's
    grid (the stand-in stores the T2's labels flipped) and gives the Dice of each pair; a second call reuses
    the finished runs; the table shows it in the peer column."""
    import sys

    from brainfm.evaluation import peer_samseg
    from brainfm.evaluation.robustness import pairwise_agreement
    from brainfm.evaluation.table import _peer_text

    pkg = tmp_path / "fake" / "samseg" / "cli"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "run_samseg.py").write_text(_FAKE_SAMSEG)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    python = peer_samseg.find_samseg_python(sys.executable)
    assert python == sys.executable
    aff = np.array([[0.0, 0.0, -1.2, 30.0], [0.9, 0.1, 0.0, -5.0], [-0.1, 0.9, 0.0, 12.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    base = np.zeros((12, 14, 10), np.float32)
    base[2:10, 2:12, 2:8] = rng.random((8, 10, 6)) + 1.0
    images, expected = {}, {}
    for name, shift in (("T1", 0.0), ("T2", 0.3), ("FLAIR", -0.2)):   # each contrast splits the tissue elsewhere
        x = np.where(base > 0, base + shift * (base > 1.5), 0).astype(np.float32)
        write_volume(Volume(x, aff), tmp_path / f"{name}.nii.gz")
        images[name] = tmp_path / f"{name}.nii.gz"
        expected[name] = np.where(x > np.median(x[x > 0]), 2, np.where(x > 0, 3, 0))
    peer = peer_samseg.peer_agreement(python, images, tmp_path / "runs", threads=1)
    assert peer["status"] == "ok" and peer["reused"] is False
    assert peer["pairs"] == pairwise_agreement(expected)   # the grids matched exactly, labels and all
    assert set(peer["pairs"]) == {"T1-T2", "T1-FLAIR", "T2-FLAIR"}
    assert 0 < peer["min_mean_dice_merged17"] < 1 and peer["seconds"] > 0
    assert all((tmp_path / "runs" / c / "seg.mgz").is_file() for c in images)
    again = peer_samseg.peer_agreement(python, images, tmp_path / "runs", threads=1)
    assert again["reused"] is True and again["pairs"] == peer["pairs"]
    text = _peer_text({"peer": peer})
    assert text.startswith("SAMSEG ?, its labels of each pair: merged-17 Dice T1-T2 ")
    assert "for the 3 scans" in text
    assert peer_samseg.peer_agreement(None, images, tmp_path / "none")["status"] == "skipped"


def test_the_robustness_row_s_samseg_reads_the_stroke_trio(data_root, tmp_path, monkeypatch):
    from brainfm.evaluation import peer_samseg, table

    seen = {}

    def agreement(python, images, folder, *, threads=1):
        seen["images"], seen["folder"] = dict(images), Path(folder)
        return {"method": "SAMSEG 0.4", "status": "ok", "pairs": {}}

    monkeypatch.setattr(peer_samseg, "find_samseg_python", lambda given: given)
    monkeypatch.setattr(peer_samseg, "peer_agreement", agreement)
    table._samseg_peer("/opt/samseg/bin/python", data_root, tmp_path, row="robustness")
    assert seen["folder"] == tmp_path / "samseg_robustness"
    assert seen["images"] == {c: datasets.data_path(data_root, f"stroke_{c.lower()}") for c in ("T1", "T2", "FLAIR")}


def test_anchors_file_has_the_measured_anchors():
    from brainfm.evaluation.anchors import load_anchors

    a = load_anchors()
    assert a["n4_seg3d"]["shrink4_seconds"] > 0 and "command" in a["n4_seg3d"]
    assert set(a["synthesis_baseline"]["pairs"]) == {"T1->T2", "T1->FLAIR", "T2->T1", "FLAIR->T1"}
    assert 0 < a["registration"]["mean_dice_lr"] < 1 and a["registration"]["seconds"] > 0


def test_shared_data_synthesis_baseline_matches_anchor(shared_data):
    from brainfm.evaluation.anchors import load_anchors
    from brainfm.evaluation.synthesis import measure_baselines

    stored = load_anchors()["synthesis_baseline"]["pairs"]
    now = measure_baselines(shared_data)
    for k, v in now.items():
        assert v["psnr"] == pytest.approx(stored[k]["psnr"], abs=1e-3)
        assert v["ssim"] == pytest.approx(stored[k]["ssim"], abs=1e-4)


def test_quality_measures_the_bias_field_and_results_warn_when_it_is_unreliable(data_root, tiny_model):
    from brainfm.evaluation.biasfield import applied_field_correlations, applied_t1, model_log_field
    from brainfm.evaluation.quality import measure_quality
    from brainfm.inference import Predictor
    from brainfm.models import load_model
    from brainfm.models.quality import BIAS_USABLE_CORR

    loaded = load_model(tiny_model)
    p = Predictor(loaded, device="cpu")
    q = measure_quality(p, data_root)
    t1, brain, fields = applied_t1(data_root)
    expected = float(np.mean(applied_field_correlations(model_log_field(p, method="head"), t1, brain, fields)))
    assert q["bias_applied_corr"] == pytest.approx(expected, abs=1e-4) and -1.0 <= expected <= 1.0
    assert q["level"] == "below-preview" and "bias_applied_corr" not in measure_quality(p, data_root, bias=False)
    # the held-out maps are also scored with the model's own labels (what compares two weights)
    assert 0.0 <= q["heldout_head_dice17"] <= 1.0 and 0.0 <= q["heldout_dice17"] <= 1.0

    image = datasets.load(data_root, "voxelmorph_vol")
    loaded.info.quality = {"bias_applied_corr": BIAS_USABLE_CORR - 0.01}
    warned = Predictor(loaded, device="cpu").predict(image, tasks=["seg", "bias"], bias_method="head").warnings
    assert [w for w in warned if w.startswith("this model's bias field is not reliable yet")]
    # auto: the fit to the segmentation; this untrained model labels too little inside structures, so
    # the fit says so and falls back to the head, and the results say which method made them
    auto = Predictor(loaded, device="cpu").predict(image, tasks=["seg", "bias"])
    assert auto.metadata["bias_method"] == auto["bias_field"].meta["method"] == auto["bias_corrected"].meta["method"]
    if auto.metadata["bias_method"] == "model head":
        assert [w for w in auto.warnings if w.startswith("bias field: the fit to the segmentation failed")]
    else:
        assert not [w for w in auto.warnings if "bias field" in w]
    seg_only = Predictor(loaded, device="cpu").predict(image, tasks=["seg"]).warnings
    assert not [w for w in seg_only if "bias field" in w]
    from brainfm.models.selection import quality_text
    assert quality_text({"level": "preview", "real_t1_dice17": 0.72, "bias_applied_corr": -0.03}) == \
        "preview (merged-17 Dice 0.720 on a real T1); bias field fitted to the segmentation"
    loaded.info.quality = {"bias_applied_corr": 0.9}
    assert not [w for w in Predictor(loaded, device="cpu").predict(image, tasks=["bias"]).warnings
                if "bias field" in w]


def test_quality_measures_the_registration_head_and_the_text_says_when_it_is_fitted(data_root, tiny_model):
    from brainfm.evaluation.quality import measure_quality
    from brainfm.evaluation.registration import carried_dice
    from brainfm.inference import Predictor
    from brainfm.models import load_model
    from brainfm.models.quality import REG_USABLE_DICE, unreliable_tasks
    from brainfm.models.selection import quality_text

    p = Predictor(load_model(tiny_model), device="cpu")
    q = measure_quality(p, data_root, heldout=False, bias=False)
    head = carried_dice(p, data_root, reg_method="head")
    assert head["method"] == "model head"
    assert q["reg_carried_dice17"] == pytest.approx(head["mean_merged17"], abs=1e-4)
    assert "reg_carried_dice17" not in measure_quality(p, data_root, heldout=False, bias=False, registration=False)
    assert unreliable_tasks({"reg_carried_dice17": REG_USABLE_DICE - 0.01}) == ["reg"]
    assert unreliable_tasks({"reg_carried_dice17": REG_USABLE_DICE}) == []
    # a fine-tuned model: its segmentation unmeasured, the heads it kept as reliable as its base's
    assert quality_text({"bias_applied_corr": 0.04}) == "unmeasured; bias field fitted to the segmentation"
    assert quality_text(None) == quality_text({}) == "unmeasured"
    assert quality_text({"level": "preview", "real_t1_dice17": 0.75, "bias_applied_corr": 0.1,
                         "reg_carried_dice17": 0.39}) == ("preview (merged-17 Dice 0.750 on a real T1); bias field "
                                                          "fitted to the segmentation; registration fitted to the "
                                                          "segmentations")


def test_quality_measures_the_synthesis_as_the_synthesis_row_does(data_root, tiny_model):
    from brainfm.evaluation.quality import measure_quality
    from brainfm.evaluation.synthesis import evaluate_synthesis, mean_ssim
    from brainfm.inference import Predictor
    from brainfm.models import load_model

    p = Predictor(load_model(tiny_model), device="cpu")
    q = measure_quality(p, data_root, heldout=False, bias=False, registration=False)
    pairs = evaluate_synthesis(p, data_root)["metrics"]["pairs"]
    assert q["synth_ssim"] == pytest.approx(np.mean([v["ssim"] for v in pairs.values()]), abs=1e-4)
    assert "synth_ssim" not in measure_quality(p, data_root, heldout=False, bias=False, registration=False,
                                               synthesis=False)
    seg_only = Predictor(load_model(write_native_seg_only(tiny_model.parent)), device="cpu")
    assert mean_ssim(seg_only, data_root) is None


def write_native_seg_only(folder):
    from ckpt_factory import write_native

    return write_native(folder / "seg_only.safetensors", heads={"segmentation": 33})[1]
