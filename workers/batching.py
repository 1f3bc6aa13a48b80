"""Batching modes for a worker: how admitted requests are let into the engine.

* ``continuous`` — every admitted request joins the running batch at once
  (vLLM's continuous batching; the admission limit bounds the batch).
* ``dynamic`` — collect up to N requests or until a timeout after the first
  arrives, run that batch to completion, and only then form the next one: no
  request joins a batch mid-flight.
* ``none`` — one request at a time.

SSJF's claims span all three, so the benchmark runs each.
"""

from __future__ import annotations

import asyncio
import contextlib


class ContinuousGate:
    @contextlib.asynccontextmanager
    async def admit(self):
        yield


class DynamicBatchGate:
    """Releases requests in closed batches of up to ``batch_size`` (``none`` is batch_size 1)."""

    def __init__(self, batch_size: int, collect_timeout_s: float):
        self.batch_size = batch_size
        self.collect_timeout_s = collect_timeout_s
        self._waiting: list[asyncio.Future] = []
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running or not self._waiting:
            return
        batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size:]
        self._running = len(batch)
        for waiter in batch:
            if not waiter.done():
                waiter.set_result(None)

    def _arm(self) -> None:
        if len(self._waiting) >= self.batch_size:
            self._release()
        elif self._timer is None and not self._running:
            self._timer = asyncio.get_running_loop().call_later(self.collect_timeout_s, self._release)

    @contextlib.asynccontextmanager
    async def admit(self):
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._arm()
        await waiter
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0 and self._waiting:
                # The batch finished: the next one forms from whoever waited meanwhile.
                self._arm()


def make_gate(mode: str, batch_size: int, collect_timeout_s: float):
    if mode == "continuous":
        return ContinuousGate()
    if mode == "dynamic":
        return DynamicBatchGate(batch_size, collect_timeout_s)
    if mode == "none":
        return DynamicBatchGate(1, 0.0)
    raise ValueError(f"unknown batching mode {mode!r}")
