"""The worker's heartbeat thread: its state in Redis every ``heartbeat_interval_s``, with a TTL that marks
it dead when it stops (the record: :class:`broker.heartbeat.WorkerHeartbeat`).

The same thread sweeps for dead workers and puts their requests back in their lanes.  From the moment the
worker stops consuming (Celery's warm shutdown, which is how every actuator drains a worker: SIGTERM) until
it exits, the heartbeat says ``draining``; the scaler then no longer counts the worker as serving.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from broker.heartbeat import retire_heartbeat, write_heartbeat
from broker.redelivery import redeliver_from_dead_workers

log = logging.getLogger(__name__)
LATE_WARNING_S = 1.0


class Heartbeat:
    def __init__(self, client: redis.Redis, runtime, interval_s: float, ttl_s: float):
        self.client = client
        self.runtime = runtime  # workers.runtime.WorkerRuntime
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        # Set once, by drain() (from a signal handler on the main thread); read by the heartbeat thread.
        self.draining = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-heartbeat", daemon=True)

    def beat(self) -> None:
        write_heartbeat(self.client, self.runtime.heartbeat(draining=self.draining), self.ttl_s)

    def drain(self) -> None:
        """The worker stopped consuming and exits once its requests finish: say so at the next beat, now.

        Called from Celery's ``worker_shutting_down`` signal, i.e. inside a signal handler on the main
        thread: no I/O here (the main thread may be in the middle of a Redis call), only a flag and a wake-up.
        Not once stopping: the main thread may then be inside ``self._wake.set()`` itself (its lock is not
        re-entrant).
        """
        self.draining = True
        if not self._stopped.is_set():
            self._wake.set()

    def beat_soon(self) -> None:
        """Beat now (off schedule) on the heartbeat thread: a change worth telling at once (ready)."""
        if not self._stopped.is_set():
            self._wake.set()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopped.is_set():
            woken = self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stopped.is_set():
                return
            now = time.monotonic()
            if not woken and now - last > self.interval_s + LATE_WARNING_S:
                # A late beat explains a later "declared dead while alive"; the usual cause is a
                # starved host (CPU) or a thread holding the GIL.
                log.warning("heartbeat %.1fs late (TTL %.1fs): this process was not scheduled",
                            now - last - self.interval_s, self.ttl_s)
            last = now
            try:
                self.beat()
                redeliver_from_dead_workers(self.client)
            except redis.RedisError as exc:
                # After the client's own retries (redis_ride_through_s): keep beating, Redis may come back.
                log.error("heartbeat failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        if self._thread.is_alive():
            return
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and retire the heartbeat: a clean exit leaves none behind, so nobody mistakes it
        for a live worker."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)  # a beat in progress must not write the key again after retiring it
        retire_heartbeat(self.client, self.runtime.worker_id)
