"""k-fold cross-validation: two real folds of a real fine-tune on real photos, then resume and errors."""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
from pathlib import Path

import pytest

from conftest import WATER_BOTTLES, cats_vs_dogs_subset
from retreino.cli import main

MODEL = str(WATER_BOTTLES)


def _pool(root: Path, per_split: dict[str, int]) -> Path:
    return cats_vs_dogs_subset(root, **per_split)


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """retreino cv, 2 folds, 1 epoch each, on a pool of 8 cats + 8 dogs (and 2 + 2 test images)."""
    data = _pool(tmp_path_factory.mktemp("data"), {"train": 5, "validation": 3, "test": 2})
    runs = tmp_path_factory.mktemp("runs")
    args = ["cv", "--model", MODEL, "--data", str(data), "--folds", "2", "--epochs", "1", "--warmup-epochs", "0", "--head-init", "warmup",
            "--seed", "7", "--runs-dir", str(runs), "--name", "pets"]
    code, out = _cli(*args)
    assert code == 0, out
    return runs / "pets-cv", data, args, out


def test_cv_writes_summary_table_plot_and_one_run_per_fold(cv_run):
    cv_dir, _, _, out = cv_run
    for name in ("cv_summary.json", "cv_table.txt", "cv_boxplot.png", "plan.json"):
        assert (cv_dir / name).stat().st_size > 0, name
    assert (cv_dir / "cv_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in (1, 2):
        fold = cv_dir / f"fold_{k}"
        for name in ("config.json", "history.csv", "state.json", "fine_tuned_model.keras", "fold_metrics.json"):
            assert (fold / name).exists(), fold / name
        assert json.loads((fold / "state.json").read_text())["finished"] is True
    # Progress: "fold k/N" lines with an ETA, and the final table with mean and std rows.
    assert "== fold 1/2 | elapsed" in out and "== fold 2/2 |" in out and "ETA" in out
    table = (cv_dir / "cv_table.txt").read_text()
    assert "mean" in table and "std (n-1)" in table and table.strip() in out


def test_mean_and_std_are_those_of_the_per_fold_metrics(cv_run):
    summary = json.loads((cv_run[0] / "cv_summary.json").read_text())
    folds = summary["per_fold"]
    assert [f["fold"] for f in folds] == [1, 2] and summary["std_ddof"] == 1
    assert {"accuracy", "macro_f1", "loss", "roc_auc"} <= set(summary["mean"])
    for key in summary["mean"]:
        values = [f[key] for f in folds]
        assert summary["mean"][key] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert summary["std"][key] == pytest.approx(statistics.stdev(values), abs=1e-12)
    for f in folds:
        assert 0.0 <= f["accuracy"] <= 1.0 and f["loss"] > 0 and f["epochs"] == 1
        # Measured again from the saved best model: the same number training logged for it.
        history = (Path(f["run_dir"]) / "history.csv").read_text().splitlines()
        header, row = history[0].split(","), history[1].split(",")
        assert f["accuracy"] == pytest.approx(float(row[header.index("val_accuracy")]), abs=1e-6)


def _file_id(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_folds_are_stratified_disjoint_and_leave_test_untouched(cv_run):
    cv_dir, data, _, _ = cv_run
    plan = json.loads((cv_dir / "plan.json").read_text())
    pool = sorted(str(p.relative_to(data)) for s in ("train", "validation") for p in (data / s).rglob("*.jpg"))
    assert sorted(plan["assignment"]) == pool  # every train+validation image, each in exactly one fold
    assert not any(p.startswith("test") for p in plan["assignment"])
    for k in (1, 2):
        held = {p for p, fold in plan["assignment"].items() if fold == k}
        assert {p.split("/")[1] for p in held} == {"cats", "dogs"} and len(held) == 8  # 4 + 4: stratified
        fold_data = cv_dir / "data" / f"fold_{k}"
        # Fold folders hold hard links (a symlink out of a data folder is refused): same file = same inode.
        val = {_file_id(p) for p in (fold_data / "validation").rglob("*.jpg")}
        train = {_file_id(p) for p in (fold_data / "train").rglob("*.jpg")}
        assert val == {_file_id(data / p) for p in held}
        assert not val & train and len(train) == 8
        assert not (fold_data / "test").exists()
        # The links keep the class: a cat held out in fold k is under validation/cats.
        cats = {_file_id(p) for p in data.rglob("cats/*.jpg")}
        for p in (fold_data / "validation" / "cats").iterdir():
            assert _file_id(p) in cats
        record = json.loads((cv_dir / f"fold_{k}" / "config.json").read_text())
        assert record["config"]["seed"] == 7 and record["config"]["test_split"] == 0.0
        assert record["data"]["class_names"] == ["cats", "dogs"]


def test_rerun_skips_finished_folds_and_resumes_a_half_done_one(cv_run):
    cv_dir, _, args, _ = cv_run
    before = json.loads((cv_dir / "cv_summary.json").read_text())
    # As if killed after fold 2 finished training but before it was measured.
    (cv_dir / "fold_2" / "fold_metrics.json").unlink()
    code, out = _cli(*args)
    assert code == 0, out
    assert "fold 1/2: already finished" in out
    assert "fold_2: training finished earlier; measuring its best model" in out
    assert "epoch  1/1" not in out
    after = json.loads((cv_dir / "cv_summary.json").read_text())
    for key in before["mean"]:
        assert after["mean"][key] == pytest.approx(before["mean"][key], abs=1e-6)
        assert after["std"][key] == pytest.approx(before["std"][key], abs=1e-6)


def test_resume_with_other_settings_is_refused(cv_run, capsys):
    _, _, args, _ = cv_run
    changed = [a if a != "7" else "8" for a in args]  # another seed, same --name
    assert main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retreino cv: error:") and "seed" in err and "--name" in err and "\n" not in err


def test_too_few_images_per_class_for_the_folds(tmp_path, capsys):
    data = _pool(tmp_path / "data", {"train": 2, "validation": 1})
    code = main(["cv", "--model", MODEL, "--data", str(data), "--folds", "4", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "need at least 4 per class" in err and "--folds 3" in err and "\n" not in err
    assert main(["cv", "--model", MODEL, "--data", str(data), "--folds", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err


def _tensorflow_messages(make_and_call) -> list[str]:
    """What TensorFlow's logger says while `make_and_call` runs."""
    import logging

    class Catch(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    catch = Catch()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(catch)
    try:
        make_and_call()
    finally:
        logger.removeHandler(catch)
    return catch.messages


def test_folds_and_trials_do_not_show_tensorflows_retracing_notice():
    """A fold or trial builds a new model, so a new tf.function per fold from one source line:
    TensorFlow takes that for a loop that retraces needlessly. The selection loops drop that
    notice only (16 lines of it in a 6-fold `retreino cv` before)."""
    import logging

    import tensorflow as tf

    from retreino._env import quiet_retracing

    # TensorFlow counts traces per source line and warns at most a few times per line: one line each.
    def outside():
        for scale in range(6):
            tf.function(lambda t, s=float(scale): t * s)(tf.ones((2,)))  # a new function per "fold"

    def inside():
        filters = list(logging.getLogger("tensorflow").filters)
        with quiet_retracing():
            for scale in range(6):
                tf.function(lambda t, s=float(scale): t + s)(tf.ones((2,)))
            tf.get_logger().warning("another tensorflow warning")
        assert logging.getLogger("tensorflow").filters == filters  # only inside the block

    assert any("retracing" in m for m in _tensorflow_messages(outside)), "TensorFlow no longer warns: cannot fail"
    assert _tensorflow_messages(inside) == ["another tensorflow warning"]
