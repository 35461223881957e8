"""Throughput and latency of `retreino serve`, with and without micro-batching, in one run.

Starts the real server twice on 127.0.0.1 (the same model, the same images), one with
`--no-batching`, and sends each the same number of requests from the same number of
concurrent clients, in alternating rounds. Prints requests/s, p50/p99 latency and the mean
batch size side by side, then the ratios.

    .venv/bin/python bench/serve.py                        # 400 requests per mode, 16 clients
    .venv/bin/python bench/serve.py --requests 1000 --concurrency 32 --model runs/cats

Clients and server share this machine's cores, so absolute figures are a floor; the ratio
between the two modes is the point.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "teachable_machine" / "water_bottles"
DEFAULT_IMAGES = SHARED / "datasets" / "cats_vs_dogs" / "test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "retreino", "serve", str(model), "--port", str(port), "--quiet", *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RETREINO_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become ready in 180 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, payloads: list[tuple[str, bytes]], n: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            nonlocal errors
            for i in counter:
                name, data = payloads[i % len(payloads)]
                t = time.perf_counter()
                try:
                    r = await client.post("/predict", files={"files": (name, data, "image/jpeg")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def measure(modes: list[tuple[str, list[str]]], args, payloads) -> list[dict]:
    """Both servers up at once, requests sent in alternating rounds (A B A B ...), so that a
    change in what else runs on the machine hits both modes alike."""
    servers = [start_server(args.model, extra) for _, extra in modes]
    try:
        urls = [url for _, url, _ in servers]
        for url in urls:  # warm-up outside the measurement: first calls build graphs, allocate buffers
            asyncio.run(load(url, payloads, args.concurrency * 2, args.concurrency))
        before = [httpx.get(f"{url}/health").json()["batching"] for url in urls]
        lat = [[] for _ in modes]
        wall = [0.0 for _ in modes]
        errors = [0 for _ in modes]
        per_round = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
        for n in per_round:
            for i, url in enumerate(urls):
                took, e, w = asyncio.run(load(url, payloads, n, args.concurrency))
                lat[i] += took
                errors[i] += e
                wall[i] += w
        after = [httpx.get(f"{url}/health").json()["batching"] for url in urls]
        rss = [rss_mb(proc.pid) for proc, _, _ in servers]
    finally:
        for proc, _, log in servers:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    rows = []
    for i, (label, _) in enumerate(modes):
        lat_ms = np.array(lat[i]) * 1000
        batches = after[i]["batches"] - before[i]["batches"]
        images = after[i]["images"] - before[i]["images"]
        rows.append({
            "mode": label,
            "rps": len(lat[i]) / wall[i],
            "p50": float(np.percentile(lat_ms, 50)),
            "p99": float(np.percentile(lat_ms, 99)),
            "mean_batch": images / batches if batches else 0.0,
            "model_ms": 1000 * (after[i]["model_busy_s"] - before[i]["model_busy_s"]) / images if images else 0.0,
            "errors": errors[i],
            "rss": rss[i],
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images to send (searched recursively)")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="alternate the modes this many times (default 5)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = ap.parse_args()

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:64]
    if not files:
        raise SystemExit(f"no images under {args.images}")
    payloads = [(p.name, p.read_bytes()) for p in files]
    print(
        f"retreino serve bench: {args.requests} requests per mode from {args.concurrency} concurrent clients in {args.rounds} alternating rounds, "
        f"{len(payloads)} distinct images (mean {np.mean([len(d) for _, d in payloads]) / 1e3:.0f} kB), "
        f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at start), model {args.model.name}",
        flush=True,
    )
    rows = measure(
        [
            ("no batching", ["--no-batching"]),
            (f"micro-batching (max {args.max_batch}, {args.batch_wait_ms:g} ms)", ["--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)]),
        ],
        args,
        payloads,
    )
    width = max(len(r["mode"]) for r in rows)
    print(f"\n{'mode'.ljust(width)}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  {'batch':>5}  {'model ms/img':>12}  {'errors':>6}  {'RSS MB':>6}")
    for r in rows:
        print(
            f"{r['mode'].ljust(width)}  {r['rps']:7.1f}  {r['p50']:7.0f}  {r['p99']:7.0f}  {r['mean_batch']:5.1f}  "
            f"{r['model_ms']:12.1f}  {r['errors']:6d}  {r['rss']:6.0f}"
        )
    print(f"(load average {os.getloadavg()[0]:.1f} at the end: other processes on these cores skew both rows)")
    base, batched = rows
    print(
        f"\nmicro-batching: {batched['rps'] / base['rps']:.2f}x requests/s, "
        f"p50 {batched['p50'] / base['p50']:.2f}x, p99 {batched['p99'] / base['p99']:.2f}x, "
        f"model time per image {batched['model_ms'] / base['model_ms']:.2f}x of no batching"
    )


if __name__ == "__main__":
    main()
