"""Remote control: the admission limit (batch size) moves at run time by a Celery control message.

    app.control.broadcast("sluice_set_batch_size", arguments={"batch_size": 8},
                          destination=[worker_id], reply=True)
"""

from __future__ import annotations

from celery import bootsteps
from celery.worker.control import control_command

from workers import tasks

SET_BATCH_SIZE = "sluice_set_batch_size"


@control_command(args=[("batch_size", int)], signature="<batch_size>")
def sluice_set_batch_size(state, batch_size):
    if tasks._runtime is None:
        return {"error": "no engine in this worker"}
    return {"ok": tasks._runtime.set_admission_limit(batch_size)}


class AdmissionLimit(bootsteps.StartStopStep):
    """Applies the runtime's admission limit to the consumer's prefetch once it exists."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer):
        if tasks._runtime is not None:
            tasks._runtime.attach_consumer(consumer)
