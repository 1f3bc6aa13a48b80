"""Every tunable constant of the scaler, with its default and the reason for it.

Plain pydantic ``BaseModel`` classes (no environment reading) so the project's settings model
can nest :class:`ScalerConfig` directly.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field



class SLOConfig(BaseModel):
    """Service-level objectives per SLO class."""

    ttft_s: float = Field(2.0, gt=0, description="Interactive time-to-first-token target.")
    itl_s: float = Field(0.100, gt=0, description="Interactive inter-token latency target.")
    batch_deadline_s: float = Field(
        3600.0, gt=0, description="Default batch deadline, relative to submission, when a job sets none."
    )


class PoolLimits(BaseModel):
    """Instance bounds for one pool; ``min_instances`` is what prevents scaling to zero."""

    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(64, ge=0)


def _default_pool_limits() -> dict[str, PoolLimits]:
    return {
        "interactive": PoolLimits(min_instances=0, max_instances=64),
        # One mixed instance always stays up so interactive traffic never meets an empty cluster.
        "mixed": PoolLimits(min_instances=1, max_instances=64),
        "batch": PoolLimits(min_instances=0, max_instances=64),
    }


class LocalAutoscalerConfig(BaseModel):
    """Per-worker AIMD on the worker's admission limit (requests it runs at once, i.e. the engine's
    concurrently running sequences)."""

    # An unknown field is an error, not ignored: the limits were renamed (min/max/initial_batch_size ->
    # *_admission_limit), and an old SLUICE_SCALER__LOCAL__MAX_BATCH_SIZE must not silently do nothing.
    model_config = ConfigDict(extra="forbid")

    control_period_s: float = Field(1.0, gt=0, description="How often each worker re-evaluates its limit.")
    itl_ewma_alpha: float = Field(
        0.3, gt=0, le=1, description="Weight of the newest ITL sample; 0.3 forgets a spike within ~5 periods."
    )
    additive_increase: int = Field(4, ge=1, description="Sequences added to the limit when backpressure < 1.")
    multiplicative_decrease: float = Field(
        0.5, gt=0, lt=1, description="Factor applied to the limit when backpressure >= 1 (halving, as TCP)."
    )
    min_admission_limit: int = Field(8, ge=1, description="Floor: below this the GPU idles on weight reads.")
    max_admission_limit: int = Field(256, ge=1, description="Ceiling: vLLM's default max_num_seqs.")
    initial_admission_limit: int = Field(
        64, ge=1, description="Limit a fresh simulated worker starts from (a live worker reports its own)."
    )
    throughput_drop_tolerance: float = Field(
        0.05,
        ge=0,
        description="Throughput may fall this fraction after a limit increase before TBP counts it as a loss "
        "(measurement noise between two 1 s periods).",
    )


class ChironConfig(BaseModel):
    """Global Chiron-style policy: demand-based scaling for the serving pool, deadline-driven batch pool."""

    period_s: float = Field(5.0, gt=0, description="Global decision period.")
    serving_pool: str = Field(
        "mixed", description="Pool that grows for interactive demand; mixed lends its spare capacity to batch."
    )
    # --- interactive demand vs measured capacity
    demand_window_s: float = Field(
        30.0,
        gt=0,
        description="Scale-out plans for the highest per-period interactive token arrival rate seen in this "
        "window (a short burst is absorbed only if it is shorter than the TTFT budget; 30 s covers the "
        "10-s bursts of the conv trace without reacting to a single 5-s sample's noise alone).",
    )
    demand_smoothing_s: float = Field(
        0.0,
        ge=0,
        description="Plan on the mean arrival rate of this many seconds instead of single periods (0: single "
        "periods). Bursty traffic (ServeGen's per-client bursts) makes the peak of 5-s rates, held for the scale-in "
        "window, far above what the instances' batches absorb.",
    )
    trend_window_s: float = Field(
        120.0, gt=0, description="Least-squares slope of the arrival token rate is fitted over this window."
    )
    cold_start_s: float = Field(
        60.0, ge=0, description="Launch-to-serving time; demand is projected this far ahead (slope * cold start)."
    )
    target_utilization: float = Field(
        0.80,
        gt=0,
        le=1,
        description="Share of the measured per-instance capacity the plan fills; the rest absorbs bursts "
        "shorter than the demand window and measurement noise.",
    )
    interactive_capacity_tokens_per_s_prior: float = Field(
        9113.0,
        gt=0,
        description="Interactive tokens/s (prompt + output) one instance serves at SLO: a load-test number for "
        "the deployed model and GPU (bench cluster derives it from the static_peak load test).",
    )
    measure_capacity_online: bool = Field(
        False,
        description="Replace the load-test capacity by tokens/s measured on latency-saturated workers. Off by "
        "default: in the bench those samples come mostly from workers stalled by one long prompt and read "
        "far below the real capacity (runaway scale-out); see docs/scaler.md.",
    )
    capacity_ewma_alpha: float = Field(
        0.2, gt=0, le=1, description="Weight of a new per-instance capacity measurement."
    )
    saturation_itl_fraction: float = Field(
        0.9,
        gt=0,
        description="A worker whose smoothed ITL is at least this share of the ITL SLO (and runs no batch work) is "
        "saturated: its interactive tokens/s is a capacity sample.",
    )
    scale_in_stabilization_s: float = Field(
        600.0,
        ge=0,
        description="Scale-in goes to the highest requirement of this window, and only once per window "
        "(hysteresis; 300 s gave 37 actions/h in the bench, 600 s 12.5).",
    )
    queue_wait_fraction_of_ttft: float = Field(
        0.5,
        gt=0,
        description="Safety net: scale out for the queued backlog when the oldest interactive request waited "
        "more than this share of TTFT (demand or capacity estimate was wrong).",
    )
    queue_scale_out_cooldown_s: float = Field(
        75.0,
        ge=0,
        description="Minimum time between two queue-triggered scale-outs; longer than the cold start so the "
        "first one is seen serving before the next.",
    )
    # --- batch
    batch_z: float = Field(
        2.0, ge=0, description="Standard deviations of predicted work added as margin (~97.7% one-sided)."
    )
    batch_finish_fraction_of_slack: float = Field(
        0.8, gt=0, le=1, description="Plan to finish batch work within this share of the deadline slack."
    )
    batch_tokens_per_s_prior: float = Field(
        2000.0,
        gt=0,
        description="Batch output tokens/s one instance delivers when no worker has measured it yet.",
    )
    mixed_lend_efficiency: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of a mixed instance's spare capacity counted as batch throughput (it is preempted), "
        "used only until the lent throughput has been measured on a backlogged batch lane.",
    )
    lent_ewma_alpha: float = Field(
        0.2, gt=0, le=1, description="Weight of a new measurement of batch tokens/s lent by the mixed pool."
    )
    batch_scale_in_stabilization_s: float = Field(
        120.0, ge=0, description="Batch capacity must be in surplus this long before batch instances go."
    )


class StaticConfig(BaseModel):
    """Fixed instance counts per pool (``static``: tuned mixed count; ``static_peak``: peak provisioning)."""

    # Fewest mixed instances reaching 99% on azure-hour (bench cluster sweep, docs/scaler.md).
    counts: dict[str, int] = Field(default_factory=lambda: {"interactive": 0, "batch": 0, "mixed": 12})
    peak_counts: dict[str, int] = Field(
        default_factory=lambda: {"interactive": 12, "batch": 59, "mixed": 0},
        description="static_peak counts; bench cluster recomputes them from the workload (see docs/scaler.md).",
    )


class UtilizationConfig(BaseModel):
    """HPA-style: desired = ceil(current * utilization / target) on the serving pool."""

    period_s: float = 15.0
    target_utilization: float = Field(0.4, gt=0, le=1, description="Tuned in bench cluster: lowest sweep value reaching 99%.")
    tolerance: float = Field(0.1, ge=0, description="HPA's default: no change while |ratio - 1| <= 0.1.")
    scale_in_stabilization_s: float = Field(300.0, ge=0, description="HPA's default downscale window.")
    serving_pool: str = "mixed"
    batch_pool_instances: int = Field(0, ge=0, description="Fixed batch pool size (HPA has no deadline input).")


class QueueConfig(BaseModel):
    """KEDA-style: replicas = ceil(queue length / target per replica), per lane."""

    period_s: float = 15.0
    interactive_target_per_replica: float = Field(20.0, gt=0, description="Tuned in bench cluster to reach 99%.")
    batch_target_per_replica: float = Field(2000.0, gt=0)
    scale_in_stabilization_s: float = Field(300.0, ge=0, description="KEDA/HPA default cooldown.")
    serving_pool: str = "mixed"


class ScalerConfig(BaseModel):
    """Root of all scaler settings."""

    slo: SLOConfig = Field(default_factory=SLOConfig)
    pools: dict[str, PoolLimits] = Field(default_factory=_default_pool_limits)
    max_observation_age_s: float = Field(
        15.0, gt=0, description="Snapshots older than this make every policy hold (3 missed global periods)."
    )
    local: LocalAutoscalerConfig = Field(default_factory=LocalAutoscalerConfig)
    chiron: ChironConfig = Field(default_factory=ChironConfig)
    static: StaticConfig = Field(default_factory=StaticConfig)
    utilization: UtilizationConfig = Field(default_factory=UtilizationConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)

    def limits(self, pool: str) -> PoolLimits:
        # A pool left out of an override keeps its default limits (the mixed floor of 1 included), so
        # overriding one pool can never let another scale to zero.
        return self.pools.get(pool) or _default_pool_limits().get(pool, PoolLimits())
