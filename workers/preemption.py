"""Mixed-instance preemption: an interactive arrival takes a batch request's place on a full worker.

A worker's capacity is its admission limit (the consumer's prefetch): while it
is full, an interactive request queued behind a mixed worker's batch work would
wait until a batch request finishes — tens of seconds for a long one.  Instead:

* a preempting mixed worker in continuous batching keeps one *headroom* slot
  beyond its limit on the interactive lane (:class:`broker.transport.QoS`), so
  an interactive request is received and joins the running batch the moment it
  arrives; the worker then aborts one batch request on the engine to get back
  to its limit;
* interactive requests still queued in the lane (more than the headroom) are
  found by a periodic check, and each makes one batch request yield.

A yielding batch request's message goes back to the batch lane at its original
score (Celery ``Reject(requeue=True)`` →
:meth:`broker.transport.Channel._do_restore_message`), and runs again later as
a new attempt, from scratch.

:func:`batch_requests_to_preempt` is the pure decision; :class:`PreemptionWatch`
runs it on the engine loop when an interactive request arrives over the limit
and every ``preemption_check_interval_s``, with the bookkeeping of
:class:`workers.inflight.InflightRequests`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from core import keys

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised out of ``RequestExecutor.serve`` for a request that gave its place to interactive work."""

    def __init__(self, request_id: str, reason: str):
        super().__init__(f"request {request_id} preempted: {reason}")
        self.request_id = request_id
        self.reason = reason


def worker_preempts(enabled: bool, pool: str, lanes) -> bool:
    """Whether a worker watches for interactive arrivals: preemption on, a mixed pool, both lanes consumed."""
    return bool(enabled) and pool == "mixed" and {"interactive", "batch"} <= set(lanes)


@dataclass(frozen=True)
class RunningRequest:
    request_id: str
    slo: str
    started_at: float  # when this attempt started on the worker
    attempt: int = 1  # delivery attempts so far, this one included
    preemptible: bool = True  # False for a streamed request: tokens a client has seen cannot be taken back


def batch_requests_to_preempt(pool: str, admission_limit: int, inflight_by_lane: dict[str, int],
                              interactive_queued: int, running: list[RunningRequest], *,
                              interactive_over_limit: int = 0, max_attempts: int = 4) -> list[str]:
    """The batch requests to abort and requeue now, most recently started first.

    Only a ``mixed`` worker preempts: one batch request for each interactive
    request it took over its limit (``interactive_over_limit``, through the
    headroom slot), and, while it is full, one for each interactive request
    queued in the lane — at most every batch request running.  Newest first
    loses the least work.  A streamed request is never preempted (its client
    has tokens that a re-run cannot take back), and a request already on its
    ``max_attempts``-th attempt is not preempted again, so a steady interactive
    stream cannot starve one batch request forever.
    """
    if pool != "mixed":
        return []
    full = sum(inflight_by_lane.values()) >= admission_limit
    wanted = max(0, interactive_over_limit) + (max(0, interactive_queued) if full else 0)
    if wanted == 0:
        return []  # nothing waits, or a slot is free and the interactive request gets it
    candidates = [r for r in running if r.slo == "batch" and r.preemptible and r.attempt < max_attempts]
    candidates.sort(key=lambda r: (r.started_at, r.request_id), reverse=True)
    return [r.request_id for r in candidates[:wanted]]


class PreemptionWatch:
    """Runs the decision on the engine loop: at once when an interactive request was taken over the limit
    (:meth:`interactive_over_limit`), and every ``preemption_check_interval_s`` for interactive requests
    still queued in the lane."""

    def __init__(self, settings, inflight, admission):
        self.settings = settings
        self.inflight = inflight  # workers.inflight.InflightRequests
        self.admission = admission  # workers.admission.Admission
        self._over_limit_arrival = asyncio.Event()  # wakes the watch at once
        self._client = None

    def start(self, client) -> None:
        """On the engine loop: begin watching; ``client`` is the loop's asyncio Redis client."""
        self._client = client
        asyncio.get_running_loop().create_task(self._watch())

    def interactive_over_limit(self) -> None:
        """On the engine loop: a batch request gives its place back now, not at the next periodic check."""
        self._over_limit_arrival.set()

    async def _watch(self) -> None:
        interval = self.settings.preemption_check_interval_s
        log.info("preemption on: checking for interactive arrivals every %.2fs", interval)
        while True:
            try:
                # An interactive request taken over the limit wakes the check at once; it is the one
                # waiting, so the lane need not be read for that decision.
                await asyncio.wait_for(self._over_limit_arrival.wait(), interval)
                arrived = True
            except asyncio.TimeoutError:
                arrived = False
            self._over_limit_arrival.clear()
            try:
                await self.check(look_at_lane=not arrived)
            except Exception:  # a Redis hiccup must not end the watch
                log.exception("preemption check failed")

    async def check(self, look_at_lane: bool = True) -> list[str]:
        """Decide and tell the victims to yield; returns their request ids."""
        candidates, inflight, owed, stuck = self.inflight.preemption_view()
        for task in stuck:
            task.cancel()  # again: a cancellation can be swallowed (see workers.execution.PreemptibleEngine)
        if not candidates:
            return []
        limit = self.admission.limit
        if owed == 0 and sum(inflight.values()) < limit:
            return []  # not full: no Redis round trip
        queued = await self._client.zcard(keys.lane_key("interactive")) if look_at_lane else 0
        victims = batch_requests_to_preempt(self.settings.worker_pool, limit, inflight, queued, candidates,
                                            interactive_over_limit=owed,
                                            max_attempts=self.settings.preemption_max_attempts)
        reason = (f"{owed} interactive request(s) taken over the limit and {queued} queued, "
                  f"the worker is full ({sum(inflight.values())}/{limit} in flight)")
        preempted = []
        for request_id in victims:
            held = self.inflight.preempt(request_id, reason)
            if held is None:
                continue  # finished meanwhile
            held.task.cancel()  # vLLM aborts the engine request when its generator is cancelled
            preempted.append(request_id)
            log.info("preempting batch request %s (attempt %d, running %.1fs): %s", request_id,
                     held.attempt, time.time() - held.started_at, reason)
        return preempted
