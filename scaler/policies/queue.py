"""Baseline: KEDA-style queue-length scaling, replicas = ceil(lane length / target per replica).

Lane length counts waiting plus in-flight requests (a Redis stream's backlog including
unacknowledged entries): workers pull up to their batch limit, so waiting alone stays near zero
until the pool is already saturated. Scale-in takes the highest recommendation of the window.
"""

from __future__ import annotations

import math
from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import decision, stale_guard
from scaler.policies.utilization import RecommendationHistory
from scaler.state import ClusterSnapshot


class QueuePolicy:
    name = "queue"

    def initial_state(self) -> dict[str, RecommendationHistory]:
        return {}

    def period_s(self, config: ScalerConfig) -> float:
        return config.queue.period_s

    def decide(self, snapshot: ClusterSnapshot, state: dict, config: ScalerConfig):
        cfg = config.queue
        pools = (cfg.serving_pool, "batch")
        guarded = stale_guard(snapshot, pools, config)
        if guarded is not None:
            return guarded, state
        serving = snapshot.workers_in(cfg.serving_pool, "interactive")
        batch_workers = snapshot.workers_in("batch", "mixed")
        lanes = {
            cfg.serving_pool: (
                (snapshot.interactive.queued if snapshot.interactive else 0)
                + sum(w.running_interactive for w in serving),
                cfg.interactive_target_per_replica,
            ),
            "batch": (
                (snapshot.batch.queued if snapshot.batch else 0)
                + sum(w.running_batch for w in batch_workers if w.pool == "batch"),
                cfg.batch_target_per_replica,
            ),
        }
        out: list[ScaleDecision] = []
        new_state = dict(state)
        for pool, (length, per_replica) in lanes.items():
            desired = math.ceil(length / per_replica)
            current = snapshot.pool(pool).provisioned
            history = state.get(pool, RecommendationHistory()).add(snapshot.now, desired, cfg.scale_in_stabilization_s)
            new_state[pool] = history
            if desired < current:
                desired = min(current, history.highest())
            inputs = {"lane_length": length, "target_per_replica": per_replica, "current": current}
            reason = f"lane length {length} / {per_replica:g} per replica"
            out.append(decision(snapshot, pool, desired, reason, inputs, config))
        return out, new_state
