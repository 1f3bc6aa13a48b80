"""Baselines with fixed instance counts: ``static`` (tuned mixed count) and ``static_peak`` (peak provisioning)."""

from __future__ import annotations

from core.names import POOLS
from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import decision, stale_guard
from scaler.state import ClusterSnapshot


class StaticPolicy:
    name = "static"

    def counts(self, config: ScalerConfig) -> dict[str, int]:
        return config.static.counts

    def initial_counts(self, config: ScalerConfig) -> dict[str, int]:
        """A static cluster is up from the start (no cold start inside the measured window)."""
        return dict(self.counts(config))

    def initial_state(self) -> None:
        return None

    def period_s(self, config: ScalerConfig) -> float:
        return 60.0

    def decide(self, snapshot: ClusterSnapshot, state: None, config: ScalerConfig) -> tuple[list[ScaleDecision], None]:
        guarded = stale_guard(snapshot, POOLS, config)
        if guarded is not None:
            return guarded, state
        out = []
        counts = self.counts(config)
        for pool in POOLS:
            count = counts.get(pool, 0)
            out.append(decision(snapshot, pool, count, f"{self.name} count {count}", {"configured": count}, config))
        return out, state


class StaticPeakPolicy(StaticPolicy):
    """Peak provisioning without an SLO-aware scaler: a dedicated interactive pool for the interactive
    peak plus a dedicated batch pool for the batch peak (``config.static.peak_counts``)."""

    name = "static_peak"

    def counts(self, config: ScalerConfig) -> dict[str, int]:
        return config.static.peak_counts
