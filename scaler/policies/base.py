"""What every policy shares: the interface, the stale-metrics guard and the pool bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.state import ClusterSnapshot, WorkerObservation


class Policy(Protocol):
    name: str

    def initial_state(self) -> Any: ...

    def period_s(self, config: ScalerConfig) -> float: ...

    def decide(
        self, snapshot: ClusterSnapshot, state: Any, config: ScalerConfig
    ) -> tuple[list[ScaleDecision], Any]: ...


@dataclass(frozen=True)
class Window:
    """Start time of a condition that must persist (hysteresis), or None if it does not hold now."""

    since: float | None = None

    def update(self, holds: bool, now: float) -> "Window":
        if not holds:
            return Window(None)
        return self if self.since is not None else Window(now)

    def lasted(self, now: float, seconds: float) -> bool:
        return self.since is not None and now - self.since >= seconds


T = TypeVar("T")


@dataclass(frozen=True)
class Step(Generic[T]):
    """One named step of a decision chain: the value it computed and why, in words that name its inputs."""

    name: str
    value: T
    reason: str


def explained(inputs: dict, steps: list[Step]) -> dict:
    """A decision's inputs with the reasons of the steps that led to it, in order (shown by `sluice scaler status`)."""
    return {**inputs, "steps": {step.name: step.reason for step in steps}}


def clamp(pool: str, target: int, config: ScalerConfig) -> int:
    limits = config.limits(pool)
    return max(limits.min_instances, min(limits.max_instances, target))


def hold(snapshot: ClusterSnapshot, pool: str, reason: str, inputs: dict | None = None) -> ScaleDecision:
    current = snapshot.pool(pool).provisioned
    return ScaleDecision(pool=pool, current=current, target=current, reason=reason, inputs=inputs or {})


def stale_guard(snapshot: ClusterSnapshot, pools: tuple[str, ...], config: ScalerConfig) -> list[ScaleDecision] | None:
    """Hold every pool when observations are old or incomplete, so missing data never reads as zero load."""
    inputs = {"age_s": snapshot.age_s, "complete": snapshot.complete}
    if snapshot.age_s > config.max_observation_age_s:
        reason = f"metrics stale ({snapshot.age_s:.1f} s > {config.max_observation_age_s:.1f} s): hold"
        return [hold(snapshot, p, reason, inputs) for p in pools]
    if not snapshot.complete:
        return [hold(snapshot, p, "metrics incomplete: hold", inputs) for p in pools]
    for pool in pools:
        obs = snapshot.pool(pool)
        reported = sum(1 for w in snapshot.workers if w.pool == pool and w.ready and not w.draining)
        if obs.ready > 0 and reported == 0:
            reason = f"pool {pool} has {obs.ready} ready instances but no worker reported: hold"
            return [hold(snapshot, p, reason, inputs) for p in pools]
    return None


def mean_utilization(workers: tuple[WorkerObservation, ...], itl_slo_s: float) -> float | None:
    if not workers:
        return None
    return sum(w.utilization(itl_slo_s) for w in workers) / len(workers)


def decision(
    snapshot: ClusterSnapshot, pool: str, target: int, reason: str, inputs: dict, config: ScalerConfig
) -> ScaleDecision:
    current = snapshot.pool(pool).provisioned
    bounded = clamp(pool, target, config)
    if bounded != target:
        reason = f"{reason}; bounded to [{config.limits(pool).min_instances}, {config.limits(pool).max_instances}]"
    return ScaleDecision(pool=pool, current=current, target=bounded, reason=reason, inputs=inputs)
