"""Dynamic batching: requests that arrive together are scored in one session call.

Each request is encoded on its own first (so a bad value is reported to the request that sent it, naming its own
row). One session call runs at a time, in a worker thread; whatever arrived while it ran is the next batch (up to
`max_batch` rows), so a lone request never waits and a busy server batches by itself. `max_delay` (default 0)
additionally holds a batch open that long after its first request for others to join. Histories are padded to the
widest (padding is ID 0, which the model masks) and each request gets its slice of the probabilities. The queue
is bounded: a full queue is refused at once rather than left to grow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import ServerLimits


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later (HTTP 503)."""


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    rows: int
    done: asyncio.Future = field(repr=False)


def merge(feeds: Sequence[dict[str, np.ndarray]], sequences: Sequence[str]) -> dict[str, np.ndarray]:
    """One feed of all rows; histories right-padded with 0 to the widest among them."""
    merged = {}
    for name in feeds[0]:
        parts = [feed[name] for feed in feeds]
        if name in sequences:  # right-padded with 0 into one array (np.pad costs tens of microseconds a call)
            out = np.zeros((sum(len(part) for part in parts), max(part.shape[1] for part in parts)), dtype=parts[0].dtype)
            start = 0
            for part in parts:
                out[start:start + len(part), :part.shape[1]] = part
                start += len(part)
            merged[name] = out
        else:
            merged[name] = np.concatenate(parts)
    return merged


class DynamicBatcher:
    """Gathers encoded feeds into session calls of at most `max_batch` rows: whatever waits when the previous call
    ends, and what arrives within `max_delay` seconds of a batch's first request; `max_batch` 1 turns batching off.
    `run(feed)` returns probabilities."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], sequences: Sequence[str], max_batch: int = ServerLimits.max_batch,
                 max_delay: float = ServerLimits.max_delay_ms / 1000, max_queue: int = ServerLimits.max_queue,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_delay at least 0")
        self.run, self.sequences = run, list(sequences)
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, feed: dict[str, np.ndarray], rows: int) -> np.ndarray:
        if self.queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self.queue.qsize()} requests are already waiting (the limit is {self.max_queue}); retry later")
        pending = _Pending(feed, rows, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(pending)
        return await pending.done

    async def _serve(self) -> None:
        while True:
            batch = [await self.queue.get()]
            rows, deadline = batch[0].rows, time.monotonic() + self.max_delay
            while rows < self.max_batch:
                if self.queue.empty():
                    remaining = deadline - time.monotonic()  # with max_delay 0: what waited is the batch
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(self.queue.get_nowait())
                rows += batch[-1].rows
            await self._run(batch, rows)

    async def _run(self, batch: list[_Pending], rows: int) -> None:
        live = [pending for pending in batch if not pending.done.cancelled()]  # a client that went away
        if not live:
            return
        try:
            feed = merge([pending.feed for pending in live], self.sequences) if len(live) > 1 else live[0].feed
            probabilities = await asyncio.to_thread(self.run, feed)
        except Exception as error:  # noqa: BLE001 - every waiting request hears of it
            for pending in live:
                if not pending.done.done():
                    pending.done.set_exception(error)
            return
        if self.on_batch is not None:
            self.on_batch(rows)
        start = 0
        for pending in live:
            if not pending.done.done():
                pending.done.set_result(probabilities[start:start + pending.rows])
            start += pending.rows
