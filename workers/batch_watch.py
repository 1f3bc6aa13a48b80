"""Abort the running requests nobody waits for any more: a closed batch's, and those whose client left.

When a batch closes, the request ledger stops its queued requests at once (broker.ledger: the lane is
emptied of them, and a delivery of one is ended by ``start``), but requests already on an engine keep
generating until told.  This watch, on the engine loop, reads every ``batch_watch_interval_s`` the
``closed`` field of the batches of the requests this worker runs (one pipelined round trip, and none
while it runs no batch request) and cancels their attempts: vLLM aborts the engine requests, and the
executor ends each as cancelled or expired in the ledger.

It also reads, in one round trip, the status of the followed (non-batch) requests this worker runs: when a
client disconnects, the API ends its request as cancelled in the ledger (``abandon``), and the watch aborts
the attempt the same way, so the engine stops generating for nobody and the worker's slot (its in-flight
count) is free within ``batch_watch_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging

from broker.ledger import AsyncLedger, RequestStatus
from core import keys

log = logging.getLogger(__name__)


class BatchWatch:
    def __init__(self, settings, inflight):
        self.settings = settings
        self.inflight = inflight  # workers.inflight.InflightRequests
        self._client = None
        self._ledger: AsyncLedger | None = None

    def start(self, client) -> None:
        """On the engine loop: begin watching; ``client`` is the loop's asyncio Redis client."""
        self._client = client
        self._ledger = AsyncLedger(client)
        asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.batch_watch_interval_s)
            try:
                await self.check()
            except Exception:  # a Redis hiccup must not end the watch
                log.exception("batch watch failed")

    async def check(self) -> list[str]:
        """Abort the requests of closed batches and those their clients abandoned; returns their request ids."""
        batch_ids = sorted(self.inflight.batch_ids())
        followed = self.inflight.followed_ids()
        if not batch_ids and not followed:
            return []
        closed = []
        if batch_ids:
            async with self._client.pipeline(transaction=False) as pipe:
                for batch_id in batch_ids:
                    pipe.hget(keys.batch_counts_key(batch_id), "closed")
                closed = await pipe.execute()
        abandoned = []
        for request_id, status in zip(followed, await self._ledger.statuses(followed)):
            if status is RequestStatus.cancelled:
                held = self.inflight.abort_request(request_id, "cancelled")
                if held is not None:
                    held.task.cancel()
                abandoned.append(request_id)
        if abandoned:
            log.info("aborting %d running requests their clients abandoned: %s", len(abandoned), ", ".join(abandoned))
        aborted = []
        for batch_id, status in zip(batch_ids, closed):
            if status is None:
                continue
            status = status.decode() if isinstance(status, bytes) else status
            for held in self.inflight.abort_batch(batch_id, status):
                held.task.cancel()  # vLLM aborts the engine request when its generator is cancelled
                aborted.append(held.request_id)
        if aborted:
            log.info("aborting %d running requests of closed batches: %s", len(aborted), ", ".join(aborted))
        return abandoned + aborted
