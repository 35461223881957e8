"""A model trained by retreino, exported with --format tfjs, run by Teachable Machine's library in Chromium.

`retreino serve EXPORT --in-browser` serves the export folder on 127.0.0.1; headless Chromium
(Debian's, driven by Playwright) opens its page with every request to anywhere else aborted, so
the page must work offline. tmImage.load from @teachablemachine/image (npm) loads the files and
classifies 32 real photos, given as 224x224 canvases of the exact pixels Keras sees.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import chromium
from retreino import load_model
from retreino.cli import main
from test_serve import free_port
from tfjs_helpers import TFJS_EXPORTS, node_modules, parity_photos, tm_pixels

pytestmark = pytest.mark.slow


class StaticServer:
    def __init__(self, *args: str, timeout: float = 180):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.devnull, "wb")
        cmd = [sys.executable, "-m", "retreino", "serve", *args, "--in-browser", "--port", str(port), "--quiet"]
        env = {**os.environ, "RETREINO_NODE_MODULES": str(node_modules())}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve --in-browser exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.25)
        self.stop()
        raise AssertionError("serve --in-browser not ready")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def exported(retrained_run, tmp_path_factory):
    """retrained_run's model exported by the CLI: `retreino export RUN --format tfjs`."""
    out = tmp_path_factory.mktemp("tfjs") / "export"
    os.environ["RETREINO_NODE_MODULES"] = str(node_modules())
    assert main(["export", str(retrained_run), "--format", "tfjs", "--out", str(out), "--no-timing",
                 "--images", str(parity_photos(32)[0].parents[1]), "--parity-images", "32"]) == 0
    return out


@pytest.fixture(scope="module")
def server(exported):
    s = StaticServer(str(exported))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _browser_page(browser, url):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(120_000)
    page.requested, page.aborted = [], []

    def route(r):  # offline: only the server on 127.0.0.1 answers
        if r.request.url.startswith(url) or r.request.url.startswith(("blob:", "data:")):
            page.requested.append(r.request.url)
            r.continue_()
        else:
            page.aborted.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url + "/")
    page.wait_for_function("document.body.dataset.state === 'ready' || document.body.dataset.state === 'failed'")
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#status")
    return page


@pytest.fixture(scope="module")
def page(browser, server):
    pg = _browser_page(browser, server.url)
    yield pg
    pg.close()


def _canvases_js():
    return """async ([images, size]) => {
        const model = await tmImage.load('model.json', 'metadata.json');
        const out = [];
        for (const b64 of images) {
            const bytes = Uint8ClampedArray.from(atob(b64), (c) => c.charCodeAt(0));
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = size;
            canvas.getContext('2d').putImageData(new ImageData(bytes, size, size), 0, 0);
            const predictions = await model.predict(canvas);
            out.push(predictions.map((p) => p.probability));
        }
        return {probabilities: out, labels: model.getClassLabels(), backend: tf.getBackend(), tfjs: tf.version.tfjs};
    }"""


def _rgba_b64(pixels: np.ndarray) -> list[str]:
    alpha = np.full(pixels.shape[:-1] + (1,), 255, np.uint8)
    return [base64.b64encode(np.concatenate([p, a], -1).tobytes()).decode() for p, a in zip(pixels, alpha)]


def test_tmimage_classifies_32_photos_like_keras(page, retrained_run):
    pixels = tm_pixels(parity_photos(32))  # already center-cropped to 224x224: the browser resizes nothing
    got = page.evaluate(_canvases_js(), [_rgba_b64(pixels), 224])
    assert got["labels"] == ["cats", "dogs"]  # getClassLabels() gives the run's classes
    browser_probs = np.asarray(got["probabilities"], np.float32)
    loaded = load_model(retrained_run)
    # Teachable Machine's library scales pixels as x / 127 - 1 (tf.js capture()); Keras gets the same numbers.
    keras_probs = np.asarray(loaded.model.predict(pixels.astype(np.float32) / 127 - 1, verbose=0))
    diff = float(np.abs(browser_probs - keras_probs).max())
    print(f"tmImage.predict ({got['backend']} backend, tfjs {got['tfjs']}) vs Keras: max |diff| {diff:.2e}")
    assert browser_probs.shape == (32, 2) and diff <= 1e-4
    assert (browser_probs.argmax(1) == keras_probs.argmax(1)).all()


def test_the_page_classifies_a_chosen_and_a_dropped_photo(page, retrained_run, tmp_path):
    loaded = load_model(retrained_run)
    photos = parity_photos(32)
    probs = np.asarray(loaded.model.predict(tm_pixels(photos).astype(np.float32) / 127 - 1, verbose=0))
    confident = [(p, ["cats", "dogs"][int(q.argmax())]) for p, q in zip(photos, probs) if q.max() > 0.95]
    (cat_or_dog, label), (dropped, dropped_label) = confident[0], confident[-1]

    page.set_input_files("#file-input", str(cat_or_dog))
    card = page.locator(".card.done").first
    card.wait_for()
    assert card.locator(".file").inner_text() == cat_or_dog.name
    assert card.locator(".label").inner_text() == label
    assert page.locator(".card.done").first.locator(".bar").count() == 2

    data = base64.b64encode(dropped.read_bytes()).decode()
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", [dropped.name, data])
    page.wait_for_function("document.querySelectorAll('.card.done').length >= 2")
    newest = page.locator(".card.done").first
    assert newest.locator(".file").inner_text() == dropped.name
    assert newest.locator(".label").inner_text() == dropped_label
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_page_is_offline_and_strict(page, server):
    assert not page.aborted, page.aborted  # it never tried to reach anything but the server
    names = {u[len(server.url):] for u in page.requested}
    assert {"/tf.min.js", "/teachablemachine-image.min.js", "/model.json", "/weights.bin", "/metadata.json"} <= names
    csp = httpx.get(server.url + "/", timeout=10).headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp  # the browser itself refuses anything else
    assert not [u for u in page.requested if "/predict" in u]  # nothing is uploaded: the model ran in the page


def test_a_tm_download_is_served_as_it_is(browser):
    """The shared masks download (read-only) gets the page in a temporary copy; its Korean labels show."""
    s = StaticServer(str(TFJS_EXPORTS["masks"]))
    try:
        pg = _browser_page(browser, s.url)
        assert pg.locator("#classes li").all_inner_texts() == ["노마스크", "마스크"]
        assert not pg.aborted
        pg.close()
    finally:
        s.stop()


def test_a_stopped_server_removes_its_copy_and_a_killed_ones_goes_with_the_next():
    """SIGTERM (uvicorn re-raises it after shutting down) still runs the cleanup; a SIGKILLed server never does, and
    the next server deletes the copy its dead process left."""
    def copies(pid):
        return list(Path(tempfile.gettempdir()).glob(f"retreino-browser-{pid}-*"))

    first = StaticServer(str(TFJS_EXPORTS["masks"]))
    first.proc.kill()  # SIGKILL: no finally runs
    first.proc.wait(10)
    left = copies(first.proc.pid)
    assert len(left) == 1 and (left[0] / "model.json").is_file()
    second = StaticServer(str(TFJS_EXPORTS["masks"]))
    try:
        assert not left[0].exists()
        assert len(copies(second.proc.pid)) == 1
    finally:
        second.stop()
    assert copies(second.proc.pid) == []  # a server that stops cleans its own
