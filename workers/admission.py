"""The admission limit: how many requests a worker runs at once.

It is the Celery consumer's prefetch (QoS) count, so the worker receives no more messages than that
(plus, on a preempting worker, one headroom slot on the interactive lane: :mod:`workers.preemption`);
in ``dynamic`` batching it is also the size of the closed batches the gate forms.  The local autoscaler
moves it at run time with the control command ``sluice_set_admission_limit`` (:mod:`workers.control`).
"""

from __future__ import annotations

import logging
from typing import Callable

from core.settings import Settings
from workers.batching import make_gate

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, settings: Settings, call_on_loop: Callable):
        """``call_on_loop(callback, *args)`` runs a callback on the engine loop, where the gate lives."""
        self.batching_mode = settings.batching_mode
        self.max_limit = settings.max_admission_limit
        self.limit = self._clamp(settings.admission_limit)
        self.gate = make_gate(settings.batching_mode, self.limit, settings.dynamic_batch_timeout_s)
        self._call_on_loop = call_on_loop
        self._consumer = None

    def _clamp(self, limit: int) -> int:
        if self.batching_mode == "none":
            return 1
        return max(1, min(int(limit), self.max_limit))

    def attach_consumer(self, consumer) -> None:
        """The Celery consumer exists: apply the limit to its prefetch (consumer thread)."""
        self._consumer = consumer
        self.set_limit(self.limit)

    def set_limit(self, limit: int) -> int:
        """Clamp and apply a new limit (consumer thread: the control command); returns the limit applied."""
        limit = self._clamp(limit)
        if limit != self.limit:
            log.info("admission limit %d -> %d", self.limit, limit)
        self.limit = limit
        if self.batching_mode == "dynamic":
            self._call_on_loop(self._resize_gate, limit)
        if self._consumer is not None and getattr(self._consumer, "qos", None) is not None:
            self._consumer.qos.value = limit
            self._consumer.qos.update()
        return limit

    def _resize_gate(self, limit: int) -> None:
        self.gate.batch_size = limit
