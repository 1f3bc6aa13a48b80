"""Local actuator: one ``sluice worker`` subprocess per instance on this machine (the embedded default).

* scale-out spawns ``sys.executable -m sluice.cli worker --pool P --lanes L --worker-id
  sluice-<pool>-<n>@<host>`` (its own session, the actuator's environment, output in
  ``<log_dir>/<worker-id>.log``); ``starting`` until its heartbeat hash appears in Redis, then ``ready``;
* scale-in sends SIGTERM to the main process of the chosen workers (least loaded first): Celery's warm
  shutdown stops consuming, finishes the in-flight tasks and exits; unacked messages go back to their lane.
  The process stays ``draining`` until it exits, then it is reaped. Only the main process is signalled:
  the engine's own child processes must keep serving until the worker has finished its requests;
* ``close()`` drains every worker it started and waits for them (``drain_timeout_s``; only after that
  timeout is a worker's process group killed).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from broker.heartbeat import read_heartbeats
from core import keys
from core.processes import Child, sluice_argv
from scaler.state import PoolObservation

from .base import (
    ActuationResult, InstanceInfo, check_pool, clamp_target, count_instances, plan_scale, pool_lanes,
)

log = logging.getLogger(__name__)

CommandFactory = Callable[[str, str], Sequence[str]]


def worker_command(pool: str, worker_id: str, extra_args: Sequence[str] = (),
                   python: str | None = None) -> list[str]:
    """The default command: the real Sluice worker for ``pool``."""
    return sluice_argv("worker", "--pool", pool, "--lanes", ",".join(pool_lanes(pool)), "--worker-id", worker_id,
                       *extra_args, python=python)


def default_cpu_slots(env: dict[str, str]) -> tuple[str, ...]:
    """One CPU set per worker engine: this process's CPUs in groups of ``OMP_NUM_THREADS`` (the engine's threads).

    The CPU analogue of one GPU per worker. Without it every vLLM CPU engine binds its threads to the same
    core (``VLLM_CPU_OMP_THREADS_BIND=auto`` picks core 0 for rank 0 in every engine), so a second worker on a
    2-core host added no capacity and its start was starved for minutes. Empty when the environment already
    sets the binding (the operator's choice) or when there are not two sets to hand out.
    """
    if env.get("VLLM_CPU_OMP_THREADS_BIND"):
        return ()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per_engine = max(1, int(env.get("OMP_NUM_THREADS") or 1))
    slots = tuple(",".join(str(c) for c in cpus[i:i + per_engine]) for i in range(0, len(cpus) - per_engine + 1, per_engine))
    return slots if len(slots) > 1 else ()


def least_used_slot(slots: Sequence[str], in_use: Sequence[str]) -> str:
    """The slot the fewest live workers hold (the earliest on ties): workers come and go in any order."""
    return min(slots, key=lambda slot: (sum(1 for used in in_use if used == slot), slots.index(slot)))


@dataclass
class _Worker:
    worker_id: str
    pool: str
    index: int
    process: Child
    started_at: float
    draining_since: float | None = None
    killed: bool = False
    cpu_slot: str | None = None  # VLLM_CPU_OMP_THREADS_BIND of its engine


@dataclass(frozen=True)
class ExitRecord:
    worker_id: str
    pool: str
    returncode: int
    drained: bool  # True: it exited after we asked it to drain; False: it died on its own
    log_path: Path


class LocalActuator:
    def __init__(self, redis=None, redis_url: str | None = None, *, extra_args: Sequence[str] = (),
                 command_factory: CommandFactory | None = None, max_starting: int | None = 4,
                 log_dir: str | Path | None = None, env: dict[str, str] | None = None,
                 drain_timeout_s: float = 300.0, max_instances: int | None = 64, host: str | None = None,
                 cwd: str | Path | None = None, cpu_slots: Sequence[str] | None = None):
        """``redis_url``: the Redis the workers it starts use (SLUICE_REDIS_URL in their environment);
        ``redis``: a client for reading heartbeats (default: one for ``redis_url``). ``env``: the workers'
        environment (default: this process's).
        ``command_factory(pool, worker_id) -> argv`` replaces the real worker command (tests).
        ``max_starting``: at most this many instances starting at once (None: no cap); a larger
        scale-out reports the rest as ``pending`` and the next ``scale`` call continues it.
        ``cpu_slots``: the CPU sets handed to the workers' engines, least used first (default:
        :func:`default_cpu_slots`; empty: no binding)."""
        if redis_url is None:
            raise ValueError("the local actuator needs redis_url: the Redis its workers use and it watches")
        if redis is None:
            from core.redis_clients import sync_client

            redis = sync_client(redis_url)
        self.redis = redis
        self.env = dict(os.environ if env is None else env)
        self.env["SLUICE_REDIS_URL"] = redis_url  # the workers use the Redis the actuator watches
        self.cpu_slots = tuple(default_cpu_slots(self.env) if cpu_slots is None else cpu_slots)
        self.extra_args = tuple(extra_args)
        self.command_factory = command_factory or (lambda pool, wid: worker_command(pool, wid, self.extra_args))
        self.max_starting = max_starting
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="sluice-workers-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.drain_timeout_s = drain_timeout_s
        self.max_instances = max_instances
        self.host = host or socket.gethostname()
        self.cwd = str(cwd) if cwd is not None else None
        self._workers: dict[str, _Worker] = {}
        self._next_index: dict[str, int] = {}
        self.exits: list[ExitRecord] = []
        self._lock = threading.RLock()
        self._closed = False

    # --- observation ------------------------------------------------------------------------
    def reap(self) -> list[ExitRecord]:
        """Forget workers whose process has exited; returns the new exit records."""
        records = []
        with self._lock:
            for worker_id, worker in list(self._workers.items()):
                code = worker.process.returncode
                if code is None:
                    continue
                del self._workers[worker_id]
                worker.process.signal_group(signal.SIGTERM)  # engine children orphaned by a crash
                worker.process.reap()
                record = ExitRecord(worker_id, worker.pool, code, worker.draining_since is not None,
                                    worker.process.log_path)
                records.append(record)
                if record.drained:
                    log.info("worker %s drained and exited (code %s)", worker_id, code)
                else:
                    log.warning("worker %s exited unexpectedly (code %s); log: %s", worker_id, code, record.log_path)
            self.exits.extend(records)
        return records

    def instances(self, pool: str) -> list[InstanceInfo]:
        check_pool(pool)
        self.reap()
        with self._lock:
            workers = [w for w in self._workers.values() if w.pool == pool]
        beats = read_heartbeats(self.redis, [w.worker_id for w in workers])
        result = []
        for worker in workers:
            beat = beats.get(worker.worker_id)
            state = "draining" if worker.draining_since is not None else ("ready" if beat else "starting")
            result.append(InstanceInfo.of(worker.worker_id, pool, state, beat, worker_id=worker.worker_id,
                                          started_at=worker.started_at))
        return result

    def current(self, pool: str) -> PoolObservation:
        return count_instances(pool, self.instances(pool))

    def pid(self, worker_id: str) -> int | None:
        with self._lock:
            worker = self._workers.get(worker_id)
            return worker.process.pid if worker else None

    # --- actions ------------------------------------------------------------------------------
    def scale(self, pool: str, target: int) -> ActuationResult:
        check_pool(pool)
        if self._closed:
            raise RuntimeError("actuator is closed")
        requested = target
        target = clamp_target(target, self.max_instances)
        with self._lock:
            instances = self.instances(pool)
            before = count_instances(pool, instances)
            plan = plan_scale(instances, target, self.max_starting)
            started, drained, errors = [], [], []
            for _ in range(plan.start):
                try:
                    started.append(self._spawn(pool))
                except OSError as exc:
                    errors.append(f"spawn failed: {exc}")
                    break
            for info in plan.drain:
                self._drain(self._workers[info.instance_id])
                drained.append(info.instance_id)
        result = ActuationResult(pool=pool, requested=requested, target=target, before=before,
                                 started=tuple(started), drained=tuple(drained),
                                 pending=plan.pending + (plan.start - len(started)), errors=tuple(errors))
        if result.changed or result.errors:
            log.info("local actuator %s", result.describe())
        return result

    def _new_worker_id(self, pool: str) -> tuple[int, str]:
        index = self._next_index.get(pool, 0)
        while True:
            worker_id = f"sluice-{pool}-{index}@{self.host}"
            # Skip ids still tracked or with a live heartbeat (e.g. from a previous actuator).
            if worker_id not in self._workers and not self.redis.exists(keys.worker_key(worker_id)):
                break
            index += 1
        self._next_index[pool] = index + 1
        return index, worker_id

    def _spawn(self, pool: str) -> str:
        index, worker_id = self._new_worker_id(pool)
        argv = list(self.command_factory(pool, worker_id))
        log_path = self.log_dir / f"{worker_id.replace('@', '_at_').replace('/', '_')}.log"
        env, slot = self.env, None
        if self.cpu_slots:
            slot = least_used_slot(self.cpu_slots, [w.cpu_slot for w in self._workers.values() if w.cpu_slot])
            env = {**self.env, "VLLM_CPU_OMP_THREADS_BIND": slot}
        process = Child(worker_id, argv, env=env, log_path=log_path, append_log=True, cwd=self.cwd)
        self._workers[worker_id] = _Worker(worker_id, pool, index, process, time.time(), cpu_slot=slot)
        log.info("started worker %s (pid %d, pool %s%s); log: %s", worker_id, process.pid, pool,
                 f", engine on CPUs {slot}" if slot else "", log_path)
        return worker_id

    def _drain(self, worker: _Worker) -> None:
        if worker.draining_since is not None:
            return
        worker.draining_since = time.time()
        # The main process only: Celery warm shutdown; the engine's children keep serving until it exits.
        worker.process.send_signal(signal.SIGTERM)
        log.info("draining worker %s (pid %d)", worker.worker_id, worker.process.pid)

    def close(self, timeout_s: float | None = None) -> None:
        """Drain every worker this actuator started and wait for them to exit (idempotent)."""
        timeout_s = self.drain_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            for worker in workers:
                self._drain(worker)
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            if worker.process.wait(max(0.0, deadline - time.monotonic())) is None:
                log.error("worker %s did not drain within %.0f s; killing it", worker.worker_id, timeout_s)
                worker.killed = True
                worker.process.kill()
        self.reap()

    def __enter__(self) -> "LocalActuator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
