"""`sluice worker`: a Celery worker process that owns one vLLM engine."""

from __future__ import annotations

import logging
import os
import socket

from sluice.config import Settings
from sluice.redis_clients import sync_client

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"sluice-{os.getpid()}@{socket.gethostname()}"


def run_worker(settings: Settings) -> None:
    from celery.signals import worker_ready

    from workers import tasks
    from workers.celery_app import create_app
    from workers.control import AdmissionLimit
    from workers.heartbeat import Heartbeat
    from workers.runtime import EngineRuntime

    settings.require_redis_url()
    worker_id = settings.worker_id or default_worker_id()
    app = create_app(settings)
    # The unacked messages of this worker are tagged with its id, so its death frees them at once.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "worker_id": worker_id}
    app.steps["consumer"].add(AdmissionLimit)

    runtime = EngineRuntime(settings, worker_id)
    runtime.start()
    tasks.bind_runtime(runtime)
    heartbeat = Heartbeat(sync_client(settings.redis_url), runtime,
                          settings.heartbeat_interval_s, settings.heartbeat_ttl_s)
    # Beat only once Celery consumes and answers control messages: a heartbeat means "ready" to the
    # scaler, the tests and the API, and a control message sent before that would be lost.
    worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    log.info("worker %s consuming %s (pool %s, batching %s, admission limit %d)", worker_id,
             settings.worker_lanes, settings.worker_pool, settings.batching_mode, runtime.admission_limit)
    try:
        app.worker_main([
            "worker", "--hostname", worker_id, "--pool", "threads",
            "--concurrency", str(settings.max_batch_size),
            "--queues", ",".join(settings.worker_lanes),
            "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--task-events",
        ])
    finally:
        heartbeat.stop()  # safe even if it never started
        runtime.stop()
