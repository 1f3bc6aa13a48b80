"""Chiron-style global policy.

Serving pool: demand-based. Interactive demand is the token arrival rate (prompt + predicted output
tokens per second, from the lane), planned for its highest value over ``demand_window_s`` plus its
growth over one cold start (least-squares slope over ``trend_window_s`` times ``cold_start_s``).
Per-instance capacity is measured: tokens/s a worker serves while saturated (smoothed ITL near the
SLO, or an interactive queue is waiting so every worker is full), smoothed; a prior stands in until
then. Required instances = ceil(demand / (capacity * target_utilization)); scale-out goes there in one
step, scale-in goes to the highest requirement of the last ``scale_in_stabilization_s`` and only once
per window. A waiting interactive queue past a share of TTFT is a safety net that adds instances for
the backlog.

Batch pool: deadline-driven. It grows only when the predicted remaining batch work (with a
z * sigma * sqrt(n) margin) cannot finish within the deadline slack on the capacity already there:
what the mixed pool lends (measured while the batch lane is backlogged) plus batch workers, counting
the cold start of any new instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from scaler.config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import Window, decision, hold, stale_guard
from scaler.state import ClusterSnapshot, DeadlineGroup


@dataclass(frozen=True)
class ChironState:
    demand: tuple[tuple[float, float], ...] = ()  # (time, interactive arrival tokens/s) per period
    required: tuple[tuple[float, int], ...] = ()  # (time, required serving instances) per period
    last_scale_in: float | None = None
    last_queue_scale_out: float | None = None
    capacity_tokens_per_s: float | None = None  # measured per-instance interactive capacity
    batch_surplus: Window = field(default_factory=Window)
    batch_tokens_per_s: float | None = None  # learned per-instance batch throughput
    lent_tokens_per_s: float | None = None  # measured batch tokens/s one mixed worker lends when backlogged


@dataclass(frozen=True)
class BatchNeed:
    instances: int  # batch instances needed (ready + starting + new)
    at_risk: bool
    reason: str
    inputs: dict


def slope_per_s(points: tuple[tuple[float, float], ...]) -> float:
    """Least-squares slope of (t, value) points; 0 with fewer than 3."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den > 0 else 0.0


def capacity_sample(snapshot: ClusterSnapshot, config: ScalerConfig) -> float | None:
    """Per-instance interactive tokens/s measured on saturated serving workers, or None if none is saturated."""
    cfg = config.chiron
    serving = snapshot.workers_in("interactive", "mixed")
    # Only latency saturation counts: a waiting queue can also mean KV held by batch work or a burst of
    # prompts, and averaging over half-idle workers then reads as a low capacity (runaway scale-out).
    hot = [
        w.interactive_tokens_per_s
        for w in serving
        if w.running_batch == 0
        and w.itl_ewma_s is not None
        and w.itl_ewma_s >= cfg.saturation_itl_fraction * config.slo.itl_s
        and w.interactive_tokens_per_s > 0
    ]
    return sum(hot) / len(hot) if hot else None


def batch_throughput_estimate(snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig) -> float:
    """Per-instance batch tokens/s: measured on batch workers running at their limit, else remembered, else the prior."""
    saturated = [
        w.batch_tokens_per_s
        for w in snapshot.workers_in("batch")
        if w.running_batch >= w.batch_limit and w.batch_tokens_per_s > 0
    ]
    if saturated:
        return sum(saturated) / len(saturated)
    return state.batch_tokens_per_s or config.chiron.batch_tokens_per_s_prior


def batch_need(
    snapshot: ClusterSnapshot, per_instance_tps: float, mixed_spare_tps: float, config: ScalerConfig
) -> BatchNeed:
    """Smallest batch pool that finishes every deadline group in time (EDF order), and whether the current one does."""
    cfg = config.chiron
    pool = snapshot.pool("batch")
    groups: tuple[DeadlineGroup, ...] = tuple(
        sorted(snapshot.batch.deadline_groups if snapshot.batch else (), key=lambda g: g.deadline)
    )
    work = variance = 0.0
    needed_now = 0  # instances needed if they were all serving already
    needed_new = pool.provisioned  # including cold start for any instance beyond the ready ones
    at_risk = False
    worst = None
    for group in groups:
        work += group.predicted_tokens
        variance += group.predicted_variance
        margin_work = work + cfg.batch_z * math.sqrt(variance)
        horizon = (group.deadline - snapshot.now) * cfg.batch_finish_fraction_of_slack
        if horizon <= 0:
            continue  # already late; more instances cannot help this group, later groups still count
        lent = mixed_spare_tps * horizon
        needed_now = max(needed_now, math.ceil(max(0.0, margin_work - lent) / (per_instance_tps * horizon)))
        capacity = lent + pool.ready * per_instance_tps * horizon
        useful = horizon - cfg.cold_start_s
        capacity += pool.starting * per_instance_tps * max(0.0, useful)
        if capacity < margin_work:
            at_risk = True
            if useful > 0:
                extra = math.ceil((margin_work - capacity) / (per_instance_tps * useful))
                if pool.provisioned + extra > needed_new:
                    needed_new = pool.provisioned + extra
                    worst = (group, margin_work, horizon)
    inputs = {
        "groups": len(groups),
        "work_tokens": work,
        "margin_tokens": cfg.batch_z * math.sqrt(variance),
        "per_instance_tokens_per_s": per_instance_tps,
        "mixed_spare_tokens_per_s": mixed_spare_tps,
        "ready": pool.ready,
        "starting": pool.starting,
    }
    if at_risk:
        if worst is None:
            return BatchNeed(pool.provisioned, True, "deadline at risk but too close for a cold start: hold", inputs)
        group, margin_work, horizon = worst
        reason = (
            f"deadline at risk: {margin_work:.0f} tokens (with margin) due in {group.deadline - snapshot.now:.0f} s "
            f"exceed capacity within {horizon:.0f} s"
        )
        return BatchNeed(needed_new, True, reason, inputs)
    return BatchNeed(needed_now, False, f"deadlines met with {needed_now} batch instances", inputs)


class ChironPolicy:
    name = "chiron"

    def initial_state(self) -> ChironState:
        return ChironState()

    def period_s(self, config: ScalerConfig) -> float:
        return config.chiron.period_s

    def decide(self, snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig):
        cfg = config.chiron
        guarded = stale_guard(snapshot, ("interactive", "mixed", "batch"), config)
        if guarded is not None:
            return guarded, state
        out: list[ScaleDecision] = []
        serving_pool = cfg.serving_pool
        fixed = "interactive" if serving_pool == "mixed" else "mixed"
        out.append(hold(snapshot, fixed, f"{fixed} pool is not scaled by chiron (serving pool is {serving_pool})"))
        decision_, state = self._serving(snapshot, state, config)
        out.append(decision_)
        decision_, state = self._batch(snapshot, state, config)
        out.append(decision_)
        return out, state

    # ------------------------------------------------------------------ serving
    def _serving(self, snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig):
        cfg = config.chiron
        now = snapshot.now
        pool = cfg.serving_pool
        lane = snapshot.interactive
        serving_workers = snapshot.workers_in("interactive", "mixed")
        provisioned = snapshot.pool("interactive").provisioned + snapshot.pool("mixed").provisioned
        current = snapshot.pool(pool).provisioned

        # Capacity: measured on saturated workers, smoothed; the prior until the first measurement.
        sample = capacity_sample(snapshot, config) if cfg.measure_capacity_online else None
        capacity = state.capacity_tokens_per_s
        if sample is not None and sample > 0:
            a = cfg.capacity_ewma_alpha
            capacity = sample if capacity is None else a * sample + (1 - a) * capacity
        capacity_used = capacity or cfg.interactive_capacity_tokens_per_s_prior

        # Demand: highest arrival token rate of the window plus growth over one cold start.
        rate = lane.arrival_tokens_per_s if lane else 0.0
        keep = max(cfg.demand_window_s, cfg.trend_window_s, cfg.period_s)
        demand_hist = tuple((t, v) for t, v in state.demand if now - t < keep) + ((now, rate),)
        window_peak = max(v for t, v in demand_hist if now - t < cfg.demand_window_s)
        in_trend = tuple((t, v) for t, v in demand_hist if now - t < cfg.trend_window_s)
        # A slope needs half a window of history (the first periods after start would read as huge growth).
        trend = slope_per_s(in_trend) if in_trend[-1][0] - in_trend[0][0] >= cfg.trend_window_s / 2 else 0.0
        growth = max(0.0, trend) * cfg.cold_start_s
        demand = window_peak + growth
        required = max(1, math.ceil(demand / (capacity_used * cfg.target_utilization)))
        required_hist = tuple((t, r) for t, r in state.required if now - t < cfg.scale_in_stabilization_s) + (
            (now, required),
        )
        state = replace(state, demand=demand_hist, required=required_hist, capacity_tokens_per_s=capacity)

        queued = lane.queued if lane else 0
        queue_wait = lane.oldest_wait_s if lane else 0.0
        inputs = {
            "arrival_tokens_per_s": rate,
            "window_peak_tokens_per_s": window_peak,
            "trend_tokens_per_s2": trend,
            "demand_tokens_per_s": demand,
            "capacity_tokens_per_s": capacity_used,
            "capacity_measured": capacity is not None,
            "required": required,
            "ready": len(serving_workers),
            "provisioned": provisioned,
            "queued": queued,
            "oldest_wait_s": queue_wait,
        }
        if not serving_workers and provisioned > 0:
            return hold(snapshot, pool, "no ready serving worker yet: hold", inputs), state
        others = provisioned - current  # serving instances in the pool chiron does not scale

        # Safety net: a queue waiting past a share of TTFT means demand or capacity was underestimated.
        queue_threat = queue_wait > cfg.queue_wait_fraction_of_ttft * config.slo.ttft_s
        cooling = state.last_queue_scale_out is not None and now - state.last_queue_scale_out < cfg.queue_scale_out_cooldown_s
        if queue_threat and not cooling:
            mean_limit = sum(w.batch_limit for w in serving_workers) / max(1, len(serving_workers))
            target_total = max(required, provisioned + max(1, math.ceil(queued / max(mean_limit, 1.0))))
            state = replace(state, last_queue_scale_out=now)
            reason = f"interactive queue waited {queue_wait:.1f} s > {cfg.queue_wait_fraction_of_ttft:.2f} x TTFT: scale out"
            return decision(snapshot, pool, target_total - others, reason, inputs, config), state

        if required > provisioned:
            reason = (
                f"demand {demand:.0f} tok/s (window peak {window_peak:.0f} + growth {growth:.0f}) needs {required} "
                f"instances at {capacity_used:.0f} tok/s x {cfg.target_utilization:.2f}: scale out"
            )
            return decision(snapshot, pool, required - others, reason, inputs, config), state

        window_full = bool(state.required) and now - state.required[0][0] >= cfg.scale_in_stabilization_s - cfg.period_s
        since_last = state.last_scale_in is None or now - state.last_scale_in >= cfg.scale_in_stabilization_s
        highest = max(r for _, r in required_hist)
        if highest < provisioned and window_full and since_last and queued == 0:
            reason = (
                f"requirement stayed <= {highest} for {cfg.scale_in_stabilization_s:.0f} s "
                f"(< {provisioned} provisioned): scale in"
            )
            state = replace(state, last_scale_in=now)
            return decision(snapshot, pool, highest - others, reason, inputs, config), state
        return hold(snapshot, pool, f"{required} required, {provisioned} provisioned: hold", inputs), state

    # -------------------------------------------------------------------- batch
    def _batch(self, snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig):
        cfg = config.chiron
        per_instance = batch_throughput_estimate(snapshot, state, config)
        state = replace(state, batch_tokens_per_s=per_instance)
        mixed = snapshot.workers_in("mixed")
        lane = snapshot.batch
        backlogged = lane is not None and lane.queued > 0 and bool(mixed)
        per_worker = state.lent_tokens_per_s
        if backlogged:
            # The batch lane is backlogged, so mixed workers lend all they can: this is their lent capacity.
            now_per_worker = sum(w.batch_tokens_per_s for w in mixed) / len(mixed)
            a = cfg.lent_ewma_alpha
            per_worker = now_per_worker if per_worker is None else a * now_per_worker + (1 - a) * per_worker
            state = replace(state, lent_tokens_per_s=per_worker)
        if per_worker is None:
            # Not measured yet: spare share of each mixed worker (1 - interactive slot use) at the batch rate.
            lent = sum(max(0.0, 1.0 - w.utilization(config.slo.itl_s)) for w in mixed) * per_instance * cfg.mixed_lend_efficiency
        else:
            lent = per_worker * len(mixed)  # per-worker measurement times the mixed workers there now
        need = batch_need(snapshot, per_instance, lent, config)
        batch_pool = snapshot.pool("batch")
        surplus = not need.at_risk and need.instances < batch_pool.provisioned
        state = replace(state, batch_surplus=state.batch_surplus.update(surplus, snapshot.now))
        if need.at_risk and need.instances > batch_pool.provisioned:
            return decision(snapshot, "batch", need.instances, need.reason, need.inputs, config), state
        if surplus and state.batch_surplus.lasted(snapshot.now, cfg.batch_scale_in_stabilization_s):
            state = replace(state, batch_surplus=Window())
            return decision(snapshot, "batch", need.instances, f"{need.reason}: scale in surplus", need.inputs, config), state
        return hold(snapshot, "batch", need.reason, need.inputs), state
