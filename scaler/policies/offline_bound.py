"""``offline_bound``: replays a schedule computed offline from the whole workload (it knows the future).

The schedule (``scaler.sim.offline_bound.offline_schedule``) gives per window the fewest instances
of each pool that meet the SLOs. Each instance is launched one cold start ahead of its window, so a
pool's target now is the highest count of the windows in [now, now + cold start]. Without a
schedule (e.g. in the live scaler) the policy holds every pool.
"""

from __future__ import annotations

from typing import Protocol

from core.names import POOLS
from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import decision, hold, stale_guard
from scaler.state import ClusterSnapshot


class Schedule(Protocol):
    window_s: float

    def count_at(self, pool: str, t: float) -> int: ...


class OfflineBoundPolicy:
    name = "offline_bound"

    def __init__(self, schedule: Schedule | None = None):
        self.schedule = schedule

    def initial_state(self) -> None:
        return None

    def period_s(self, config: ScalerConfig) -> float:
        return min(5.0, self.schedule.window_s) if self.schedule else 60.0

    def initial_counts(self, config: ScalerConfig) -> dict[str, int]:
        """Up at t = 0 with the first windows' counts (their cold start happened before the run)."""
        if self.schedule is None:
            return {}
        return {pool: self.target(pool, 0.0, config) for pool in POOLS}

    def target(self, pool: str, now: float, config: ScalerConfig) -> int:
        s, ahead = self.schedule, config.chiron.cold_start_s
        times = [now + k * s.window_s for k in range(int(ahead // s.window_s) + 1)] + [now + ahead]
        return max(s.count_at(pool, t) for t in times)

    def decide(self, snapshot: ClusterSnapshot, state: None, config: ScalerConfig) -> tuple[list[ScaleDecision], None]:
        guarded = stale_guard(snapshot, POOLS, config)
        if guarded is not None:
            return guarded, state
        if self.schedule is None:
            return [hold(snapshot, pool, "no offline schedule: hold") for pool in POOLS], state
        out = []
        for pool in POOLS:
            target = self.target(pool, snapshot.now, config)
            out.append(decision(snapshot, pool, target, f"offline schedule: {target}", {"scheduled": target}, config))
        return out, state
