"""The worker's heartbeat: its engine state in Redis, with a TTL that marks it dead when it stops."""

from __future__ import annotations

import logging
import threading
import time

import redis

from broker import keys
from broker.redelivery import redeliver_from_dead_workers

log = logging.getLogger(__name__)
LATE_WARNING_S = 1.0


class Heartbeat:
    def __init__(self, client: redis.Redis, runtime, interval_s: float, ttl_s: float):
        self.client = client
        self.runtime = runtime
        self.interval_s = interval_s
        self.ttl_ms = int(ttl_s * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-heartbeat", daemon=True)

    def beat(self) -> None:
        fields = self.runtime.heartbeat_fields()
        key = keys.worker_key(self.runtime.worker_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping={name: str(value) for name, value in fields.items()})
            pipe.pexpire(key, self.ttl_ms)
            pipe.zadd(keys.WORKERS, {self.runtime.worker_id: fields["updated_at"]})
            pipe.execute()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            if now - last > self.interval_s + LATE_WARNING_S:
                # A late beat explains a later "declared dead while alive"; the usual cause is a
                # starved host (CPU) or a thread holding the GIL.
                log.warning("heartbeat %.1fs late (TTL %.1fs): this process was not scheduled",
                            now - last - self.interval_s, self.ttl_ms / 1000)
            last = now
            try:
                self.beat()
                redeliver_from_dead_workers(self.client)
            except redis.RedisError:
                log.exception("heartbeat failed")

    def start(self) -> None:
        if self._thread.is_alive():
            return
        self.beat()
        self._thread.start()

    def stop(self, *, retire: bool = True) -> None:
        self._stop.set()
        if retire:
            # A clean exit leaves no heartbeat behind, so nobody mistakes it for a live worker.
            self.client.delete(keys.worker_key(self.runtime.worker_id))
            self.client.zrem(keys.WORKERS, self.runtime.worker_id)
