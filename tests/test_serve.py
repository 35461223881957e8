"""`retreino serve`: the real server in a subprocess on 127.0.0.1, called over HTTP.

One server (the real Teachable Machine model, renamed cats/dogs, small limits so that bad
inputs are cheap to make) serves the whole module; every kind of bad input must get a 4xx JSON
answer and leave it healthy, and a bounded load test checks errors, memory and batching.
"""
from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import WATER_BOTTLES, real_images, server_log

CLASSES = ["cats", "dogs"]
MAX_FILE_MB = 1
MAX_FILES = 4


# ---- a real server in a subprocess --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(*args: str, timeout: float = 180) -> Server:
    """`python -m retreino serve ...` on a free loopback port, ready to answer (or a failed test)."""
    port = free_port()
    log_path = server_log("retreino-serve-")
    cmd = [sys.executable, "-m", "retreino", "serve", *args, "--port", str(port)]
    # Output goes to a file, never a pipe: a pipe nobody reads would block the server once full.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RETREINO_OFFLINE": "1"})
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.25)
    server.stop()
    raise AssertionError(f"server not ready after {timeout} s:\n{server.log}")


# The server both serve test files share (conftest's `serve_server` starts it once a session).
SERVER_ARGS = (str(WATER_BOTTLES), "--names", ",".join(CLASSES), "--max-file-mb", str(MAX_FILE_MB), "--max-files", str(MAX_FILES), "--quiet")


@pytest.fixture(scope="module")
def server(serve_server):
    return serve_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def assert_healthy(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def error_of(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    return r.status_code, body["error"], body["detail"]


# ---- images made for the bad-input cases ---------------------------------------------------


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """10000x10000 pixels in a few kB: 100 M pixels, over the 89 M decoding limit."""
    from PIL import Image

    return png_bytes(Image.new("1", (10_000, 10_000)))


@pytest.fixture(scope="module")
def cat_bytes() -> bytes:
    return real_images("test", "cats", 1)[0].read_bytes()


# ---- the API ---------------------------------------------------------------------------------


def test_health_and_model_describe_the_server(server, client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["batching"]["failed_batches"] == 0
    model = client.get("/model").json()
    assert model["classes"] == CLASSES
    assert model["input_size"] == [224, 224]
    assert model["name"] == "water_bottles"
    assert Path(model["model_file"]) == WATER_BOTTLES
    assert model["runtime"] == "keras"
    assert model["limits"] == {"max_file_mb": MAX_FILE_MB, "max_files": MAX_FILES, "max_queue": 512}
    assert model["batching"]["max_batch"] == 32


def test_listens_on_loopback_only_by_default(server):
    import psutil

    listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert f"page    {server.url}/" in server.log


def test_predict_several_files_matches_the_predictor(client, water_bottles):
    from retreino.inference import Predictor

    paths = real_images("test", "cats", 2) + real_images("test", "dogs", 1)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "water_bottles"
    preds = body["predictions"]
    assert [p["filename"] for p in preds] == [p.name for p in paths]

    expected = Predictor(water_bottles).predict_images(paths)
    for pred, probs in zip(preds, expected):
        got = np.array([pred["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, probs, atol=1e-4)
        assert pred["class"] == CLASSES[int(np.argmax(probs))] == CLASSES[pred["index"]]
        assert pred["confidence"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_accepts_a_raw_image_body(client, cat_bytes):
    r = client.post("/predict", content=cat_bytes, headers={"Content-Type": "image/jpeg", "X-Filename": "tom.jpg"})
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert pred["filename"] == "tom.jpg" and pred["class"] in CLASSES


BAD_INPUTS = [
    # case, status, code, the file the message must name
    ("text file", 415, "not_an_image", "notes.txt"),
    ("empty file", 415, "not_an_image", "empty.jpg"),
    ("truncated jpeg", 422, "corrupt_image", "cut.jpg"),
    ("over the size limit", 413, "file_too_large", "huge.jpg"),
    ("raw body over the size limit", 413, "file_too_large", None),
    ("decompression bomb", 413, "too_many_pixels", "bomb.png"),
    ("too many files", 400, "too_many_files", None),
    ("no files", 400, "no_files", None),
    ("json body", 415, "unsupported_content_type", None),
    ("multipart without boundary", 400, "bad_multipart", None),
]


@pytest.mark.parametrize("case, status, code, filename", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client, case, status, code, filename, cat_bytes, bomb_png):
    big = os.urandom(MAX_FILE_MB * 1_000_000 + 50_000)
    request = {
        "text file": dict(files={"files": ("notes.txt", b"just some text, not pixels\n" * 20, "text/plain")}),
        "empty file": dict(files={"files": ("empty.jpg", b"", "image/jpeg")}),
        "truncated jpeg": dict(files={"files": ("cut.jpg", cat_bytes[: len(cat_bytes) // 3], "image/jpeg")}),
        "over the size limit": dict(files={"files": ("huge.jpg", big, "image/jpeg")}),
        "raw body over the size limit": dict(content=big, headers={"Content-Type": "image/jpeg"}),
        "decompression bomb": dict(files={"files": ("bomb.png", bomb_png, "image/png")}),
        "too many files": dict(files=[("files", (f"cat{i}.jpg", cat_bytes, "image/jpeg")) for i in range(MAX_FILES + 1)]),
        "no files": dict(files={"note": (None, "where are the images?")}),  # multipart, a text field only
        "json body": dict(json={"image": "cat.jpg"}),
        "multipart without boundary": dict(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
    }[case]
    got_status, got_code, detail = error_of(client.post("/predict", **request))
    assert (got_status, got_code) == (status, code), detail
    assert detail and "\n" not in detail and "Traceback" not in detail and "BytesIO" not in detail
    if filename:
        assert detail.startswith(f"{filename}: "), detail
    assert_healthy(client)


def test_one_bad_file_among_good_ones_names_it(client, cat_bytes):
    files = [("files", ("good.jpg", cat_bytes, "image/jpeg")), ("files", ("bad.jpg", cat_bytes[:500], "image/jpeg"))]
    status, code, detail = error_of(client.post("/predict", files=files))
    assert (status, code) == (422, "corrupt_image") and detail.startswith("bad.jpg: ")
    assert client.post("/predict", files=files[:1]).status_code == 200


def test_unknown_routes_and_methods_answer_json(client):
    assert error_of(client.get("/nope"))[:2] == (404, "not_found")
    assert error_of(client.get("/predict"))[:2] == (405, "method_not_allowed")


def test_page_docs_and_assets_are_all_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    for html in (page.text, docs.text):
        refs = re.findall(r'(?:src|href)="([^"#]+)', html) + re.findall(r"url: ?'([^']+)'", html)
        assert refs, html[:300]
        for ref in refs:
            assert ref.startswith("/") and not ref.startswith("//"), f"non-local asset {ref}"
            assert client.get(ref).status_code == 200, ref
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"
    assert {"/health", "/model", "/predict"} <= set(spec["paths"])


def test_load_500_requests_16_clients_no_errors_bounded_memory_and_batched(server, client):
    payloads = [(p.name, p.read_bytes()) for p in real_images("test", "cats", 8) + real_images("test", "dogs", 8)]

    async def hammer(n: int, concurrency: int) -> list[int]:
        statuses: list[int] = []
        jobs = iter(range(n))
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as ac:

            async def worker():
                for i in jobs:
                    name, data = payloads[i % len(payloads)]
                    try:
                        r = await ac.post("/predict", files={"files": (name, data, "image/jpeg")})
                        statuses.append(r.status_code)
                    except httpx.HTTPError as exc:
                        statuses.append(repr(exc))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses

    asyncio.run(hammer(32, 16))  # first batches of each size allocate their buffers: not a leak
    rss_before = server.rss_mb()
    before = client.get("/health").json()["batching"]
    statuses = asyncio.run(hammer(500, 16))
    after = client.get("/health").json()["batching"]
    rss_after = server.rss_mb()

    assert len(statuses) == 500 and all(s == 200 for s in statuses), {s for s in statuses if s != 200}
    assert after["images"] - before["images"] == 500
    calls = after["batches"] - before["batches"]
    assert calls < 500, "16 concurrent clients were never batched together"
    assert rss_after - rss_before < 200, f"RSS grew {rss_after - rss_before:.0f} MB ({rss_before:.0f} -> {rss_after:.0f})"
    assert after["failed_batches"] == 0
    print(f"500 requests: {calls} model calls (mean batch {500 / calls:.1f}), RSS {rss_before:.0f} -> {rss_after:.0f} MB")


# ---- the command line -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retreino", "serve", *args], capture_output=True, text=True, timeout=120)


def test_cli_busy_port_is_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli(str(WATER_BOTTLES), "--port", str(port))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"retreino serve: error: cannot listen on 127.0.0.1:{port} (Address already in use): pick another with --port (or --port 0 for any free one)"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([str(WATER_BOTTLES), "--max-file-mb", "0"], "--max-file-mb must be above 0"),
        ([str(WATER_BOTTLES), "--batch-wait-ms", "-1"], "--batch-wait-ms must be 0 or more"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(args, message):
    r = run_cli(*args, "--port", "0")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retreino serve: error: ") and message in lines[0], r.stderr


# ---- the micro-batcher on its own ------------------------------------------------------------


def test_micro_batcher_groups_concurrent_items_and_routes_rows_back():
    from retreino.serve.batcher import MicroBatcher

    calls: list[int] = []

    def double(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x * 2

    async def main():
        batcher = MicroBatcher(double, max_batch=8, max_wait_ms=20)
        await batcher.start()
        items = [np.full(3, i, np.float32) for i in range(20)]
        out = await asyncio.gather(*(batcher.submit(x) for x in items))
        await batcher.close()
        return items, out, batcher.stats

    items, out, stats = asyncio.run(main())
    for x, y in zip(items, out):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) == 3  # 8 + 8 + 4
    assert stats.images == 20 and stats.batches == 3


def test_micro_batcher_failure_reaches_every_waiter_and_it_keeps_serving():
    from retreino.serve.batcher import MicroBatcher

    def picky(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative input")
        return x + 1

    async def main():
        batcher = MicroBatcher(picky, max_batch=4, max_wait_ms=20)
        await batcher.start()
        bad = await asyncio.gather(batcher.submit(np.array([-1.0])), batcher.submit(np.array([1.0])), return_exceptions=True)
        good = await batcher.submit(np.array([5.0]))
        await batcher.close()
        return bad, good, batcher.stats

    bad, good, stats = asyncio.run(main())
    assert all(isinstance(e, ValueError) for e in bad)
    assert good.tolist() == [6.0] and stats.failures == 1


def test_micro_batcher_with_max_batch_1_calls_once_per_item():
    from retreino.serve.batcher import MicroBatcher

    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(lambda x: calls.append(len(x)) or x, max_batch=1)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(np.zeros(2)) for _ in range(5)))
        await batcher.close()

    asyncio.run(main())
    assert calls == [1] * 5


def test_micro_batcher_skips_items_whose_client_went_away():
    from retreino.serve.batcher import MicroBatcher

    seen: list[list[float]] = []

    def record(x: np.ndarray) -> np.ndarray:
        seen.append(x[:, 0].tolist())
        return x

    async def main():
        # A batch of 3 that would wait a minute for company: it runs when the third item comes.
        batcher = MicroBatcher(record, max_batch=3, max_wait_ms=60_000)
        await batcher.start()
        kept = asyncio.create_task(batcher.submit(np.array([1.0])))
        gone = asyncio.create_task(batcher.submit(np.array([2.0])))
        for _ in range(5):
            await asyncio.sleep(0)  # both are queued and taken into the forming batch
        gone.cancel()  # what a disconnected client's request does
        last = await batcher.submit(np.array([3.0]))
        first = await kept
        await batcher.close()
        return first, last, gone.cancelled()

    first, last, cancelled = asyncio.run(main())
    assert cancelled and first.tolist() == [1.0] and last.tolist() == [3.0]
    assert seen == [[1.0, 3.0]]
