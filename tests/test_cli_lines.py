"""What the command line says when work stops: the command that continues it, and why a run has no model."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import CATS_VS_DOGS, WATER_BOTTLES, real_images


def test_interrupted_prints_the_exact_command_to_run_again():
    """A real Ctrl+C (SIGINT) while a folder is being predicted, once the first result is out."""
    folder = str(CATS_VS_DOGS / "test")
    args = ["predict", str(WATER_BOTTLES), folder, "--runtime", "keras", "--batch-size", "1"]
    # As a terminal's foreground job gets it: SIGINT handled and unblocked. A child inherits both from
    # this test worker, and a Python started with SIGINT ignored leaves it ignored (once in CI the
    # command ran to its end, exit 0). The exec keeps the process id that the signal goes to.
    start = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
             "os.execv(sys.executable, [sys.executable, '-m', 'retreino', *sys.argv[1:]])")
    worker = f"this worker: SIGINT handler {signal.getsignal(signal.SIGINT)}, blocked {signal.pthread_sigmask(signal.SIG_BLOCK, [])}"
    proc = subprocess.Popen([sys.executable, "-c", start, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = proc.stdout.readline()  # the model is loaded and predicting
        assert first.startswith(folder), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"{err}\n{worker}"
    last = err.strip().splitlines()[-1]
    assert last == f"retreino predict: interrupted; run it again with: retreino {' '.join(args)}"


def test_a_run_without_a_checkpoint_says_it_never_finished_an_epoch(tmp_path, capsys):
    from retreino.cli import main

    run = tmp_path / "runs" / "cats"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"data": str(tmp_path)}}))
    (run / "state.json").write_text(json.dumps({"epoch": 0, "finished": False}))
    assert main(["predict", str(run), str(real_images("test", "cats", 1)[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "never finished an epoch" in err and f"retreino train --resume {run}" in err
