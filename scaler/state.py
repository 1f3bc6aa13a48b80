"""Observed cluster state: the only input of every scaling decision.

The live scaler builds a :class:`ClusterSnapshot` from Redis / worker metrics, the simulator from
its own arrays; policies never look anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerObservation:
    """One worker (one vLLM engine) as last reported."""

    worker_id: str
    pool: str
    ready: bool  # False while cold-starting
    running_interactive: int = 0
    running_batch: int = 0
    admission_limit: int = 1  # requests the worker runs at once, set by the local autoscaler
    itl_ewma_s: float | None = None  # None: no decode step observed yet
    batch_tokens_per_s: float = 0.0  # output tokens/s of batch work in the last period
    draining: bool = False
    # Interactive tokens (prompt tokens prefilled + output tokens decoded) per second in the last
    # period: what the worker served, used to measure per-instance capacity when it is saturated.
    interactive_tokens_per_s: float = 0.0

    def utilization(self, itl_slo_s: float) -> float:
        """Interactive load in [0, 1+]: the larger of slot use and latency headroom used.

        Batch sequences on a mixed worker are preemptible, so they do not count as load.
        Latency headroom (ITL / SLO) matters because prefill interference saturates an engine long
        before its admission limit is reached. While a worker lends capacity to batch work its ITL
        is inflated by that preemptible work, so only slot use counts then: a worker that has room
        to lend is by definition not short of interactive capacity.
        """
        slots = self.running_interactive / max(self.admission_limit, 1)
        if self.itl_ewma_s is None or self.running_interactive == 0 or self.running_batch > 0:
            return slots
        return max(slots, self.itl_ewma_s / itl_slo_s)


@dataclass(frozen=True)
class DeadlineGroup:
    """Unfinished batch requests (queued or running) that share one deadline, usually one job."""

    deadline: float  # absolute time, same clock as ClusterSnapshot.now
    requests: int
    predicted_tokens: float  # sum of predicted remaining output tokens
    predicted_variance: float  # sum of per-request variances of those predictions


@dataclass(frozen=True)
class LaneObservation:
    """One Redis lane."""

    slo_class: str
    queued: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate_per_s: float = 0.0
    # Token demand of the requests that arrived in the last period: prompt tokens plus predicted
    # output tokens, per second (the unit per-instance capacity is measured in).
    arrival_tokens_per_s: float = 0.0
    deadline_groups: tuple[DeadlineGroup, ...] = ()


@dataclass(frozen=True)
class PoolObservation:
    """One pool's instance counts, as its actuator reports them. ``starting`` instances are launched but
    not yet serving; ``draining`` ones finish their requests and leave."""

    pool: str
    ready: int = 0
    starting: int = 0
    draining: int = 0

    @property
    def provisioned(self) -> int:
        """Instances that count towards the pool's size (draining ones are on their way out)."""
        return self.ready + self.starting


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything a policy may look at, stamped with when it was observed."""

    now: float
    observed_at: float  # time of the oldest input that went into this snapshot
    complete: bool  # False if any expected source (a lane, a pool, a worker) failed to report
    pools: dict[str, PoolObservation] = field(default_factory=dict)
    workers: tuple[WorkerObservation, ...] = ()
    interactive: LaneObservation | None = None
    batch: LaneObservation | None = None
    # Per-worker interactive capacity measured by `sluice profile` for the served model, if it was.
    profiled_capacity_tokens_per_s: float | None = None

    @property
    def age_s(self) -> float:
        return self.now - self.observed_at

    def pool(self, name: str) -> PoolObservation:
        return self.pools.get(name, PoolObservation(pool=name))

    def workers_in(self, *pools: str) -> tuple[WorkerObservation, ...]:
        return tuple(w for w in self.workers if w.pool in pools and w.ready and not w.draining)
