"""Remote control of a worker's admission limit, which the local autoscaler moves at run time:

    app.control.broadcast("sluice_set_admission_limit", arguments={"limit": 8},
                          destination=[worker_id], reply=True)

replies ``{"ok": <the limit applied, clamped to [1, max_admission_limit]>}``.  Control commands run on
the Celery consumer's thread (the main thread); the runtime is the one ``run_worker`` put on the app.
"""

from __future__ import annotations

from celery import bootsteps
from celery.worker.control import control_command

from core.names import SET_ADMISSION_LIMIT


def runtime_of(app):
    """The worker runtime ``run_worker`` attached to this Celery app; None in a process without an engine."""
    return getattr(app, "sluice_runtime", None)


@control_command(name=SET_ADMISSION_LIMIT, args=[("limit", int)], signature="<limit>")
def set_admission_limit(state, limit):
    runtime = runtime_of(state.app)
    if runtime is None:
        return {"error": "no engine in this worker"}
    return {"ok": runtime.admission.set_limit(limit)}


class AttachConsumer(bootsteps.StartStopStep):
    """Applies the runtime's admission limit to the consumer's prefetch once the consumer exists."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer):
        runtime = runtime_of(consumer.app)
        if runtime is not None:
            runtime.admission.attach_consumer(consumer)
