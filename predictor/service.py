"""PredictionService: an asyncio micro-batcher in front of LengthPredictor, with hot reload.

Concurrent ``predict`` calls are queued; a single batcher task takes the first waiting request,
gathers more for up to ``max_wait_ms`` or ``max_batch`` items, and runs one batched forward pass in a
worker thread so the event loop never blocks on torch. At low load a request waits at most
``max_wait_ms`` for company; at high load batches fill up and throughput rises instead.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from predictor.predictor import LengthPredictor
from predictor.registry import CURRENT_VERSION_REDIS_KEY, ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _PendingPrediction:
    prompt: str
    served_model: str | None
    future: asyncio.Future


class PredictionService:
    def __init__(self, predictor: LengthPredictor, *, max_batch: int = 32, max_wait_ms: float = 2.0,
                 registry: ModelRegistry | None = None, redis_client=None,
                 reload_interval_s: float | None = None):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.registry = registry
        self.redis_client = redis_client  # sync or asyncio redis client; only for version announcements
        self.reload_interval_s = reload_interval_s
        self.batches_run = 0
        self.batch_sizes: list[int] = []
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        # One worker thread: forwards run one at a time; torch's own pool (LengthPredictor.threads) works inside each.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-predictor")
        self._reload_lock: asyncio.Lock | None = None

    @property
    def version(self) -> str:
        return self.predictor.version

    def _ensure_started(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._reload_lock = asyncio.Lock()
            self._tasks.append(asyncio.create_task(self._batch_loop(), name="predictor-batcher"))
            if self.reload_interval_s:
                self._tasks.append(asyncio.create_task(self._reload_loop(), name="predictor-reload"))

    async def predict(self, prompt: str, served_model: str | None = None) -> float:
        """Predicted output tokens for one prompt; batched with whatever else is waiting."""
        self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingPrediction(prompt, served_model, future))
        return await future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            # Take everything already queued even past the deadline: it costs no extra waiting.
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_PendingPrediction]) -> None:
        predictor = self.predictor  # a reload mid-batch must not split a batch across versions
        by_model: dict[str | None, list[_PendingPrediction]] = defaultdict(list)
        for item in batch:
            by_model[item.served_model].append(item)
        loop = asyncio.get_running_loop()
        for served_model, items in by_model.items():
            try:
                values = await loop.run_in_executor(
                    self._executor, predictor.predict, [i.prompt for i in items], served_model)
            except Exception as exc:  # one bad batch must not kill the batcher
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, value in zip(items, values):
                if not item.future.done():
                    item.future.set_result(value)
        self.batches_run += 1
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) > 10_000:
            del self.batch_sizes[:5_000]

    async def _announced_version(self) -> str | None:
        if self.redis_client is None:
            return None
        value = self.redis_client.get(CURRENT_VERSION_REDIS_KEY)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, bytes):
            value = value.decode()
        return value or None

    async def maybe_reload(self) -> bool:
        """Swaps in the registry's current version if it differs from the one serving. True if swapped.

        A version announced in Redis wins over the CURRENT file (it is how other replicas learn of a
        retrain), provided that version directory exists in this replica's registry.
        """
        if self.registry is None:
            return False
        self._ensure_started()
        async with self._reload_lock:
            announced = await self._announced_version()
            if announced and (self.registry.version_dir(announced) / "meta.json").exists():
                artifact_dir = self.registry.version_dir(announced)
                wanted = announced
            else:
                wanted = self.registry.current_version()
                if wanted is None:
                    return False
                artifact_dir = self.registry.version_dir(wanted)
            if wanted == self.predictor.version:
                return False
            started = time.perf_counter()
            # Loading takes ~1 s of CPU; do it off the event loop, then swap with one assignment.
            new_predictor = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(LengthPredictor.load, artifact_dir, threads=self.predictor.threads))
            old = self.predictor.version
            self.predictor = new_predictor
            log.info("predictor hot-reloaded %s -> %s in %.2fs", old, wanted, time.perf_counter() - started)
            return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.maybe_reload()
            except Exception:
                log.exception("predictor reload check failed; keeping the current version")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        self._queue = None
        self._executor.shutdown(wait=False)
