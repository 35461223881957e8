"""What the command line says when work stops: the command that continues it, and why a run has no model."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import WATER_BOTTLES, real_images

# Ctrl+C one second into the command (parsing takes milliseconds; loading Keras takes longer).
INTERRUPT_LAUNCHER = (
    "import _thread, sys, threading\n"
    "from retreino.cli import main\n"
    "threading.Timer(1.0, _thread.interrupt_main).start()\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_interrupted_prints_the_exact_command_to_run_again():
    image = str(real_images("test", "cats", 1)[0])
    args = ["predict", str(WATER_BOTTLES), image, "--runtime", "keras", "--top-k", "2"]
    r = subprocess.run([sys.executable, "-c", INTERRUPT_LAUNCHER, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    last = r.stderr.strip().splitlines()[-1]
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
