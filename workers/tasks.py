"""The Celery task: one task per request, so Flower shows every request."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject

from workers.preemption import Preempted

TASK_NAME = "sluice.generate"

_runtime = None


def bind_runtime(runtime) -> None:
    global _runtime
    _runtime = runtime


@shared_task(name=TASK_NAME, acks_late=True, bind=True)
def generate(self, payload: dict) -> dict | None:
    if _runtime is None:
        raise RuntimeError("this process has no engine: run requests with `sluice worker`")
    try:
        # Set by broker.redelivery when a dead worker's message went back to its lane.
        return _runtime.serve(payload, redelivered_at=getattr(self.request, "sluice_redelivered_at", None))
    except Preempted as exc:
        # Back to its lane at its original score (broker.transport restores it there), to run again later.
        raise Reject(str(exc), requeue=True) from None
