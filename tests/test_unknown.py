"""Calibration and the unknown answer: numbers first, then the same decisions through every runtime and serve."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, real_images
from retreino import ood
from retreino.calibration import apply_temperature, expected_calibration_error, fit_temperature

FLOWERS = SHARED / "datasets" / "flowers"


def test_temperature_fixes_an_overconfident_model_and_keeps_the_winner():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    # Right 80% of the time but always 99% sure: overconfident.
    pred = np.where(rng.random(2000) < 0.8, y, 1 - y)
    probs = np.where(np.eye(2)[pred] == 1, 0.99, 0.01)
    t = fit_temperature(probs, y)
    scaled = apply_temperature(probs, t)
    assert t > 1.5
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(scaled, y) < 0.05 < expected_calibration_error(probs, y)


def test_a_fit_that_does_not_lower_held_out_ece_keeps_t_1():
    from retreino.calibration import fit_temperature_checked

    rng = np.random.default_rng(3)
    # Over-confident: the held-out check keeps the fitted T.
    y = rng.integers(0, 2, 1000)
    pred = np.where(rng.random(1000) < 0.8, y, 1 - y)
    t, check = fit_temperature_checked(np.where(np.eye(2)[pred] == 1, 0.99, 0.01), y)
    assert check["kept"] and t == check["fitted"] > 1.5
    assert check["heldout_ece_scaled"] < check["heldout_ece_raw"]
    # Already calibrated (labels drawn from the probabilities): T is fitted near 1, and whenever the
    # cross-fitted T does not lower the held-out ECE the answer is exactly 1.
    kept = []
    for seed in range(6):
        r = np.random.default_rng(seed)
        p1 = r.uniform(0.5, 1.0, 400)
        probs = np.c_[p1, 1 - p1]
        labels = (r.random(400) > p1).astype(int)
        t, check = fit_temperature_checked(probs, labels)
        assert 0.7 < check["fitted"] < 1.4
        assert check["kept"] == (check["heldout_ece_scaled"] < check["heldout_ece_raw"])
        assert t == (check["fitted"] if check["kept"] else 1.0)
        kept.append(check["kept"])
    assert not all(kept)


def test_probe_out_of_fold_only_for_the_probe_head():
    import warnings

    from sklearn.linear_model import LogisticRegression

    from retreino.calibration import probe_out_of_fold

    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, (150, 8)) + 0.7, rng.normal(0, 1, (150, 8)) - 0.7]
    y = np.repeat([0, 1], 150)
    order = rng.permutation(300)
    x, y = x[order], y[order]
    tx, ty, vx, vy = x[:240], y[:240], x[240:], y[240:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = LogisticRegression(C=0.1, max_iter=2000).fit(tx, ty)
    oof = probe_out_of_fold(tx, ty, vx, vy, head.predict_proba(vx), 2, c=0.1)
    assert oof.shape == (300, 2) and np.allclose(oof.sum(1), 1)
    assert 0.75 < np.mean(oof.argmax(1) == np.r_[ty, vy]) < 1.0  # held out: not the training fit's accuracy
    # A head that is not this probe (here: much sharper) is refused.
    sharper = apply_temperature(head.predict_proba(vx), 0.3)
    assert probe_out_of_fold(tx, ty, vx, vy, sharper, 2, c=0.1) is None


def test_detectors_accept_the_chosen_share_and_reject_far_points():
    rng = np.random.default_rng(1)
    train = np.r_[rng.normal(0, 1, (200, 16)) + 4, rng.normal(0, 1, (200, 16)) - 4]
    labels = np.repeat([0, 1], 200)
    val = np.r_[rng.normal(0, 1, (100, 16)) + 4, rng.normal(0, 1, (100, 16)) - 4]
    far = rng.normal(0, 1, (100, 16)) * 0.1 + np.r_[4, -4, np.zeros(14)] * 3
    for method in ood.METHODS:
        det = ood.fit_detector(train, labels, val, 2, method=method, accept=0.9)
        assert 0.85 <= np.mean(~det.is_unknown(det.score(val))) <= 0.95
        assert det.is_unknown(det.score(far)).mean() > 0.9


def test_knn_leave_one_out_scores_each_training_feature_against_the_others():
    rng = np.random.default_rng(3)
    bank = ood._unit(rng.normal(0, 1, (40, 6)))
    loo = ood.knn_leave_one_out(bank, k=3)
    for i in (0, 17, 39):
        others = np.delete(bank, i, axis=0)
        assert loo[i] == pytest.approx(ood.knn_score(bank[i:i + 1], others, k=3)[0], abs=1e-6)
    # Scored in blocks of rows, as for tens of thousands of photos: the same scores.
    many = rng.normal(0, 1, (ood.KNN_BLOCK * 2 + 5, 6))
    d = np.sqrt(np.maximum(2 - 2 * ood._unit(many) @ bank.T, 0))
    assert np.allclose(ood.knn_score(many, bank, k=3), -np.sort(d, axis=1)[:, 2], atol=1e-5)


def test_pooled_knn_threshold_accepts_the_chosen_share_of_new_images_more_steadily():
    """Validation alone (40 images) puts the 5% cut between its 2nd and 3rd lowest scores; with the
    training images' leave-one-out scores (600) the cut is steadier: over 30 draws the share of
    new images accepted strays less from 95%."""
    rng = np.random.default_rng(4)
    spread = {False: [], True: []}
    for _ in range(30):
        train, val, new = (rng.normal(0, 1, (n, 8)) for n in (600, 40, 2000))
        for pool in spread:
            det = ood.fit_detector(train, np.zeros(600, int), val, 1, method="knn", accept=0.95, pool_training=pool)
            spread[pool].append(np.mean(~det.is_unknown(det.score(new))))
    pooled, alone = np.array(spread[True]), np.array(spread[False])
    assert abs(pooled.mean() - 0.95) < 0.01
    assert np.abs(pooled - 0.95).mean() < 0.6 * np.abs(alone - 0.95).mean()
    assert det.threshold_from == {"validation": 40, "knn_training": 600}


def test_a_large_training_set_keeps_a_bounded_knn_bank(monkeypatch):
    """Beyond KNN_BANK_MAX training features the bank is a seeded random subset; the other training
    features are scored against it like new photos and still join the threshold."""
    monkeypatch.setattr(ood, "KNN_BANK_MAX", 150)
    rng = np.random.default_rng(6)
    train, val, new = (rng.normal(0, 1, (n, 8)) for n in (900, 60, 3000))
    det = ood.fit_detector(train, np.zeros(900, int), val, 1, method="knn", accept=0.95, pool_training=True)
    again = ood.fit_detector(train, np.zeros(900, int), val, 1, method="knn", accept=0.95, pool_training=True)
    assert det.arrays["bank"].shape == (150, 8) and np.array_equal(det.arrays["bank"], again.arrays["bank"])
    assert det.threshold_from == {"validation": 60, "knn_training": 900}
    assert abs(np.mean(~det.is_unknown(det.score(new))) - 0.95) < 0.02


def test_probe_out_of_fold_with_mirror_images():
    """A probe fitted on photos and their mirrors: its folds keep each photo's mirror with it."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from retreino.calibration import probe_out_of_fold

    rng = np.random.default_rng(5)
    x = np.r_[rng.normal(0, 1, (150, 8)) + 0.7, rng.normal(0, 1, (150, 8)) - 0.7]
    y = np.repeat([0, 1], 150)
    mirror = x + rng.normal(0, 0.3, x.shape)  # a mirror image's features: close to its photo's
    order = rng.permutation(300)
    x, y, mirror = x[order], y[order], mirror[order]
    tx, ty, vx, vy, tm, vm = x[:240], y[:240], x[240:], y[240:], mirror[:240], mirror[240:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = LogisticRegression(C=0.1, max_iter=2000).fit(np.r_[tx, tm], np.r_[ty, ty])
    # Without the mirrors the refitted probe is not this head: refused, as before.
    assert probe_out_of_fold(tx, ty, vx, vy, head.predict_proba(vx), 2, c=0.1) is None
    oof = probe_out_of_fold(tx, ty, vx, vy, head.predict_proba(vx), 2, c=0.1, train_mirror=tm, val_mirror=vm)
    assert oof.shape == (300, 2) and 0.75 < np.mean(oof.argmax(1) == np.r_[ty, vy]) < 1.0
    averaged = probe_out_of_fold(tx, ty, vx, vy, head.predict_proba(vx), 2, c=0.1, train_mirror=tm,
                                 val_mirror=vm, average_mirror=True)
    assert not np.allclose(averaged, oof) and np.allclose(averaged.sum(1), 1)
    with pytest.raises(ValueError):
        probe_out_of_fold(tx, ty, vx, vy, head.predict_proba(vx), 2, c=0.1, average_mirror=True)


@pytest.fixture(scope="session")
def unknown_run(unknown_model):
    """conftest's `unknown_model` with its onnx and tflite exports (which carry the features output)."""
    from retreino import load_model
    from retreino.export import export_models

    export_models(load_model(unknown_model / "fine_tuned_model.keras"), ["onnx", "tflite"],
                  images=real_images("test", "cats", 10), measure=False)
    return unknown_model


def _images():
    return real_images("test", "cats", 6) + real_images("test", "dogs", 6) + sorted(FLOWERS.glob("*/*.jpg"))[::125]


@pytest.mark.slow
def test_predict_runtimes_and_serve_agree_on_unknown(unknown_run):
    from fastapi.testclient import TestClient

    from retreino.inference import Predictor
    from retreino.prediction import predict, predict_folder
    from retreino.serve.app import create_app

    images = _images()
    keras_answers = [predict(unknown_run, p, runtime="keras") for p in images]
    decisions = [a.unknown for a in keras_answers]
    assert any(decisions) and not all(decisions)  # flowers rejected, most pets not
    assert sum(decisions[12:]) >= 8  # of 10 flowers
    for runtime in ("onnx", "tflite"):
        answers = [predict(unknown_run, p, runtime=runtime) for p in images]
        assert [a.unknown for a in answers] == decisions, runtime
        assert np.allclose([a.unknown_score for a in answers], [a.unknown_score for a in keras_answers], atol=1e-3)
        assert np.allclose([a.confidence for a in answers], [a.confidence for a in keras_answers], atol=1e-3)
    rows = predict_folder(unknown_run, images, progress=False, runtime="keras")
    assert [r["unknown"] for r in rows] == decisions
    assert {r["predicted"] for r in rows if r["unknown"]} == {"unknown"}
    off = predict(unknown_run, images[decisions.index(True)], unknown=False)
    assert not off.unknown and off.class_name in ("cats", "dogs")
    # The predictor applies the temperature: calibrated != raw whenever T != 1.
    pred = Predictor(unknown_run / "exports" / "onnx", runtime="auto")
    full = pred.predict_pixels_full(np.stack([pred.load_pixels(p) for p in images[:2]]))
    assert np.allclose(full["probabilities"], apply_temperature(full["raw"], pred.info.temperature), atol=1e-6)

    predictor = Predictor(unknown_run / "exports" / "tflite", runtime="auto")
    with TestClient(create_app(predictor)) as client:
        answers = []
        for part in (images[:11], images[11:]):  # at most 16 files per request
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in part]
            answers += client.post("/predict", files=files).json()["predictions"]
    assert [p["unknown"] for p in answers] == decisions
    assert all(p["class"] == "unknown" and p["would_say"] in ("cats", "dogs") for p in answers if p["unknown"])


@pytest.mark.slow
def test_cli_evaluate_ood_prints_the_calibration_and_unknown_lines(unknown_run, cats_dogs_subset, tmp_path, capsys):
    import json

    from conftest import link_or_copy
    from retreino.cli import main

    other = tmp_path / "flowers"
    other.mkdir()
    for f in sorted(FLOWERS.glob("*/*.jpg"))[::125]:  # 10 flowers, 2 of each kind
        link_or_copy(f, other / f"{f.parent.name}_{f.name}")
    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(unknown_run / "fine_tuned_model.keras"), "--data", str(cats_dogs_subset),
                 "--ood", str(other), "--out", str(out_dir), "--runtime", "keras"]) == 0
    lines = capsys.readouterr().out.splitlines()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    cal, o = metrics["calibration"], metrics["ood"]
    assert cal["temperature"] is not None and cal["temperature"] != 1.0
    assert (f"calibration  T {cal['temperature']:.3f}   ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}   "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}") in lines
    knn, msp = o["methods"]["knn"], o["methods"]["msp (baseline)"]
    assert o["n_ood"] == 10 and o["n_in"] == 40 and knn["ood_rejected"] >= 0.8
    line = next(x for x in lines if x.startswith("unknown (knn)"))
    assert line == (f"unknown (knn)  AUROC {knn['auroc']:.4f}   {knn['ood_rejected']:.1%} of 10 other images rejected   "
                    f"{knn['in_rejected']:.1%} of the evaluated images rejected, accuracy on the rest {knn['accuracy_kept']:.1%}   "
                    f"(max-probability baseline: AUROC {msp['auroc']:.4f}, {msp['ood_rejected']:.1%} rejected)")
