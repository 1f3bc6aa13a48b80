"""The Celery task: one task per request, so Flower shows every request."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject

from core.names import TASK_NAME
from workers.control import runtime_of
from workers.preemption import Preempted


@shared_task(name=TASK_NAME, acks_late=True, bind=True)
def generate(self, payload: dict) -> dict | None:
    runtime = runtime_of(self.app)
    if runtime is None:
        raise RuntimeError("this process has no engine: run requests with `sluice worker`")
    try:
        # Set by broker.redelivery when a dead worker's message went back to its lane.
        return runtime.serve(payload, redelivered_at=getattr(self.request, "sluice_redelivered_at", None))
    except Preempted as exc:
        # Back to its lane at its original score (broker.transport restores it there), to run again later.
        raise Reject(str(exc), requeue=True) from None
