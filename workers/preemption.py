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

This module is the pure decision; :class:`workers.runtime.EngineRuntime` runs it
when an interactive request arrives over the limit and every
``preemption_check_interval_s`` on its engine loop.
"""

from __future__ import annotations

from dataclasses import dataclass


class Preempted(Exception):
    """Raised out of ``EngineRuntime.serve`` for a request that gave its place to interactive work."""

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
