"""The one interface every actuator implements, and the pure helpers they share.

An actuator turns a :class:`~scaler.decision.ScaleDecision` into instances: it starts workers to
scale out and *drains* workers to scale in (stop consuming, finish in-flight requests, exit). It never
kills a worker mid-request; the only forced stop is a timeout the operator configures (local
``drain_timeout_s`` on ``close``, Docker's stop timeout, Kubernetes' terminationGracePeriodSeconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Protocol, runtime_checkable

from broker.heartbeat import WorkerHeartbeat
from core.names import POOL_LANES
from scaler.state import PoolObservation

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

    @classmethod
    def of(cls, instance_id: str, pool: str, state: InstanceState, beat: WorkerHeartbeat | None,
           worker_id: str | None = None, started_at: float | None = None) -> "InstanceInfo":
        """An instance with its load from its heartbeat (``None``: no heartbeat yet). A worker whose
        heartbeat says it drains is draining, whoever told it to."""
        if beat is None:
            return cls(instance_id, pool, state, worker_id, started_at=started_at)
        return cls(instance_id, pool, "draining" if beat.draining else state, worker_id or beat.worker_id,
                   beat.inflight, beat.admission_limit, started_at)


@dataclass(frozen=True)
class ActuationResult:
    """What one ``scale`` call did. ``pending`` > 0: more starts were needed than allowed at once."""

    pool: str
    requested: int  # target as asked
    target: int  # target after clamping
    before: PoolObservation
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

    def current(self, pool: str) -> PoolObservation: ...

    def instances(self, pool: str) -> list[InstanceInfo]: ...

    def scale(self, pool: str, target: int) -> ActuationResult: ...

    def close(self) -> None: ...


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


def count_instances(pool: str, instances: Iterable[InstanceInfo]) -> PoolObservation:
    states = [i.state for i in instances]
    return PoolObservation(pool=pool, ready=states.count("ready"), starting=states.count("starting"),
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
    starting = sum(1 for i in instances if i.state == "starting")
    provisioned = starting + sum(1 for i in instances if i.state == "ready")
    plan = ScalePlan(target=target)
    if target > provisioned:
        need = target - provisioned
        allowed = need if max_starting is None else max(0, min(need, max_starting - starting))
        plan.start, plan.pending = allowed, need - allowed
    elif target < provisioned:
        plan.drain = choose_to_drain(instances, provisioned - target)
    return plan
