"""Exports run on their own: `predict`, `evaluate` and `serve` on an ONNX or TFLite export never import
TensorFlow or Keras, and give the Keras model's probabilities within the export's parity tolerance.

Each command runs in a real subprocess through a small launcher that runs the CLI, then prints which
of `tensorflow` / `keras` ended up in the child's `sys.modules`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import link_or_copy, real_images, server_log

FLOAT_TOLERANCE = 1e-4  # retreino.export.FLOAT_TOLERANCE, the parity check an export passed
HEAVY = ("tensorflow", "keras", "tf_keras")
LAUNCHER = (
    "import json, sys\n"
    "from retreino.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
    "print('HEAVY-MODULES ' + json.dumps(heavy), flush=True)\n"
    "sys.exit(rc)\n"
)

pytestmark = pytest.mark.slow  # needs the session's exports of the retrained model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RETREINO_OFFLINE": "1"})


def heavy_modules(stdout: str) -> list[str]:
    line = [ln for ln in stdout.splitlines() if ln.startswith("HEAVY-MODULES ")]
    assert line, f"the launcher did not report its modules:\n{stdout}"
    return json.loads(line[-1].split(" ", 1)[1])


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return real_images("test", "cats", 3) + real_images("test", "dogs", 3)


@pytest.fixture(scope="module")
def keras_probs(retrained_run, images) -> np.ndarray:
    from retreino import load_model
    from retreino.inference import Predictor

    return Predictor(load_model(retrained_run), runtime="keras").predict_images(images)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, images) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for p in images:
        (root / p.parent.name).mkdir(exist_ok=True)
        link_or_copy(p, root / p.parent.name / p.name)
    return root


def check_close(fmt: str, got: np.ndarray, want: np.ndarray) -> None:
    if fmt == "tflite-int8":  # its check is top-1 agreement; an int8 softmax moves in steps of 1/256
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99 and np.abs(got - want).max() < 0.05
    else:
        np.testing.assert_allclose(got, want, atol=FLOAT_TOLERANCE)


@pytest.mark.parametrize("fmt, target", [("onnx", "file"), ("tflite", "folder"), ("tflite-int8", "folder")])
def test_predict_on_an_export_imports_no_tensorflow(fmt, target, retrained_exports, keras_probs, images, tmp_path):
    export = retrained_exports[fmt]
    model = export.file if target == "file" else export.folder
    out = tmp_path / "p.jsonl"
    r = run_cli("predict", str(model), *map(str, images), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert heavy_modules(r.stdout) == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(row["path"]).name for row in rows] == [p.name for p in images]
    got = np.array([[row["probabilities"]["cats"], row["probabilities"]["dogs"]] for row in rows])
    check_close(fmt, got, keras_probs)

    # One image, as a user first tries it: the same numbers, still no TensorFlow.
    r = run_cli("predict", str(model), str(images[0]), "--json", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    assert heavy_modules(r.stdout) == []
    answer = json.loads(r.stdout[: r.stdout.index("HEAVY-MODULES")])
    check_close(fmt, np.array([[answer["probabilities"]["cats"], answer["probabilities"]["dogs"]]]), keras_probs[:1])


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "tflite-int8"])
def test_evaluate_on_an_export_imports_no_tensorflow(fmt, retrained_exports, keras_probs, images, labelled, tmp_path):
    out = tmp_path / "eval"
    r = run_cli("evaluate", str(retrained_exports[fmt].folder), "--data", str(labelled), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert heavy_modules(r.stdout) == []
    metrics = json.loads(r.stdout[: r.stdout.index("HEAVY-MODULES")])
    assert metrics["n"] == len(images) and metrics["runtime"] == fmt
    with open(out / "predictions.csv", newline="") as fh:
        by_name = {Path(row["path"]).name: row for row in csv.DictReader(fh)}
    got = np.array([[float(by_name[p.name]["prob_cats"]), float(by_name[p.name]["prob_dogs"])] for p in images])
    check_close(fmt, got, keras_probs)
    y = np.array([0 if p.parent.name == "cats" else 1 for p in images])
    assert metrics["accuracy"] == pytest.approx(float((keras_probs.argmax(1) == y).mean()))
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_serve_on_an_export_imports_no_tensorflow(fmt, retrained_exports, keras_probs, images):
    from test_serve import free_port

    port = free_port()
    log_path = server_log("retreino-serve-direct-")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "serve", str(retrained_exports[fmt].folder),
                                 "--port", str(port), "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "RETREINO_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"not ready:\n{log_path.read_text()}")
        assert httpx.get(f"{url}/model").json()["runtime"] == fmt
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images[:4]]
        answer = httpx.post(f"{url}/predict", files=files, timeout=60).json()
        got = np.array([[p["probabilities"]["cats"], p["probabilities"]["dogs"]] for p in answer["predictions"]])
        # The API rounds probabilities to 6 decimals.
        np.testing.assert_allclose(got, keras_probs[:4], atol=FLOAT_TOLERANCE + 1e-6)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: uvicorn shuts down, the launcher reports its modules
        proc.wait(30)
    assert heavy_modules(log_path.read_text()) == [], log_path.read_text()


def test_serve_page_shows_full_class_names_that_share_a_prefix(retrained_exports, tmp_path):
    """Cat breeds sharing "American " must read in full on the page, never cut to `American Wir…`."""
    import shutil

    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM, CHROMIUM_ARGS
    from test_serve import start_server

    names = ["American Wirehair (long-haired variety)", "American Shorthair (short-haired variety)"]
    export = tmp_path / "breeds-onnx"
    shutil.copytree(retrained_exports["onnx"].folder, export)
    meta = json.loads((export / "retreino.json").read_text())
    meta["class_names"] = names
    (export / "retreino.json").write_text(json.dumps(meta))
    (export / "labels.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    server = start_server(str(export), "--quiet")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(server.url + "/")
                page.set_input_files("#file-input", str(real_images("test", "cats", 1)[0]))
                card = page.locator(".card.done").first
                card.wait_for(timeout=60_000)
                bars = card.locator(".bar .name")
                assert sorted(bars.all_inner_texts()) == sorted(names)
                # Nothing clipped: each name's box holds all of its text.
                clipped = bars.evaluate_all("els => els.filter(e => e.scrollWidth > e.clientWidth + 1).length")
                assert clipped == 0
            finally:
                browser.close()
    finally:
        server.stop()
