"""A Celery app on the Sluice transport with a task that records the order it runs in (no vLLM)."""

from __future__ import annotations

import os
import time

from celery import bootsteps, shared_task

from core.redis_clients import sync_client
from core.settings import Settings
from broker.celery_app import create_app
from broker.redelivery import RedeliverUnheld

settings = Settings(redis_url=os.environ["SLUICE_REDIS_URL"])
app = create_app(settings)
app.conf.imports = []
worker_id = os.environ.get("TEST_WORKER_ID")
if worker_id:
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "worker_id": worker_id}
    app.steps["consumer"].add(RedeliverUnheld)
if os.environ.get("TEST_HEADROOM"):
    # As a preempting mixed worker: one slot of headroom on the interactive lane beyond a prefetch of 1.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "headroom_lanes": ("interactive",), "headroom": 1}

    class PrefetchOne(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, consumer):
            consumer.qos.value = 1
            consumer.qos.update()

    app.steps["consumer"].add(PrefetchOne)


@shared_task(name="tests.record", acks_late=True)
def record(name: str, sleep_s: float = 0.0) -> None:
    client = sync_client(settings.redis_url)  # a Sentinel URL too (test_sentinel)
    client.rpush("test:order", name)
    time.sleep(sleep_s)
    with client.pipeline(transaction=False) as pipe:
        pipe.rpush("test:finished", name)
        if settings.enqueue_wait_replicas:  # the record survives a failover as the publish did
            pipe.execute_command("WAIT", settings.enqueue_wait_replicas, settings.enqueue_wait_timeout_ms)
        pipe.execute()
