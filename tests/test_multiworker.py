"""`--distribute multiworker` for real: worker processes on 127.0.0.1, the cluster in TF_CONFIG.

Each test starts real `python -m retreino train` processes (TensorFlow's own
MultiWorkerMirroredStrategy, gRPC between them, free ports) on a tiny real subset. Worker 1 gets
its own TMPDIR, so the tests can see that it leaves nothing behind: the chief alone writes the run
directory, even though both are given the same --runs-dir (as on a shared volume).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, WATER_BOTTLES, cats_vs_dogs_subset

TIMEOUT = 900  # seconds for a whole cluster; the tests take 2-4 minutes on 2 busy cores


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _args(data, *extra) -> list[str]:
    # 16 training photos at --batch-size 8: 2 steps per epoch, each worker computing 4 of every 8.
    return ["--model", str(WATER_BOTTLES), "--data", str(data), "--epochs", "2", "--head-init", "warmup",
            "--warmup-epochs", "0", "--batch-size", "8", "--lr", "1e-3", "--unfreeze", "5", "--no-augment", "--accelerate", "off",
            "--test-split", "0", "--name", "mw", *extra]


def _env(**extra) -> dict:
    # A 60 s heartbeat timeout: on 2 crowded cores a live worker missed TF's default 10 s.
    return {**os.environ, "RETREINO_QUIET": "1", "PYTHONPATH": str(ROOT / "src"),
            "RETREINO_HEARTBEAT_TIMEOUT_S": "60", **extra}


def _cluster(tmp_path, commands: list[list[str]], tag: str, **env) -> list[tuple[int, str]]:
    """Start one process per command as worker i of a fresh 127.0.0.1 cluster; (returncode, log) each."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(len(commands))]
    procs, logs = [], []
    for i, cmd in enumerate(commands):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        scratch = tmp_path / f"tmp{i}"
        scratch.mkdir(exist_ok=True)
        log = tmp_path / f"{tag}{i}.log"
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=_env(TF_CONFIG=tf_config, TMPDIR=str(scratch), **env), cwd=tmp_path,
                                      stdout=log.open("w"), stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [(code, log.read_text()) for code, log in zip(codes or [p.returncode for p in procs], logs)]
    if codes is None:
        pytest.fail(f"the {tag} cluster was still running after {TIMEOUT} s; killed\n{_tails(results)}")
    return results


def _tails(results: list[tuple[int, str]], chars: int = 3000) -> str:
    """Every worker's exit code and last lines: a cluster's failure shows on one worker, its cause on another."""
    return "\n".join(f"--- worker {i} (exit {code}):\n{log[-chars:]}" for i, (code, log) in enumerate(results))


def _scratch_runs(tmpdir) -> list:
    """What retreino left in a worker's TMPDIR (TensorFlow's autograph writes its own files there too)."""
    return [p for p in tmpdir.iterdir() if p.name.startswith("retreino-")]


def _weights(path):
    from retreino import load_model

    return load_model(path).model.get_weights()


def _history(run_dir):
    from retreino.runs import RunDir

    return RunDir(run_dir).read_history()


@pytest.mark.slow
def test_two_workers_match_one_worker_on_the_same_global_batch(tmp_path):
    """Two workers, global batch 8 (4 per worker), 2 epochs, vs one process at batch 8.

    TensorFlow splits every global batch of the (seeded, identically ordered) pipeline between
    the workers and all-reduces the gradients, so each step applies the single process's update;
    what differs is float32 summation order (two partial sums of 4 instead of one of 8), a
    relative error of a few float32 epsilons (1.2e-7) per step. Over 4 Adam steps at lr 1e-3 that
    stays far below the tolerance here, atol 1e-5 (+ rtol 1e-6 for the large BatchNorm
    statistics, up to ~250, whose float32 spacing is 1.5e-5), while a wrong split would not:
    training on the batches in another order moved these weights by 1e-2 (measured).
    """
    data = cats_vs_dogs_subset(tmp_path / "data", train=8, validation=4)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "retreino", "train", *_args(data, "--runs-dir", str(runs), "--distribute", "multiworker")]
    # The single process runs beside the cluster: the cluster's waits on its collectives leave it the cores.
    single_log = tmp_path / "single.log"
    single = subprocess.Popen([sys.executable, "-m", "retreino", "train", *_args(data, "--runs-dir", str(tmp_path / "one"))],
                              env=_env(), cwd=tmp_path, stdout=single_log.open("w"), stderr=subprocess.STDOUT)
    try:
        results = _cluster(tmp_path, [cmd, cmd], "w")
        single.wait(timeout=TIMEOUT)
    finally:
        if single.poll() is None:
            single.kill()
            single.wait()
    assert [code for code, _ in results] == [0, 0], _tails(results)
    assert "over 2 replica(s)" in results[0][1]  # TF names it CollectiveAllReduceStrategy
    assert "not the chief" in results[1][1]
    assert [p.name for p in runs.iterdir()] == ["mw"]  # the chief's run only
    assert _scratch_runs(tmp_path / "tmp1") == []  # worker 1's scratch run: deleted

    assert single.returncode == 0, single_log.read_text()[-3000:]

    two, one = _history(runs / "mw"), _history(tmp_path / "one" / "mw")
    assert len(two) == len(one) == 2
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose([float(r[key]) for r in two], [float(r[key]) for r in one], atol=1e-5)
    assert float(one[1]["loss"]) < float(one[0]["loss"])  # it did train
    for a, b in zip(_weights(runs / "mw" / "last.keras"), _weights(tmp_path / "one" / "mw" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


# Worker 1 of the first cluster: the CLI's own argument parser and TrainConfig, through the
# Python API so that a callback can SIGKILL the process itself after the first step of epoch 2.
KILLED_WORKER = textwrap.dedent("""
    import argparse, os, signal, sys
    import keras
    from retreino.cli import train as cli_train
    from retreino.training import train

    class KillMidEpoch2(keras.callbacks.Callback):
        epoch = 0
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                print("worker 1: SIGKILL after step 1 of epoch 2", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    parser = argparse.ArgumentParser()
    cli_train.register(parser.add_subparsers())
    train(cli_train.config_from_args(parser.parse_args(sys.argv[1:])), callbacks=[KillMidEpoch2()])
""")


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_then_both_resumed_finishes(tmp_path):
    """Worker 1 dies by SIGKILL in the middle of epoch 2: the chief's collectives abort and it
    stops with one line saying how to go on; the run directory keeps epoch 1. `train --resume`
    on both workers (the tool's own resume: epoch granularity, the whole run state) finishes.

    Both workers must take the same steps to the end, the calibration of the best model
    included (its load is a collective broadcast). Here the resumed epoch 2 is not the best
    (val_accuracy 0.625 after 0.875, seen): the best model is epoch 1's, saved before the kill,
    and a worker resuming without a copy of it skipped the calibration and left the chief's
    broadcast waiting until the heartbeat timeout declared it dead."""
    data = cats_vs_dogs_subset(tmp_path / "data", train=8, validation=4)
    runs = tmp_path / "runs"
    args = _args(data, "--runs-dir", str(runs), "--distribute", "multiworker")
    # The chief learns of the death from the missed heartbeats: a 20 s timeout (60 s elsewhere here)
    # is still twice the TF default that a live worker once missed, and ends this cluster sooner.
    (chief, chief_log), (killed, killed_log) = _cluster(
        tmp_path, [[sys.executable, "-m", "retreino", "train", *args], [sys.executable, "-c", KILLED_WORKER, "train", *args]],
        "first", RETREINO_HEARTBEAT_TIMEOUT_S="20")
    first = _tails([(chief, chief_log), (killed, killed_log)])
    assert killed == -signal.SIGKILL, first
    assert "SIGKILL after step 1 of epoch 2" in killed_log, first
    assert chief != 0, first
    assert "a worker of the cluster stopped" in chief_log and f"retreino train --resume {runs / 'mw'}" in chief_log, first
    assert [int(r["epoch"]) for r in _history(runs / "mw")] == [1]
    epoch1 = _history(runs / "mw")[0]
    for left in _scratch_runs(tmp_path / "tmp1"):  # a SIGKILLed process cleans nothing up: its scratch run stays
        assert left.name.startswith("retreino-worker1-")
        shutil.rmtree(left)

    resume = [sys.executable, "-m", "retreino", "train", "--resume", str(runs / "mw")]
    results = _cluster(tmp_path, [resume, resume], "resumed")
    assert [code for code, _ in results] == [0, 0], _tails(results)
    for _, log in results:
        assert "Resuming" in log and "after epoch 1" in log, _tails(results)
        assert "Calibrating" in log, _tails(results)  # the chief and the worker alike
    history = _history(runs / "mw")
    assert [int(r["epoch"]) for r in history] == [1, 2] and history[0] == epoch1
    state = json.loads((runs / "mw" / "state.json").read_text())
    assert state["finished"] and state["epoch"] == 2
    assert state["best_epoch"] == 1, "epoch 2 became the best: the case of a best model saved before the kill is gone"
    assert (runs / "mw" / "fine_tuned_model.keras").is_file()
    assert [p.name for p in runs.iterdir()] == ["mw"]
    assert _scratch_runs(tmp_path / "tmp1") == []


@pytest.mark.parametrize("committed", [True, False])
def test_a_resuming_workers_copy_holds_the_chiefs_best_pair_as_the_chief_will_see_it(tmp_path, committed):
    """The chief's run directory as a kill during `commit_best` leaves it: epoch 1's pair in place,
    epoch 2's under pending names, with or without the commit mark. The worker's copy settles to
    the pair the chief's own lock settles to (`recover_best`); the chief's files are left alone."""
    from retreino import runs
    from retreino.resume import _worker_copy

    chief = tmp_path / "runs" / "mw"
    chief.mkdir(parents=True)
    for name in (runs.CONFIG, runs.STATE, runs.HISTORY, runs.LAST, runs.LABELS):
        (chief / name).write_text(name)
    for final, pending in runs.PENDING.items():
        (chief / final).write_text("epoch 1")
        (chief / pending).write_text("epoch 2")
    if committed:
        (chief / runs.COMMIT).write_text("")
    before = {p.name: p.read_text() for p in chief.iterdir()}

    (tmp_path / "scratch").mkdir()  # the worker's scratch folder (`_worker_runs_dir`)
    copy = _worker_copy(chief, tmp_path / "scratch" / "mw")
    expected = "epoch 2" if committed else "epoch 1"
    assert {p.name: p.read_text() for p in copy.iterdir()} == {
        runs.CONFIG: runs.CONFIG, runs.STATE: runs.STATE, runs.HISTORY: runs.HISTORY, runs.LAST: runs.LAST,
        runs.LABELS: runs.LABELS, runs.BEST_KERAS: expected, runs.BEST_H5: expected}
    assert {p.name: p.read_text() for p in chief.iterdir()} == before
    runs.recover_best(chief)  # what the chief's lock does
    assert [(chief / f).read_text() for f in runs.PENDING] == [expected, expected]
