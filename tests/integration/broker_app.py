"""A Celery app on the Sluice transport with a task that records the order it runs in (no vLLM)."""

from __future__ import annotations

import os
import time

import redis
from celery import bootsteps, shared_task

from core.settings import Settings
from broker.celery_app import create_app

settings = Settings(redis_url=os.environ["SLUICE_REDIS_URL"])
app = create_app(settings)
app.conf.imports = []
worker_id = os.environ.get("TEST_WORKER_ID")
if worker_id:
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "worker_id": worker_id}
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
    client = redis.Redis.from_url(settings.redis_url)
    client.rpush("test:order", name)
    time.sleep(sleep_s)
    client.rpush("test:finished", name)
