"""The one interface every actuator implements, and the pure helpers they share.

An actuator turns a :class:`~scaler.decision.ScaleDecision` into instances: it starts workers to
scale out and *drains* workers to scale in (stop consuming, finish in-flight requests, exit). It never
kills a worker mid-request; the only forced stop is a timeout the operator configures (local
``drain_timeout_s`` on ``close``, Docker's stop timeout, Kubernetes' terminationGracePeriodSeconds).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Protocol, runtime_checkable

from broker import keys
from scaler.state import PoolCount

# Pool -> lanes its workers consume, in priority order.
POOL_LANES: dict[str, tuple[str, ...]] = {
    "interactive": ("interactive",),
    "batch": ("batch",),
    "mixed": ("interactive", "batch"),
}

InstanceState = Literal["starting", "ready", "draining"]


@dataclass(frozen=True)
class InstanceInfo:
    """One worker instance as the actuator sees it (process, container or pod + its heartbeat)."""

    instance_id: str  # worker id (local), container name (docker), pod name (kubernetes)
    pool: str
    state: InstanceState
    worker_id: str | None = None
    inflight: int | None = None  # from the heartbeat; None while there is none
    admission_limit: int | None = None
    started_at: float | None = None  # when the actuator launched it (or the runtime reports it)


@dataclass(frozen=True)
class ActuationResult:
    """What one ``scale`` call did. ``pending`` > 0: more starts were needed than allowed at once."""

    pool: str
    requested: int  # target as asked
    target: int  # target after clamping
    before: PoolCount
    started: tuple[str, ...] = ()
    drained: tuple[str, ...] = ()  # instances signalled to drain by this call
    pending: int = 0
    errors: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.started or self.drained)

    @property
    def ok(self) -> bool:
        return not self.errors

    def describe(self) -> str:
        text = (f"{self.pool}: {self.before.provisioned} -> {self.target}"
                f" (+{len(self.started)} started, -{len(self.drained)} draining")
        if self.pending:
            text += f", {self.pending} pending"
        if self.errors:
            text += f", errors: {'; '.join(self.errors)}"
        return text + ")"


@runtime_checkable
class Actuator(Protocol):
    """Sets pool sizes. ``scale`` is idempotent: calling it again with the same target does nothing
    once the pool has that many ready + starting instances."""

    def current(self, pool: str) -> PoolCount: ...

    def instances(self, pool: str) -> list[InstanceInfo]: ...

    def scale(self, pool: str, target: int) -> ActuationResult: ...

    def close(self) -> None: ...


def apply_decision(actuator: Actuator, decision) -> ActuationResult:
    """Carry out a :class:`~scaler.decision.ScaleDecision` (holds included: scale is idempotent)."""
    return actuator.scale(decision.pool, decision.target)


# --- pure helpers --------------------------------------------------------------------------------
def check_pool(pool: str) -> str:
    if pool not in POOL_LANES:
        raise ValueError(f"unknown pool {pool!r}; expected one of {sorted(POOL_LANES)}")
    return pool


def pool_lanes(pool: str) -> tuple[str, ...]:
    return POOL_LANES[check_pool(pool)]


def clamp_target(target: int, maximum: int | None = None, minimum: int = 0) -> int:
    """A safe instance count: an integer in [minimum, maximum] (policies clamp to pool limits first;
    this is the actuator's own guard against a bad decision, e.g. a negative or NaN target)."""
    if isinstance(target, float):
        if math.isnan(target):
            raise ValueError("target is NaN")
        target = math.ceil(target) if math.isfinite(target) else (maximum if maximum is not None else minimum)
    value = max(int(target), minimum)
    if maximum is not None:
        value = min(value, maximum)
    return value


def worker_id_for(pool: str, index: int, host: str | None = None) -> str:
    return f"sluice-{pool}-{index}@{host or socket.gethostname()}"


def _to_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_heartbeat(raw: Mapping) -> dict[str, Any]:
    """A heartbeat hash (bytes or str keys/values) as a dict with ``inflight``/``admission_limit`` ints."""
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in raw.items()}
    for name in ("inflight", "admission_limit", "running", "waiting"):
        if name in fields:
            fields[name] = _to_int(fields[name])
    return fields


def read_heartbeats(client, worker_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Heartbeats of the given workers that exist now (missing/expired ones are left out)."""
    worker_ids = list(worker_ids)
    if client is None or not worker_ids:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.hgetall(keys.worker_key(worker_id))
        replies = pipe.execute()
    return {worker_id: parse_heartbeat(raw) for worker_id, raw in zip(worker_ids, replies) if raw}


def drain_order(instances: Iterable[InstanceInfo]) -> list[InstanceInfo]:
    """Candidates for scale-in, best first: instances still starting (they serve nothing; the newest
    first), then ready ones with the fewest in-flight requests (ties: the youngest first, so the
    long-running, warmed-up workers stay). Draining instances are never candidates."""

    def key(info: InstanceInfo):
        started = info.started_at if info.started_at is not None else 0.0
        if info.state == "starting":
            return (0, 0, -started, info.instance_id)
        inflight = info.inflight if info.inflight is not None else math.inf
        return (1, inflight, -started, info.instance_id)

    return sorted((i for i in instances if i.state != "draining"), key=key)


def choose_to_drain(instances: Iterable[InstanceInfo], count: int) -> list[InstanceInfo]:
    """The ``count`` instances to remove (see :func:`drain_order`)."""
    if count <= 0:
        return []
    return drain_order(instances)[:count]


def count_instances(instances: Iterable[InstanceInfo]) -> PoolCount:
    states = [i.state for i in instances]
    return PoolCount(ready=states.count("ready"), starting=states.count("starting"),
                     draining=states.count("draining"))


@dataclass
class ScalePlan:
    """What ``scale`` must do: how many to start (after the start-concurrency cap) and which to drain."""

    target: int
    start: int = 0
    pending: int = 0
    drain: list[InstanceInfo] = field(default_factory=list)


def plan_scale(instances: list[InstanceInfo], target: int, max_starting: int | None = None) -> ScalePlan:
    """Pure: the actions that bring ``instances`` to ``target`` provisioned (ready + starting)."""
    count = count_instances(instances)
    plan = ScalePlan(target=target)
    if target > count.provisioned:
        need = target - count.provisioned
        allowed = need if max_starting is None else max(0, min(need, max_starting - count.starting))
        plan.start, plan.pending = allowed, need - allowed
    elif target < count.provisioned:
        plan.drain = choose_to_drain(instances, count.provisioned - target)
    return plan
