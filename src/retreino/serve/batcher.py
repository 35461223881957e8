"""Micro-batching: many concurrent requests, one model call.

A forward pass on a batch of 16 images costs far less than 16 passes on one image, but HTTP
clients send one image at a time. The batcher queues decoded images from every in-flight
request, and a single worker takes whatever has arrived (waiting a few milliseconds for more
when the queue is short) and runs one call in a dedicated thread. While that call runs, new
arrivals pile up, so the batch size grows with the load on its own: one request alone waits
at most `max_wait_ms`, a busy server fills its batches.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class BatchStats:
    """Counters the /health endpoint reports, so batching can be seen working."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    failures: int = 0
    busy_s: float = 0.0  # seconds spent inside the model call
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches

    def record(self, n: int, seconds: float) -> None:
        self.batches += 1
        self.images += n
        self.largest = max(self.largest, n)
        self.busy_s += seconds
        self.sizes[n] = self.sizes.get(n, 0) + 1

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "images": self.images,
            "mean_batch_size": round(self.images / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest,
            "failed_batches": self.failures,
            "model_busy_s": round(self.busy_s, 3),
        }


class MicroBatcher:
    """Collect single items from concurrent coroutines into batched calls of `fn`.

    `fn` takes a stacked array (N, ...) and returns an array whose first axis is N; each
    `await batcher.submit(item)` gets its own row back. `max_batch=1` turns batching off
    (one call per item), which is what the benchmark compares against.

    >>> batcher = MicroBatcher(predictor.predict_pixels, max_batch=32, max_wait_ms=5)  # doctest: +SKIP
    >>> await batcher.start(); probs = await batcher.submit(pixels)                     # doctest: +SKIP
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        # One thread: the model is called by one batch at a time, never concurrently, which
        # keeps Keras/TensorFlow thread-safety out of the picture and lets batches grow.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retreino-model")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    @property
    def pending(self) -> int:
        """Items queued and not yet taken into a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="retreino-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        # Anything still queued will never run: tell its waiters instead of leaving them hanging.
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item: np.ndarray) -> np.ndarray:
        """Queue one item and wait for its row of the batched result."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                # Take what is already waiting at once; only wait (briefly) when the queue is dry.
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            # A client that went away cancelled its future: don't spend model time on it.
            batch = [(x, f) for x, f in batch if not f.done()]
            if batch:
                await self._call(loop, batch)

    async def _call(self, loop, batch) -> None:
        items = np.stack([x for x, _ in batch])
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self.fn, items)
            if len(out) != len(batch):
                raise RuntimeError(f"the model returned {len(out)} rows for a batch of {len(batch)}")
        except Exception as exc:  # every waiter gets the error; the worker keeps serving
            self.stats.failures += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.stats.record(len(batch), time.perf_counter() - start)
        for row, (_, fut) in zip(out, batch):
            if not fut.done():
                fut.set_result(row)
