"""`sluice worker`: a Celery worker process that owns one vLLM engine."""

from __future__ import annotations

import gc
import logging
import os
import socket

from core.settings import Settings
from core.redis_clients import sync_client

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"sluice-{os.getpid()}@{socket.gethostname()}"


def run_worker(settings: Settings) -> None:
    from celery.signals import worker_ready, worker_shutting_down

    import workers.tasks  # noqa: F401  (registers the task on every app this process creates)
    from broker.celery_app import create_app
    from broker.redelivery import RedeliverUnheld
    from workers.control import AttachConsumer  # also registers the control command
    from workers.heartbeat import Heartbeat
    from workers.runtime import WorkerRuntime

    settings.require_redis_url()
    worker_id = settings.worker_id or default_worker_id()
    app = create_app(settings)
    runtime = WorkerRuntime(settings, worker_id)
    transport_options = {
        # The unacked messages of this worker are tagged with its id, so its death frees them at once.
        "worker_id": worker_id,
        # A preempting worker receives an interactive request even when full (one slot of headroom
        # on the interactive lane); a batch request then yields its place (workers.preemption).
        # Continuous batching only: in the other modes a request joins no batch already running.
        **({"headroom_lanes": ("interactive",), "headroom": 1}
           if runtime.preempts and settings.batching_mode == "continuous" else {}),
    }
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **transport_options}
    app.steps["consumer"].add(AttachConsumer)
    app.steps["consumer"].add(RedeliverUnheld)  # after a lost connection (a Redis failover)

    heartbeat = Heartbeat(sync_client(settings.redis_url, ride_through_s=settings.redis_ride_through_s), runtime,
                          settings.heartbeat_interval_s, settings.heartbeat_ttl_s)
    # The worker registers as ``starting`` before its engine loads (/healthz counts it apart; readers of the
    # fleet skip it), and says ``ready`` only once Celery consumes and answers control messages: "ready"
    # is what the scaler, the tests and the API wait for, and a control message sent before would be lost.
    heartbeat.start()
    try:
        runtime.start()
    except BaseException:
        heartbeat.stop()
        raise
    # Everything loaded so far (torch, vLLM, the model config) lives as long as the process: out of
    # the garbage collector's full passes, which would otherwise walk it all, stalling the process.
    gc.freeze()
    # The task and the control command find the runtime on the app they run in (workers.control.runtime_of).
    app.sluice_runtime = runtime

    def on_ready(**_):
        runtime.mark_ready()
        heartbeat.beat_soon()

    worker_ready.connect(on_ready, weak=False)
    # A warm shutdown (SIGTERM, as every actuator drains a worker, or Ctrl-C) stops consuming at once and
    # waits for the requests in flight: the heartbeat says "draining" from this moment until the exit.
    worker_shutting_down.connect(lambda **_: heartbeat.drain(), weak=False)
    log.info("worker %s consuming %s (pool %s, batching %s, admission limit %d)", worker_id,
             settings.worker_lanes, settings.worker_pool, settings.batching_mode, runtime.admission.limit)
    try:
        app.worker_main([
            "worker", "--hostname", worker_id, "--pool", "threads",
            "--concurrency", str(settings.max_admission_limit),
            "--queues", ",".join(settings.worker_lanes),
            "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--task-events",
        ])
    finally:
        heartbeat.stop()  # safe even if it never started
        runtime.stop()
