"""A worker's runtime: its parts, built and started together (the threads they share: workers/__init__.py).

* :class:`workers.engine.EngineLoop` — the vLLM AsyncLLM on its own event-loop thread;
* :class:`workers.admission.Admission` — the admission limit (the consumer's prefetch) and the batching gate;
* :class:`workers.inflight.InflightRequests` — the requests held, for admission, preemption and the heartbeat;
* :class:`workers.execution.RequestExecutor` — serves one request, through the request ledger;
* :class:`workers.preemption.PreemptionWatch` — on a preempting mixed worker, makes batch work yield;
* :class:`workers.batch_watch.BatchWatch` — aborts the running requests of a cancelled or expired batch.
"""

from __future__ import annotations

import os
import time

import logging

import psutil

from broker.heartbeat import READY, STARTING, WorkerHeartbeat
from broker.ledger import Ledger
from core.redis_clients import async_client, sync_client
from core.settings import Settings
from workers.admission import Admission
from workers.batch_watch import BatchWatch
from workers.engine import EngineLoop
from workers.execution import RequestExecutor
from workers.inflight import InflightRequests
from workers.preemption import PreemptionWatch, worker_preempts

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        # Time to ready counts from the process's start (interpreter, imports), not from this object's.
        self.started_at = psutil.Process().create_time()
        self.state = STARTING
        self.ready_s: float | None = None
        self.preempts = worker_preempts(settings.preemption, settings.worker_pool, settings.worker_lanes)
        self.engine = EngineLoop(settings)
        self.admission = Admission(settings, self.engine.call_soon)
        self.inflight = InflightRequests()
        self.preemption_watch = PreemptionWatch(settings, self.inflight, self.admission) if self.preempts else None
        self.batch_watch = BatchWatch(settings, self.inflight)
        self.executor = RequestExecutor(settings, worker_id, self.engine, self.admission, self.inflight,
                                        Ledger(sync_client(settings.require_redis_url(),
                                                           ride_through_s=settings.redis_ride_through_s)), self.preempts,
                                        self.preemption_watch)

    def start(self) -> None:
        """Start the engine (blocks until it is warm) and, on its loop, what runs beside the requests."""
        async def on_loop():
            client = async_client(self.settings.require_redis_url(), ride_through_s=self.settings.redis_ride_through_s)
            self.executor.start(client)
            if self.preemption_watch is not None:
                self.preemption_watch.start(client)
            self.batch_watch.start(client)

        self.engine.start(then=on_loop)

    def mark_ready(self) -> None:
        """Celery consumes (the engine is warm): from now on the heartbeat says ``ready``."""
        if self.state == READY:
            return
        self.ready_s = round(time.time() - self.started_at, 2)
        self.state = READY
        timings = self.engine.timings
        log.info("worker %s ready in %.1f s after its process started (engine load %.1f s, warm-up %.1f s)",
                 self.worker_id, self.ready_s, timings.get("load_s", float("nan")), timings.get("warm_up_s", float("nan")))

    def stop(self) -> None:
        self.engine.stop()

    def serve(self, payload: dict, redelivered_at: float | None = None) -> dict | None:
        return self.executor.serve(payload, redelivered_at)

    def heartbeat(self, *, draining: bool = False) -> WorkerHeartbeat:
        by_lane, preempted = self.inflight.counts()
        engine = self.engine.state.snapshot()
        return WorkerHeartbeat(
            worker_id=self.worker_id,
            pool=self.settings.worker_pool,
            lanes=tuple(self.settings.worker_lanes),
            model=self.settings.model_name,
            batching_mode=self.settings.batching_mode,
            admission_limit=self.admission.limit,
            max_admission_limit=self.admission.max_limit,
            inflight=sum(by_lane.values()),
            inflight_interactive=by_lane["interactive"],
            inflight_batch=by_lane["batch"],
            draining=draining,
            preempted_batch_requests=preempted,
            running=engine["running"],
            waiting=engine["waiting"],
            kv_cache_usage=engine["kv_cache_usage"],
            preemptions=engine["preemptions"],
            generation_tokens=engine["generation_tokens"],
            itl_s=None if (itl := self.engine.state.mean_itl()) is None else round(itl, 5),
            tokens_per_s=round(self.engine.state.tokens_per_second(), 2),
            pid=os.getpid(),
            started_at=self.started_at,
            state=self.state,
            ready_s=self.ready_s,
            updated_at=time.time(),
        )
