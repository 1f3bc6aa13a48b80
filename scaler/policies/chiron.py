"""Chiron-style global policy.

Serving pool: demand-based. Interactive demand is the token arrival rate (prompt + predicted output
tokens per second, from the lane), planned for its highest value over ``demand_window_s`` plus its
growth over one cold start (least-squares slope over ``trend_window_s`` times ``cold_start_s``).
Per-instance capacity is a prior (a load-test figure) or, with ``measure_capacity_online``, the EWMA of
the tokens/s served by latency-saturated workers (smoothed ITL near the SLO). Required instances = ceil(demand / (capacity * target_utilization)); scale-out goes there in one
step, scale-in goes to the highest requirement of the last ``scale_in_stabilization_s`` and only once
per window. A waiting interactive queue past a share of TTFT is a safety net that adds instances for
the backlog.

Batch pool: deadline-driven. It grows only when the predicted remaining batch work (with a
z * sigma * sqrt(n) margin) cannot finish within the deadline slack on the capacity already there:
what the mixed pool lends (measured while the batch lane is backlogged) plus batch workers, counting
the cold start of any new instance.

Each decision is a chain of small pure steps, each returning ``Step(name, value, reason)`` (the reason
names the inputs it used), in the manner of Ray Serve's autoscaling policy:

  serving: measure_capacity -> demand_window -> demand_trend -> required_instances, then the first of
           queue_safety_net -> scale_out_target -> scale_in_target that returns a target decides (else hold);
  batch:   measure_batch_throughput -> measure_lent_throughput -> batch_need -> batch_surplus -> batch_target.

The decision's reason is the deciding step's reason; its ``inputs["steps"]`` holds every evaluated step's
reason in order, so ``sluice scaler status`` can explain a decision step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.policies.base import Step, Window, decision, explained, hold, stale_guard
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


def serving_provisioned(snapshot: ClusterSnapshot) -> int:
    """Serving instances (ready + starting) of both serving pools: requirements count all of them."""
    return snapshot.pool("interactive").provisioned + snapshot.pool("mixed").provisioned


# ---------------------------------------------------------------------------------------------------
# Serving pool: measure_capacity -> demand_window -> demand_trend -> required_instances, then the first
# of queue_safety_net -> scale_out_target -> scale_in_target that returns a target decides (else hold).
# Every step is pure and returns Step(name, value, reason); the reasons become the decision's "steps".


@dataclass(frozen=True)
class Capacity:
    measured: float | None  # EWMA of saturated samples (kept in the state); None until the first one
    used: float  # tokens/s per instance the requirement plans with: the measurement, else the prior


def measure_capacity(snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig) -> Step[Capacity]:
    """Per-instance interactive capacity: EWMA of samples on latency-saturated workers; until there is one,
    the figure `sluice profile` measured for the served model; without that, the configured prior."""
    cfg = config.chiron
    sample = capacity_sample(snapshot, config) if cfg.measure_capacity_online else None
    measured = state.capacity_tokens_per_s
    if sample is not None and sample > 0:
        a = cfg.capacity_ewma_alpha
        measured = sample if measured is None else a * sample + (1 - a) * measured
        source = f"EWMA (alpha {a:.2f}) of latency-saturated workers, {sample:.0f} this period"
    elif measured is not None:
        source = "measured earlier, " + (
            "no latency-saturated worker this period" if cfg.measure_capacity_online else "online measurement off"
        )
    elif snapshot.profiled_capacity_tokens_per_s:
        source = "measured by sluice profile, " + (
            "no latency-saturated worker yet" if cfg.measure_capacity_online else "online measurement off"
        )
    else:
        source = "the prior, " + (
            "no latency-saturated worker yet" if cfg.measure_capacity_online else "online measurement off"
        )
    used = measured or snapshot.profiled_capacity_tokens_per_s or cfg.interactive_capacity_tokens_per_s_prior
    return Step("measure_capacity", Capacity(measured, used), f"capacity {used:.0f} tok/s per instance ({source})")


@dataclass(frozen=True)
class DemandWindow:
    history: tuple[tuple[float, float], ...]  # (time, arrival tokens/s) kept for window and trend; now last
    arrival: float  # this period's interactive arrival tokens/s
    peak: float  # highest arrival tokens/s of the last demand_window_s


def demand_window(snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig) -> Step[DemandWindow]:
    """This period's interactive token arrival rate, and the highest of the last ``demand_window_s``."""
    cfg = config.chiron
    now = snapshot.now
    rate = snapshot.interactive.arrival_tokens_per_s if snapshot.interactive else 0.0
    keep = max(cfg.demand_window_s + cfg.demand_smoothing_s, cfg.trend_window_s, cfg.period_s)
    history = tuple((t, v) for t, v in state.demand if now - t < keep) + ((now, rate),)

    def smoothed(at: float, value: float) -> float:  # mean rate of the periods in (at - demand_smoothing_s, at]
        rates = [v for t, v in history if at - cfg.demand_smoothing_s < t <= at] or [value]
        return sum(rates) / len(rates)

    peak = max(smoothed(t, v) for t, v in history if now - t < cfg.demand_window_s)
    smoothing = f" ({cfg.demand_smoothing_s:.0f}-s means)" if cfg.demand_smoothing_s > 0 else ""
    reason = f"arrival {rate:.0f} tok/s; peak of the last {cfg.demand_window_s:.0f} s{smoothing} {peak:.0f} tok/s"
    return Step("demand_window", DemandWindow(history, rate, peak), reason)


@dataclass(frozen=True)
class Trend:
    slope: float  # tokens/s per second, least squares over trend_window_s; 0 until half a window of history
    growth: float  # max(0, slope) * cold_start_s: demand added while a new instance starts


def demand_trend(snapshot: ClusterSnapshot, window: DemandWindow, config: ScalerConfig) -> Step[Trend]:
    """Growth of demand over one cold start, from the slope of the last ``trend_window_s``."""
    cfg = config.chiron
    points = tuple((t, v) for t, v in window.history if snapshot.now - t < cfg.trend_window_s)
    span = points[-1][0] - points[0][0]
    # A slope needs half a window of history (the first periods after start would read as huge growth).
    if span < cfg.trend_window_s / 2:
        reason = f"no trend yet: {span:.0f} s of history < {cfg.trend_window_s / 2:.0f} s (half the trend window)"
        return Step("demand_trend", Trend(0.0, 0.0), reason)
    slope = slope_per_s(points)
    growth = max(0.0, slope) * cfg.cold_start_s
    reason = (
        f"slope {slope:+.2f} tok/s per s over {span:.0f} s; growth {growth:.0f} tok/s "
        f"over a {cfg.cold_start_s:.0f}-s cold start"
    )
    return Step("demand_trend", Trend(slope, growth), reason)


@dataclass(frozen=True)
class Requirement:
    demand: float  # planned interactive tokens/s: window peak + growth
    instances: int  # serving instances that carry it at the target utilization, at least 1
    history: tuple[tuple[float, int], ...]  # (time, instances) of the last scale_in_stabilization_s; now last


def required_instances(
    snapshot: ClusterSnapshot,
    state: ChironState,
    window: DemandWindow,
    trend: Trend,
    capacity: Capacity,
    config: ScalerConfig,
) -> Step[Requirement]:
    """ceil(demand / (capacity x target utilization)), at least 1, with demand = window peak + growth."""
    cfg = config.chiron
    now = snapshot.now
    demand = window.peak + trend.growth
    required = max(1, math.ceil(demand / (capacity.used * cfg.target_utilization)))
    history = tuple((t, r) for t, r in state.required if now - t < cfg.scale_in_stabilization_s) + ((now, required),)
    reason = (
        f"demand {demand:.0f} tok/s (window peak {window.peak:.0f} + growth {trend.growth:.0f}) needs {required} "
        f"instances at {capacity.used:.0f} tok/s x {cfg.target_utilization:.2f}"
    )
    return Step("required_instances", Requirement(demand, required, history), reason)


def queue_safety_net(
    snapshot: ClusterSnapshot,
    state: ChironState,
    requirement: Requirement,
    config: ScalerConfig,
    capacity: Capacity | None = None,
) -> Step[int | None]:
    """Serving instances for the backlog when the interactive queue waited past a share of TTFT, else None.

    A queue that old means demand or capacity was underestimated; fires at most once per cooldown.
    The backlog gets the instances that drain it within one cold start (queued requests x tokens per
    request / (capacity x cold start)), at least one: instances added now only serve after a cold start,
    and sizing them for the backlog at once (queued / admission limit) added tens of instances for a
    25-s queue on the ServeGen day, which then idled through the scale-in stabilization.
    """
    cfg = config.chiron
    now = snapshot.now
    lane = snapshot.interactive
    queued = lane.queued if lane else 0
    wait = lane.oldest_wait_s if lane else 0.0
    threshold = f"{cfg.queue_wait_fraction_of_ttft:.2f} x TTFT"
    if not wait > cfg.queue_wait_fraction_of_ttft * config.slo.ttft_s:
        return Step("queue_safety_net", None, f"interactive queue waited {wait:.1f} s <= {threshold}: not needed")
    last = state.last_queue_scale_out
    if last is not None and now - last < cfg.queue_scale_out_cooldown_s:
        reason = (
            f"interactive queue waited {wait:.1f} s > {threshold}, but the safety net fired {now - last:.0f} s ago "
            f"(cooldown {cfg.queue_scale_out_cooldown_s:.0f} s)"
        )
        return Step("queue_safety_net", None, reason)
    per_instance = capacity.used if capacity is not None else cfg.interactive_capacity_tokens_per_s_prior
    tokens_per_request = lane.arrival_tokens_per_s / lane.arrival_rate_per_s if lane and lane.arrival_rate_per_s > 0 else 0.0
    if tokens_per_request > 0:
        backlog = queued * tokens_per_request
        extra = max(1, math.ceil(backlog / (per_instance * max(cfg.cold_start_s, cfg.period_s))))
    else:  # no arrival measurement: one admission limit's worth of backlog per instance
        serving = snapshot.workers_in("interactive", "mixed")
        mean_limit = sum(w.admission_limit for w in serving) / max(1, len(serving))
        extra = max(1, math.ceil(queued / max(mean_limit, 1.0)))
    target = max(requirement.instances, serving_provisioned(snapshot) + extra)
    return Step("queue_safety_net", target, f"interactive queue waited {wait:.1f} s > {threshold}: scale out")


def scale_out_target(snapshot: ClusterSnapshot, required: Step[Requirement], config: ScalerConfig) -> Step[int | None]:
    """The requirement, in one step, when it exceeds the serving instances provisioned; else None."""
    provisioned = serving_provisioned(snapshot)
    if required.value.instances > provisioned:
        return Step("scale_out_target", required.value.instances, f"{required.reason}: scale out")
    reason = f"{required.value.instances} required <= {provisioned} provisioned: no scale-out"
    return Step("scale_out_target", None, reason)


def scale_in_target(
    snapshot: ClusterSnapshot, state: ChironState, requirement: Requirement, config: ScalerConfig
) -> Step[int | None]:
    """The highest requirement of the last ``scale_in_stabilization_s`` when it is below the serving instances
    provisioned, the history covers the window, the last scale-in is a window ago, no serving instance is still
    starting and no request waits; else None.

    An instance still starting has not served yet: the requirement that launched it has not been tried, and
    removing it throws away the cold start already paid (the live bench scaled in a worker that the queue had
    asked for while it was still loading its engine, with the queue still growing)."""
    cfg = config.chiron
    now = snapshot.now
    window = cfg.scale_in_stabilization_s
    provisioned = serving_provisioned(snapshot)
    starting = snapshot.pool("interactive").starting + snapshot.pool("mixed").starting
    queued = snapshot.interactive.queued if snapshot.interactive else 0
    highest = max(r for _, r in requirement.history)
    covered = now - requirement.history[0][0]
    last = state.last_scale_in
    if highest >= provisioned:
        why = f"requirement reached {highest} in the last {window:.0f} s (>= {provisioned} provisioned)"
    elif covered < window - cfg.period_s:
        why = f"requirement known for {covered:.0f} s only (< {window - cfg.period_s:.0f} s)"
    elif last is not None and now - last < window:
        why = f"last scale-in {now - last:.0f} s ago (< {window:.0f} s)"
    elif starting:
        why = f"{starting} serving instances still starting"
    elif queued != 0:
        why = f"{queued} interactive requests queued"
    else:
        reason = f"requirement stayed <= {highest} for {window:.0f} s (< {provisioned} provisioned): scale in"
        return Step("scale_in_target", highest, reason)
    return Step("scale_in_target", None, f"no scale-in: {why}")


# ---------------------------------------------------------------------------------------------------
# Batch pool: measure_batch_throughput -> measure_lent_throughput -> batch_need -> batch_surplus ->
# batch_target.


def measure_batch_throughput(snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig) -> Step[float]:
    """Per-instance batch tokens/s: measured on batch workers running at their limit, else remembered, else the prior."""
    saturated = [
        w.batch_tokens_per_s
        for w in snapshot.workers_in("batch")
        if w.running_batch >= w.admission_limit and w.batch_tokens_per_s > 0
    ]
    if saturated:
        value = sum(saturated) / len(saturated)
        source = f"mean of {len(saturated)} batch workers at their limit"
    elif state.batch_tokens_per_s:
        value, source = state.batch_tokens_per_s, "measured earlier, no batch worker at its limit now"
    else:
        value, source = config.chiron.batch_tokens_per_s_prior, "the prior, not measured yet"
    return Step("measure_batch_throughput", value, f"batch {value:.0f} tok/s per instance ({source})")


@dataclass(frozen=True)
class Lent:
    per_worker: float | None  # measured batch tokens/s one mixed worker lends (EWMA, kept in the state)
    tokens_per_s: float  # what the mixed workers there now lend to the batch lane


def measure_lent_throughput(
    snapshot: ClusterSnapshot, state: ChironState, per_instance: float, config: ScalerConfig
) -> Step[Lent]:
    """Batch tokens/s the mixed pool lends: measured while the batch lane is backlogged (then mixed workers
    lend all they can), else the spare share of each mixed worker at the batch rate."""
    cfg = config.chiron
    mixed = snapshot.workers_in("mixed")
    lane = snapshot.batch
    per_worker = state.lent_tokens_per_s
    if lane is not None and lane.queued > 0 and mixed:
        now_per_worker = sum(w.batch_tokens_per_s for w in mixed) / len(mixed)
        a = cfg.lent_ewma_alpha
        per_worker = now_per_worker if per_worker is None else a * now_per_worker + (1 - a) * per_worker
        source = f"EWMA (alpha {a:.2f}) per mixed worker, {now_per_worker:.0f} this period (batch lane backlogged)"
    elif per_worker is not None:
        source = "per mixed worker measured earlier"
    if per_worker is None:
        spare = sum(max(0.0, 1.0 - w.utilization(config.slo.itl_s)) for w in mixed)
        lent = spare * per_instance * cfg.mixed_lend_efficiency
        source = (
            f"not measured yet: {spare:.2f} spare workers x {per_instance:.0f} tok/s x {cfg.mixed_lend_efficiency:.2f}"
        )
        reason = f"mixed pool lends {lent:.0f} tok/s ({source})"
    else:
        lent = per_worker * len(mixed)
        reason = f"mixed pool lends {lent:.0f} tok/s: {per_worker:.0f} x {len(mixed)} mixed workers ({source})"
    return Step("measure_lent_throughput", Lent(per_worker, lent), reason)


def batch_need(
    snapshot: ClusterSnapshot, per_instance_tps: float, mixed_spare_tps: float, config: ScalerConfig
) -> Step[BatchNeed]:
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
            reason = "deadline at risk but too close for a cold start: hold"
            return Step("batch_need", BatchNeed(pool.provisioned, True, inputs), reason)
        group, margin_work, horizon = worst
        reason = (
            f"deadline at risk: {margin_work:.0f} tokens (with margin) due in {group.deadline - snapshot.now:.0f} s "
            f"exceed capacity within {horizon:.0f} s"
        )
        return Step("batch_need", BatchNeed(needed_new, True, inputs), reason)
    return Step("batch_need", BatchNeed(needed_now, False, inputs), f"deadlines met with {needed_now} batch instances")


def batch_surplus(snapshot: ClusterSnapshot, state: ChironState, need: BatchNeed, config: ScalerConfig) -> Step[Window]:
    """Since when the batch pool has had more instances than the deadlines need (None while it has not)."""
    provisioned = snapshot.pool("batch").provisioned
    surplus = not need.at_risk and need.instances < provisioned
    window = state.batch_surplus.update(surplus, snapshot.now)
    if window.since is None:
        reason = f"no surplus: {need.instances} needed{' (at risk)' if need.at_risk else ''}, {provisioned} provisioned"
    else:
        reason = f"surplus for {snapshot.now - window.since:.0f} s: {need.instances} needed < {provisioned} provisioned"
    return Step("batch_surplus", window, reason)


def batch_target(
    snapshot: ClusterSnapshot, need: Step[BatchNeed], surplus: Window, config: ScalerConfig
) -> Step[int | None]:
    """Grow to the need when a deadline is at risk; shrink to it once a surplus lasted
    ``batch_scale_in_stabilization_s``; else None (hold)."""
    provisioned = snapshot.pool("batch").provisioned
    if need.value.at_risk and need.value.instances > provisioned:
        return Step("batch_target", need.value.instances, need.reason)
    if surplus.lasted(snapshot.now, config.chiron.batch_scale_in_stabilization_s):
        return Step("batch_target", need.value.instances, f"{need.reason}: scale in surplus")
    return Step("batch_target", None, need.reason)


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
        pool = config.chiron.serving_pool
        capacity = measure_capacity(snapshot, state, config)
        window = demand_window(snapshot, state, config)
        trend = demand_trend(snapshot, window.value, config)
        required = required_instances(snapshot, state, window.value, trend.value, capacity.value, config)
        state = replace(
            state,
            demand=window.value.history,
            required=required.value.history,
            capacity_tokens_per_s=capacity.value.measured,
        )
        steps = [capacity, window, trend, required]
        serving_workers = snapshot.workers_in("interactive", "mixed")
        provisioned = serving_provisioned(snapshot)
        lane = snapshot.interactive
        inputs = {
            "arrival_tokens_per_s": window.value.arrival,
            "window_peak_tokens_per_s": window.value.peak,
            "trend_tokens_per_s2": trend.value.slope,
            "demand_tokens_per_s": required.value.demand,
            "capacity_tokens_per_s": capacity.value.used,
            "capacity_measured": capacity.value.measured is not None,
            "required": required.value.instances,
            "ready": len(serving_workers),
            "provisioned": provisioned,
            "queued": lane.queued if lane else 0,
            "oldest_wait_s": lane.oldest_wait_s if lane else 0.0,
        }
        if not serving_workers and provisioned > 0:
            return hold(snapshot, pool, "no ready serving worker yet: hold", explained(inputs, steps)), state
        others = provisioned - snapshot.pool(pool).provisioned  # serving instances in the pool chiron does not scale

        safety_net = queue_safety_net(snapshot, state, required.value, config, capacity.value)
        steps.append(safety_net)
        if safety_net.value is not None:
            # The backlog's instances enter the requirement history like demand's, so the scale-in window holds
            # them: otherwise a moment with an empty lane (the worker has just taken a batch) undoes the scale-out.
            history = required.value.history[:-1] + ((snapshot.now, safety_net.value),)  # >= the requirement
            state = replace(state, last_queue_scale_out=snapshot.now, required=history)
            return self._to(snapshot, pool, safety_net, others, inputs, steps, config), state
        scale_out = scale_out_target(snapshot, required, config)
        steps.append(scale_out)
        if scale_out.value is not None:
            return self._to(snapshot, pool, scale_out, others, inputs, steps, config), state
        scale_in = scale_in_target(snapshot, state, required.value, config)
        steps.append(scale_in)
        if scale_in.value is not None:
            state = replace(state, last_scale_in=snapshot.now)
            return self._to(snapshot, pool, scale_in, others, inputs, steps, config), state
        reason = f"{required.value.instances} required, {provisioned} provisioned: hold"
        return hold(snapshot, pool, reason, explained(inputs, steps)), state

    @staticmethod
    def _to(snapshot, pool: str, verdict: Step[int], others: int, inputs: dict, steps: list[Step], config):
        """The serving pool's decision from a step's total serving target (less the pool chiron does not scale)."""
        return decision(snapshot, pool, verdict.value - others, verdict.reason, explained(inputs, steps), config)

    # -------------------------------------------------------------------- batch
    def _batch(self, snapshot: ClusterSnapshot, state: ChironState, config: ScalerConfig):
        per_instance = measure_batch_throughput(snapshot, state, config)
        lent = measure_lent_throughput(snapshot, state, per_instance.value, config)
        need = batch_need(snapshot, per_instance.value, lent.value.tokens_per_s, config)
        surplus = batch_surplus(snapshot, state, need.value, config)
        target = batch_target(snapshot, need, surplus.value, config)
        state = replace(
            state,
            batch_tokens_per_s=per_instance.value,
            lent_tokens_per_s=lent.value.per_worker,
            batch_surplus=surplus.value,
        )
        inputs = explained(need.value.inputs, [per_instance, lent, need, surplus, target])
        if target.value is None:
            return hold(snapshot, "batch", target.reason, inputs), state
        if target.value < snapshot.pool("batch").provisioned:
            state = replace(state, batch_surplus=Window())  # a new window before the next scale-in
        return decision(snapshot, "batch", target.value, target.reason, inputs, config), state
