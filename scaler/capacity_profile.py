"""A worker's interactive capacity from a load profile: pure.

``sluice profile`` runs load steps of increasing concurrency against a worker and records, per step,
the output tokens/s and the 90th-percentile inter-token latency of the requests that finished.  The
capacity is the throughput of the busiest step whose ITL p90 is still within the SLO: more load than
that only buys throughput by breaking the SLO (continuous batching trades ITL for tokens/s).
"""

from __future__ import annotations

from broker.capacity import ProfileStep


class NoStepWithinSLO(ValueError):
    """Even the lightest step broke the ITL SLO: the model is too slow for it on this hardware."""


def capacity_at_slo(steps: list[ProfileStep], itl_slo_s: float) -> ProfileStep:
    """The step that sets the capacity: the highest tokens/s among steps with ITL p90 within the SLO."""
    within = [step for step in steps if step.requests > 0 and step.itl_p90_s is not None
              and step.itl_p90_s <= itl_slo_s]
    if not within:
        raise NoStepWithinSLO(f"no load step kept ITL p90 within {itl_slo_s * 1000:.0f} ms")
    return max(within, key=lambda step: step.tokens_per_s)


def should_stop(step: ProfileStep, itl_slo_s: float) -> bool:
    """Past the SLO: heavier steps can only be worse."""
    return step.itl_p90_s is not None and step.itl_p90_s > itl_slo_s
