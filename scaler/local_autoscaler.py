"""Per-worker admission-limit autoscaler (AIMD on backpressure), run every control period.

The admission limit is how many requests a worker runs at once (its engine's running batch).

Backpressure BP = max(LBP, TBP):
* LBP = smoothed ITL / tightest ITL SLO among the requests the worker serves;
* TBP = throughput before the last limit increase / throughput now (only right after an
  increase, and only while the worker was using its whole limit, otherwise a throughput drop
  just means fewer requests arrived).
BP < 1 grows the limit additively, BP >= 1 multiplies it by ``multiplicative_decrease``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.scaler_config import LocalAutoscalerConfig


@dataclass(frozen=True)
class LocalState:
    admission_limit: int
    itl_ewma_s: float | None = None
    throughput_before_increase: float | None = None  # set on the period the limit went up
    limit_before_increase: int | None = None

    @classmethod
    def initial(cls, config: LocalAutoscalerConfig) -> "LocalState":
        return cls(admission_limit=config.initial_admission_limit)


@dataclass(frozen=True)
class LocalObservation:
    """What the worker measured over the last control period."""

    itl_s: float | None  # mean inter-token interval, None when nothing decoded
    tokens_per_s: float
    running: int
    itl_slo_s: float | None  # tightest ITL SLO among served requests; None: no latency SLO (batch only)


@dataclass(frozen=True)
class LocalDecision:
    previous_limit: int
    admission_limit: int
    backpressure: float
    reason: str
    inputs: dict


def _ewma(previous: float | None, sample: float | None, alpha: float) -> float | None:
    if sample is None:
        return previous
    if previous is None:
        return sample
    return alpha * sample + (1 - alpha) * previous


def next_admission_limit(
    state: LocalState, observation: LocalObservation, config: LocalAutoscalerConfig
) -> tuple[LocalState, LocalDecision]:
    itl = _ewma(state.itl_ewma_s, observation.itl_s, config.itl_ewma_alpha)
    lbp = itl / observation.itl_slo_s if (itl is not None and observation.itl_slo_s) else 0.0
    tbp = 0.0
    # A throughput drop only blames the new limit if the worker still runs at least the old one;
    # otherwise fewer requests simply arrived.
    still_saturated = state.limit_before_increase is not None and observation.running >= state.limit_before_increase
    if state.throughput_before_increase is not None and observation.tokens_per_s > 0 and still_saturated:
        tbp = state.throughput_before_increase / (
            observation.tokens_per_s * (1 + config.throughput_drop_tolerance)
        )
    bp = max(lbp, tbp)
    saturated = observation.running >= state.admission_limit
    inputs = {
        "itl_sample_s": observation.itl_s,
        "itl_ewma_s": itl,
        "itl_slo_s": observation.itl_slo_s,
        "tokens_per_s": observation.tokens_per_s,
        "running": observation.running,
        "lbp": lbp,
        "tbp": tbp,
    }
    if bp >= 1:
        limit = max(config.min_admission_limit, math.floor(state.admission_limit * config.multiplicative_decrease))
        reason = f"backpressure {bp:.2f} >= 1 ({'latency' if lbp >= tbp else 'throughput'}): decrease"
        new_state = LocalState(admission_limit=limit, itl_ewma_s=itl)
    else:
        limit = min(config.max_admission_limit, state.admission_limit + config.additive_increase)
        reason = f"backpressure {bp:.2f} < 1: increase"
        # Only a saturated worker's throughput says anything about the new limit.
        before = observation.tokens_per_s if (limit > state.admission_limit and saturated) else None
        new_state = LocalState(
            admission_limit=limit,
            itl_ewma_s=itl,
            throughput_before_increase=before,
            limit_before_increase=state.admission_limit if before is not None else None,
        )
    return new_state, LocalDecision(state.admission_limit, limit, bp, reason, inputs)
