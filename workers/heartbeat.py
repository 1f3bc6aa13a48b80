"""The worker's heartbeat: its engine state in Redis, with a TTL that marks it dead when it stops."""

from __future__ import annotations

import logging
import threading

import redis

from broker import keys
from broker.redelivery import redeliver_from_dead_workers

log = logging.getLogger(__name__)


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
        while not self._stop.wait(self.interval_s):
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
