"""Baseline: Kubernetes-HPA-style target utilization on the serving pool.

desired = ceil(current * utilization / target), no change within the tolerance band, and scale-in
takes the highest recommendation of the stabilization window (HPA's downscale behaviour).
The batch pool is fixed: utilization carries no deadline information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import decision, hold, mean_utilization, stale_guard
from scaler.state import ClusterSnapshot


@dataclass(frozen=True)
class RecommendationHistory:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, desired)

    def add(self, now: float, desired: int, window_s: float) -> "RecommendationHistory":
        kept = tuple((t, d) for t, d in self.recommendations if now - t < window_s)
        return RecommendationHistory(kept + ((now, desired),))

    def highest(self) -> int:
        return max(d for _, d in self.recommendations)


class UtilizationPolicy:
    name = "utilization"

    def initial_state(self) -> RecommendationHistory:
        return RecommendationHistory()

    def period_s(self, config: ScalerConfig) -> float:
        return config.utilization.period_s

    def decide(self, snapshot: ClusterSnapshot, state: RecommendationHistory, config: ScalerConfig):
        cfg = config.utilization
        pools = (cfg.serving_pool, "batch")
        guarded = stale_guard(snapshot, pools, config)
        if guarded is not None:
            return guarded, state
        out: list[ScaleDecision] = [
            decision(snapshot, "batch", cfg.batch_pool_instances, "fixed batch pool", {}, config)
        ]
        workers = snapshot.workers_in(cfg.serving_pool)
        util = mean_utilization(workers, config.slo.itl_s)
        current = snapshot.pool(cfg.serving_pool).provisioned
        if util is None:
            out.append(hold(snapshot, cfg.serving_pool, "no ready serving worker yet: hold"))
            return out, state
        ratio = util / cfg.target_utilization
        inputs = {"utilization": util, "target": cfg.target_utilization, "ready": len(workers), "current": current}
        desired = current if abs(ratio - 1) <= cfg.tolerance else math.ceil(len(workers) * ratio)
        state = state.add(snapshot.now, desired, cfg.scale_in_stabilization_s)
        if desired < current:
            desired = min(current, state.highest())
        reason = f"utilization {util:.2f} vs target {cfg.target_utilization:.2f}"
        out.append(decision(snapshot, cfg.serving_pool, desired, reason, inputs, config))
        return out, state
