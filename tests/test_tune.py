"""Hyper-parameter search: two real Optuna trials, the best config reproduced by `retreino train`,
a pruned trial, an interrupted trial run again, and a resumed study."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from conftest import WATER_BOTTLES, cats_vs_dogs_subset
from retreino.cli import main
from retreino.config import AugmentConfig, TrainConfig

MODEL = str(WATER_BOTTLES)


def _data(root: Path) -> Path:
    """6 + 6 training, 4 + 4 validation and 2 + 2 test photos (links to the shared data)."""
    return cats_vs_dogs_subset(root, train=6, validation=4, test=2)


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _leaderboard(tune_dir: Path) -> list[dict]:
    with open(tune_dir / "leaderboard.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tuned(data, tmp_path_factory):
    """retreino tune, 2 trials of 1 epoch; warm-up fixed at 0 to keep it short, the rest searched."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["tune", "--model", MODEL, "--data", str(data), "--trials", "2", "--epochs", "1", "--warmup-epochs", "0",
            "--unfreeze-range", "1,20", "--runs-dir", str(runs), "--name", "pets"]
    code, out = _cli(*args)
    assert code == 0, out
    return runs / "pets-tune", args, out


def test_tune_writes_leaderboard_best_config_and_one_run_per_trial(tuned):
    tune_dir, _, out = tuned
    for name in ("leaderboard.csv", "best_config.json", "study.db", "tune.json", "tune_history.png"):
        assert (tune_dir / name).stat().st_size > 0, name
    rows = _leaderboard(tune_dir)
    assert [r["state"] for r in rows] == ["complete", "complete"] and [r["rank"] for r in rows] == ["1", "2"]
    scores = [float(r["val_accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert run_dir.parent == tune_dir and run_dir.name == f"trial_{int(r['trial']):03d}"
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        # The leaderboard's values are the ones the trial trained with.
        assert cfg["learning_rate"] == pytest.approx(float(r["learning_rate"]), rel=1e-5)
        assert cfg["unfreeze"] == int(r["unfreeze"]) and 1 <= cfg["unfreeze"] <= 20
        assert cfg["warmup_epochs"] == 0 == int(r["warmup_epochs"])
        assert 1e-6 <= cfg["learning_rate"] <= 1e-3 and 0 <= cfg["dropout"] <= 0.5
        assert (run_dir / "fine_tuned_model.keras").exists()
    # Two trials of the same seed differ only by their values: the sampler did vary them.
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"]
    assert "== trial 1/2 | elapsed" in out and "== trial 2/2 |" in out and "ETA" in out
    assert f"retreino train --config {tune_dir / 'best_config.json'}" in out


def test_best_config_reproduces_the_best_trial(tuned, tmp_path):
    tune_dir, _, _ = tuned
    best = json.loads((tune_dir / "best_config.json").read_text())
    top = _leaderboard(tune_dir)[0]
    assert best["tune"]["trial"] == int(top["trial"])
    assert best["tune"]["val_accuracy"] == pytest.approx(float(top["val_accuracy"]), abs=1e-6)
    cfg = TrainConfig.load(tune_dir / "best_config.json")
    trial_cfg = TrainConfig.load(Path(top["run_dir"]) / "config.json")
    assert cfg.learning_rate == trial_cfg.learning_rate and cfg.augment == trial_cfg.augment and cfg.name == "pets-best"

    code, out = _cli("train", "--config", str(tune_dir / "best_config.json"), "--runs-dir", str(tmp_path))
    assert code == 0, out
    state = json.loads((tmp_path / "pets-best" / "state.json").read_text())
    # Same seed and settings: the same score, give or take one validation image (8 here).
    assert state["best"] == pytest.approx(best["tune"]["val_accuracy"], abs=1 / 8 + 1e-6)
    history = (tmp_path / "pets-best" / "history.csv").read_text().splitlines()
    header, row = history[0].split(","), history[1].split(",")
    assert float(row[header.index("val_loss")]) == pytest.approx(best["tune"]["val_loss"], rel=0.02)


def test_second_invocation_continues_the_study(tuned):
    tune_dir, args, _ = tuned
    before = _leaderboard(tune_dir)
    code, out = _cli(*args)  # --trials 2 again: the study already has them
    assert code == 0, out
    assert "2 trials (2 done before, 0 to run)" in out and "== trial" not in out
    assert _leaderboard(tune_dir) == before
    assert sorted(p.name for p in tune_dir.glob("trial_*")) == ["trial_000", "trial_001"]


def test_changed_search_space_is_refused(tuned, capsys):
    _, args, _ = tuned
    changed = [a if a != "1,20" else "1,30" for a in args]
    assert main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retreino tune: error:") and "space.unfreeze" in err and "\n" not in err


def test_interrupted_trial_runs_again_and_a_bad_trial_is_pruned(data, tmp_path):
    """A trial left RUNNING (its process killed) is retried with its values; the pruner stops it after epoch 1."""
    import optuna

    from retreino.selection.tune import STUDY_DB, STUDY_NAME, SearchSpace, tune

    space = SearchSpace(warmup_epochs=(0, 0), unfreeze=(1, 10))
    tune_dir = tmp_path / "pets-tune"
    tune_dir.mkdir()
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{tune_dir / STUDY_DB}", direction="maximize")
    killed = study.ask()
    values = space.suggest(killed)  # then the process "dies": the trial stays RUNNING

    lines: list[str] = []
    # ThresholdPruner(lower=1.01) prunes any trial at its first report: accuracy never exceeds 1.
    result = tune(model=MODEL, data=str(data), trials=1, epochs=2, space=space, seed=42, head_init="warmup", runs_dir=str(tmp_path),
                  name="pets", pruner=optuna.pruners.ThresholdPruner(lower=1.01), printer=lines.append)
    text = "\n".join(lines)
    assert "trial 0 was interrupted; it runs again with the same values" in text
    rows = {r["trial"]: r for r in result.leaderboard}
    assert rows[0]["state"] == "interrupted" and rows[1]["state"] == "pruned"
    assert rows[1]["learning_rate"] == pytest.approx(values["learning_rate"]) and rows[1]["unfreeze"] == values["unfreeze"]
    run_dir = tmp_path / "pets-tune" / "trial_001"
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header + epoch 1: epoch 2 never ran
    assert json.loads((run_dir / "state.json").read_text())["pruned"] is True
    assert (run_dir / "learning_curves.png").exists()
    assert "pruned after epoch 1" in text
    assert result.best is None and not (tune_dir / "best_config.json").exists()
    assert "No trial finished" in text


def test_monitor_val_loss_minimizes_and_keeps_the_lowest_loss_trial(data, tmp_path):
    """With "monitor": "val_loss" the study minimizes: its best trial, rank 1 and best_config.json are the lowest loss."""
    import optuna

    from retreino.selection.tune import STUDY_DB, STUDY_NAME, SearchSpace, tune

    lines: list[str] = []
    # No linear probe: its epoch scores the same in every trial (it is fitted before the searched values act).
    result = tune(model=MODEL, data=str(data), trials=2, epochs=1, monitor="val_loss", head_init="warmup",
                  runs_dir=str(tmp_path), name="pets", space=SearchSpace(warmup_epochs=(0, 0), unfreeze=(1, 20)),
                  printer=lines.append)
    tune_dir = tmp_path / "pets-tune"
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tune_dir / STUDY_DB}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and done[0].value != done[1].value
    lowest = min(done, key=lambda t: t.value)
    assert study.best_trial.number == lowest.number
    for t in done:  # each trial's score is the lowest val_loss of its run: the model it kept
        run_dir = tune_dir / f"trial_{t.number:03d}"
        losses = [float(r["val_loss"]) for r in csv.DictReader(io.StringIO((run_dir / "history.csv").read_text()))]
        assert t.value == pytest.approx(min(losses), rel=1e-5)
        assert json.loads((run_dir / "state.json").read_text())["best"] == pytest.approx(min(losses), rel=1e-5)
    rows = _leaderboard(tune_dir)
    assert [int(r["trial"]) for r in rows] == [lowest.number, 1 - lowest.number] and rows[0]["rank"] == "1"
    assert float(rows[0]["val_loss"]) < float(rows[1]["val_loss"])
    assert float(rows[0]["score"]) == pytest.approx(lowest.value, rel=1e-5)
    best = json.loads((tune_dir / "best_config.json").read_text())
    assert best["tune"]["trial"] == lowest.number and best["tune"]["monitor"] == "val_loss"
    assert result.best["trial"] == lowest.number and result.best_config.monitor == "val_loss"
    assert f"Best: trial {lowest.number}, val_loss {lowest.value:.4f}" in "\n".join(lines)


def test_augment_strength_scales_the_base_and_zero_turns_it_off():
    from retreino.selection.tune import scaled_augment

    base = AugmentConfig()
    double = scaled_augment(base, 2.0)
    assert (double.rotation, double.width_shift, double.height_shift) == (2 * base.rotation, 2 * base.width_shift, 2 * base.height_shift)
    assert double.horizontal_flip == base.horizontal_flip
    assert not scaled_augment(base, 0.0).enabled
    custom = scaled_augment(AugmentConfig(rotation=10, width_shift=0, height_shift=0, zoom=0.1), 0.5)
    assert (custom.rotation, custom.width_shift, custom.zoom) == (5.0, 0.0, 0.05)


def test_bad_ranges_are_one_line_errors(data, capsys):
    assert main(["tune", "--model", MODEL, "--data", str(data), "--lr-range", "1e-3,1e-5"]) == 2
    assert "above" in capsys.readouterr().err
    assert main(["tune", "--model", MODEL, "--data", str(data), "--dropout-range", "a,b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retreino tune: error: --dropout-range takes LOW,HIGH") and "\n" not in err
