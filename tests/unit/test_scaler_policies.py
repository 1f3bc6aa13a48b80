from dataclasses import replace

import pytest

from core.scaler_config import ScalerConfig
from scaler.policies import POLICY_NAMES, get_policy
from scaler.policies.base import Step, Window
from scaler.policies.chiron import (
    BatchNeed,
    Capacity,
    ChironState,
    DemandWindow,
    Requirement,
    Trend,
    batch_surplus,
    batch_target,
    demand_trend,
    demand_window,
    measure_batch_throughput,
    measure_capacity,
    measure_lent_throughput,
    queue_safety_net,
    required_instances,
    scale_in_target,
    scale_out_target,
)
from scaler.state import ClusterSnapshot, DeadlineGroup, LaneObservation, PoolObservation, WorkerObservation


def workers(pool, n, running=10, limit=100, itl=0.03, batch=0):
    return tuple(
        WorkerObservation(f"{pool}-{i}", pool, True, running, batch, limit, itl) for i in range(n)
    )


def snap(now=1000.0, mixed=4, batch_pool=0, ws=None, queued=0, wait=0.0, groups=(), age=0.0, complete=True):
    return ClusterSnapshot(
        now=now,
        observed_at=now - age,
        complete=complete,
        pools={
            "mixed": PoolObservation(pool="mixed", ready=mixed),
            "batch": PoolObservation(pool="batch", ready=batch_pool),
            "interactive": PoolObservation(pool="interactive"),
        },
        workers=ws if ws is not None else workers("mixed", mixed),
        interactive=LaneObservation("interactive", queued=queued, oldest_wait_s=wait),
        batch=LaneObservation("batch", deadline_groups=tuple(groups)),
    )


def by_pool(decisions):
    return {d.pool: d for d in decisions}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_stale_metrics_hold(name):
    policy, cfg = get_policy(name), ScalerConfig()
    decisions, _ = policy.decide(snap(age=60.0, ws=workers("mixed", 4, itl=0.5)), policy.initial_state(), cfg)
    assert decisions and all(not d.is_change for d in decisions)
    assert all("stale" in d.reason for d in decisions)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_incomplete_or_missing_worker_metrics_hold(name):
    policy, cfg = get_policy(name), ScalerConfig()
    for s in (snap(complete=False), snap(ws=())):  # ready instances that did not report must not read as idle
        decisions, _ = policy.decide(s, policy.initial_state(), cfg)
        assert all(not d.is_change for d in decisions)


@pytest.mark.parametrize("name", ["chiron", "utilization", "queue"])
def test_never_scales_serving_pool_to_zero(name):
    policy, cfg = get_policy(name), ScalerConfig()
    state = policy.initial_state()
    s = snap(mixed=1, ws=workers("mixed", 1, running=0, itl=None))
    for step in range(200):
        s = snap(now=1000.0 + 30 * step, mixed=1, ws=workers("mixed", 1, running=0, itl=None))
        decisions, state = policy.decide(s, state, cfg)
        assert by_pool(decisions)["mixed"].target >= 1


def demand_snap(now, tokens_per_s, mixed=4, queued=0, wait=0.0, ws=None, groups=()):
    s = snap(now=now, mixed=mixed, queued=queued, wait=wait, ws=ws, groups=groups)
    lane = LaneObservation("interactive", queued=queued, oldest_wait_s=wait, arrival_tokens_per_s=tokens_per_s)
    return ClusterSnapshot(s.now, s.observed_at, s.complete, s.pools, s.workers, lane, s.batch)


def test_chiron_scales_out_to_demand_in_one_step():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cap = cfg.chiron.interactive_capacity_tokens_per_s_prior * cfg.chiron.target_utilization
    decisions, _ = policy.decide(demand_snap(1000.0, 10 * cap - 1), policy.initial_state(), cfg)
    d = by_pool(decisions)["mixed"]
    assert d.action == "scale_out" and d.target == 10 and "demand" in d.reason
    assert d.inputs["required"] == 10


def test_chiron_projects_growth_over_cold_start():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cap = cfg.chiron.interactive_capacity_tokens_per_s_prior * cfg.chiron.target_utilization
    state, target = policy.initial_state(), None
    # Demand rising 1% of an instance per second: after the trend window, one cold start of growth is planned.
    for step in range(30):
        now = 1000.0 + 5 * step
        decisions, state = policy.decide(demand_snap(now, 3 * cap + 0.01 * cap * (now - 1000.0), mixed=20), state, cfg)
        target = by_pool(decisions)["mixed"]
    assert target.inputs["trend_tokens_per_s2"] == pytest.approx(0.01 * cap, rel=1e-6)
    assert target.inputs["demand_tokens_per_s"] == pytest.approx(
        target.inputs["window_peak_tokens_per_s"] + 0.01 * cap * cfg.chiron.cold_start_s, rel=1e-6
    )


def test_chiron_scales_out_when_queue_threatens_ttft():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    decisions, _ = policy.decide(snap(queued=200, wait=1.5), policy.initial_state(), cfg)
    assert by_pool(decisions)["mixed"].action == "scale_out"


def test_chiron_hysteresis_no_flapping():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cap = cfg.chiron.interactive_capacity_tokens_per_s_prior * cfg.chiron.target_utilization
    state = policy.initial_state()
    changes = []
    # Demand oscillating below the 4 provisioned instances, with short dips, changes nothing within a window.
    for step in range(60):
        tokens = [3.5 * cap, 2.0 * cap, 0.5 * cap][step % 3]
        decisions, state = policy.decide(demand_snap(1000.0 + 5 * step, tokens), state, cfg)
        changes += [d for d in decisions if d.is_change]
    assert changes == []


def test_chiron_scales_in_once_per_window_to_window_peak():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cap = cfg.chiron.interactive_capacity_tokens_per_s_prior * cfg.chiron.target_utilization
    state = policy.initial_state()
    window = cfg.chiron.scale_in_stabilization_s
    changes = []
    for step in range(int(1.5 * window / 5)):
        now = 1000.0 + 5 * step
        decisions, state = policy.decide(demand_snap(now, 2.5 * cap, mixed=8, ws=workers("mixed", 8)), state, cfg)
        changes += [(now, d) for d in decisions if d.is_change]
    assert len(changes) == 1  # one step, then a new window
    now, d = changes[0]
    assert now - 1000.0 >= window - cfg.chiron.period_s and d.target == 3 and d.action == "scale_in"


def test_chiron_no_scale_to_zero_without_demand():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    state = policy.initial_state()
    for step in range(400):
        decisions, state = policy.decide(demand_snap(1000.0 + 5 * step, 0.0, mixed=1, ws=workers("mixed", 1, running=0)), state, cfg)
        assert by_pool(decisions)["mixed"].target >= 1


def test_chiron_capacity_measured_only_on_latency_saturated_workers():
    from scaler.policies.chiron import capacity_sample

    cfg = ScalerConfig()
    hot = WorkerObservation("a", "mixed", True, 30, 0, 64, 0.095, interactive_tokens_per_s=7000.0)
    lending = WorkerObservation("b", "mixed", True, 30, 5, 64, 0.095, interactive_tokens_per_s=1000.0)
    cool = WorkerObservation("c", "mixed", True, 5, 0, 64, 0.03, interactive_tokens_per_s=500.0)
    assert capacity_sample(snap(ws=(hot, lending, cool)), cfg) == 7000.0
    assert capacity_sample(snap(ws=(lending, cool)), cfg) is None


def batch_group(now, due_in, requests, mean=100.0, var=2500.0):
    return DeadlineGroup(now + due_in, requests, requests * mean, requests * var)


def test_batch_pool_ignores_long_queue_with_ample_slack():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cfg.chiron.batch_tokens_per_s_prior = 1000.0
    # 1e7 tokens is a long queue, but the mixed pool's spare capacity finishes it well within 30 days.
    groups = [batch_group(1000.0, 30 * 86400.0, 100_000)]
    decisions, _ = policy.decide(snap(groups=groups), policy.initial_state(), cfg)
    d = by_pool(decisions)["batch"]
    assert not d.is_change and "met" in d.reason


def test_batch_pool_holds_when_mixed_lending_covers_deadline():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cfg.chiron.batch_tokens_per_s_prior = 1000.0
    # A burst whose 1 h deadline the measured lent throughput covers: spread it, start no instance.
    lending = tuple(WorkerObservation(f"m{i}", "mixed", True, 10, 20, 100, 0.03, batch_tokens_per_s=200.0) for i in range(4))
    s = snap(ws=lending, groups=[batch_group(1000.0, 3600.0, 40000, mean=28.0, var=3600.0)])
    s = ClusterSnapshot(s.now, s.observed_at, s.complete, s.pools, s.workers, s.interactive, LaneObservation("batch", queued=3000, deadline_groups=s.batch.deadline_groups))
    decisions, state = policy.decide(s, policy.initial_state(), cfg)
    d = by_pool(decisions)["batch"]
    assert not d.is_change and state.lent_tokens_per_s == 200.0
    # The same burst with a 10-minute deadline is at risk: the batch pool grows.
    s2 = ClusterSnapshot(s.now, s.observed_at, s.complete, s.pools, s.workers, s.interactive,
                         LaneObservation("batch", queued=3000, deadline_groups=(batch_group(1000.0, 600.0, 40000, mean=28.0, var=3600.0),)))
    decisions, _ = policy.decide(s2, policy.initial_state(), cfg)
    assert by_pool(decisions)["batch"].action == "scale_out"


def test_batch_pool_grows_when_deadline_at_risk():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cfg.chiron.batch_tokens_per_s_prior = 1000.0
    groups = [batch_group(1000.0, 1800.0, 40_000)]  # 4e6 tokens in 24 min: mixed spare (1400 tok/s) is short
    decisions, _ = policy.decide(snap(groups=groups), policy.initial_state(), cfg)
    d = by_pool(decisions)["batch"]
    assert d.action == "scale_out" and "deadline at risk" in d.reason
    assert d.inputs["margin_tokens"] > 0


def test_batch_margin_grows_with_sqrt_n():
    from scaler.policies.chiron import batch_need

    cfg = ScalerConfig()
    small = batch_need(snap(groups=[batch_group(1000.0, 3600, 100)]), 1000.0, 0.0, cfg).value.inputs["margin_tokens"]
    large = batch_need(snap(groups=[batch_group(1000.0, 3600, 10_000)]), 1000.0, 0.0, cfg).value.inputs["margin_tokens"]
    assert large == pytest.approx(small * 10)


def test_utilization_baseline_hpa_formula():
    policy, cfg = get_policy("utilization"), ScalerConfig()
    cfg.utilization.target_utilization = 0.5
    decisions, _ = policy.decide(snap(ws=workers("mixed", 4, itl=0.08)), policy.initial_state(), cfg)
    assert by_pool(decisions)["mixed"].target == 7  # ceil(4 * 0.8 / 0.5)


def test_queue_baseline_keda_formula():
    policy, cfg = get_policy("queue"), ScalerConfig()
    cfg.queue.interactive_target_per_replica = 10
    decisions, _ = policy.decide(snap(queued=30, ws=workers("mixed", 4, running=10)), policy.initial_state(), cfg)
    assert by_pool(decisions)["mixed"].target == 7  # ceil((30 + 40) / 10)


def test_static_sets_configured_counts():
    policy, cfg = get_policy("static"), ScalerConfig()
    cfg.static.counts = {"mixed": 6, "batch": 0, "interactive": 0}
    decisions, _ = policy.decide(snap(), None, cfg)
    assert by_pool(decisions)["mixed"].target == 6


def test_every_decision_has_reason_and_inputs():
    for name in POLICY_NAMES:
        policy = get_policy(name)
        decisions, _ = policy.decide(snap(), policy.initial_state(), ScalerConfig())
        assert all(d.reason for d in decisions)


# --- Chiron's decision chain: each step is pure; its value and a reason that names its inputs -------------


def with_batch_lane(s, queued=0, groups=()):
    return ClusterSnapshot(s.now, s.observed_at, s.complete, s.pools, s.workers, s.interactive,
                           LaneObservation("batch", queued=queued, deadline_groups=tuple(groups)))


def test_measure_capacity_prior_when_online_measurement_off():
    cfg = ScalerConfig()
    cfg.chiron.interactive_capacity_tokens_per_s_prior = 9000.0
    hot = WorkerObservation("a", "mixed", True, 30, 0, 64, 0.095, interactive_tokens_per_s=7000.0)
    step = measure_capacity(snap(ws=(hot,)), ChironState(), cfg)
    assert step.name == "measure_capacity" and step.value == Capacity(None, 9000.0)
    assert "9000 tok/s" in step.reason and "prior" in step.reason and "off" in step.reason


def test_measure_capacity_smooths_saturated_samples():
    cfg = ScalerConfig()
    cfg.chiron.measure_capacity_online, cfg.chiron.capacity_ewma_alpha = True, 0.2
    hot = WorkerObservation("a", "mixed", True, 30, 0, 64, 0.095, interactive_tokens_per_s=7000.0)
    step = measure_capacity(snap(ws=(hot,)), ChironState(capacity_tokens_per_s=5000.0), cfg)
    assert step.value == Capacity(pytest.approx(5400.0), pytest.approx(5400.0))
    assert "5400 tok/s" in step.reason and "7000 this period" in step.reason and "0.20" in step.reason
    cool = WorkerObservation("c", "mixed", True, 5, 0, 64, 0.03, interactive_tokens_per_s=500.0)
    kept = measure_capacity(snap(ws=(cool,)), ChironState(capacity_tokens_per_s=5000.0), cfg)
    assert kept.value == Capacity(5000.0, 5000.0) and "measured earlier" in kept.reason


def test_demand_window_keeps_history_and_takes_the_peak():
    cfg = ScalerConfig()  # demand window 30 s, trend window 120 s
    old = ((800.0, 1e6), (900.0, 500.0), (980.0, 4000.0), (995.0, 2000.0))
    step = demand_window(demand_snap(1000.0, 1500.0), ChironState(demand=old), cfg)
    assert step.value.history == ((900.0, 500.0), (980.0, 4000.0), (995.0, 2000.0), (1000.0, 1500.0))
    assert step.value.arrival == 1500.0 and step.value.peak == 4000.0
    assert "1500 tok/s" in step.reason and "4000 tok/s" in step.reason and "30 s" in step.reason


def test_demand_smoothing_plans_on_mean_rates_not_single_period_bursts():
    cfg = ScalerConfig()
    cfg.chiron.demand_smoothing_s = 20.0  # means of the periods in (t - 20, t]
    old = tuple((975.0 + 5 * k, 1000.0) for k in range(4)) + ((995.0, 9000.0),)  # one 5-s burst
    step = demand_window(demand_snap(1000.0, 1000.0), ChironState(demand=old), cfg)
    # The burst at 995 s counts as the mean of 980-995 (1000, 1000, 1000, 9000), not as 9000.
    assert step.value.peak == pytest.approx(3000.0)
    assert "20-s means" in step.reason
    cfg.chiron.demand_smoothing_s = 0.0
    assert demand_window(demand_snap(1000.0, 1000.0), ChironState(demand=old), cfg).value.peak == 9000.0


def test_demand_trend_needs_half_a_window_of_history():
    cfg = ScalerConfig()
    young = DemandWindow(((950.0, 100.0), (975.0, 200.0), (1000.0, 300.0)), 300.0, 300.0)
    step = demand_trend(snap(now=1000.0), young, cfg)
    assert step.value == Trend(0.0, 0.0) and "50 s of history" in step.reason and "60 s" in step.reason


def test_demand_trend_projects_growth_over_a_cold_start():
    cfg = ScalerConfig()
    rising = tuple((1000.0 - 10 * k, 1000.0 - 20 * k) for k in range(10, -1, -1))  # +2 tok/s per s over 100 s
    step = demand_trend(snap(now=1000.0), DemandWindow(rising, 1000.0, 1000.0), cfg)
    assert step.value.slope == pytest.approx(2.0) and step.value.growth == pytest.approx(2.0 * cfg.chiron.cold_start_s)
    assert "+2.00" in step.reason and "100 s" in step.reason and f"{2.0 * cfg.chiron.cold_start_s:.0f} tok/s" in step.reason
    falling = tuple((t, -v) for t, v in rising)
    assert demand_trend(snap(now=1000.0), DemandWindow(falling, 0.0, 0.0), cfg).value.growth == 0.0


def test_required_instances_from_demand_and_capacity():
    cfg = ScalerConfig()
    cfg.chiron.target_utilization = 0.8
    state = ChironState(required=((1000.0 - cfg.chiron.scale_in_stabilization_s, 9), (900.0, 5)))
    step = required_instances(snap(now=1000.0), state, DemandWindow((), 0.0, 7000.0), Trend(1.0, 1000.0),
                              Capacity(None, 1000.0), cfg)
    assert step.value == Requirement(8000.0, 10, ((900.0, 5), (1000.0, 10)))  # ceil(8000 / 800)
    for part in ("demand 8000 tok/s", "window peak 7000", "growth 1000", "10 instances", "1000 tok/s x 0.80"):
        assert part in step.reason
    idle = required_instances(snap(), ChironState(), DemandWindow((), 0.0, 0.0), Trend(0.0, 0.0), Capacity(None, 1000.0), cfg)
    assert idle.value.instances == 1  # never plans for zero


def test_queue_safety_net_adds_instances_for_the_backlog():
    cfg = ScalerConfig()  # fires past 0.5 x 2 s TTFT
    requirement = Requirement(0.0, 2, ())
    calm = queue_safety_net(snap(queued=100, wait=0.8), ChironState(), requirement, cfg)
    assert calm.value is None and "0.8 s" in calm.reason and "0.50 x TTFT" in calm.reason
    # 4 mixed workers with admission limit 100: 250 queued requests need 3 more instances.
    fired = queue_safety_net(snap(queued=250, wait=1.5), ChironState(), requirement, cfg)
    assert fired.value == 7 and "1.5 s" in fired.reason and "scale out" in fired.reason
    cooling = queue_safety_net(snap(queued=250, wait=1.5), ChironState(last_queue_scale_out=970.0), requirement, cfg)
    assert cooling.value is None and "30 s ago" in cooling.reason and "cooldown" in cooling.reason


def test_queue_safety_net_sizes_the_backlog_to_drain_within_one_cold_start():
    cfg = ScalerConfig()
    cfg.chiron.cold_start_s = 60.0
    lane = LaneObservation("interactive", queued=1300, oldest_wait_s=25.0, arrival_rate_per_s=50.0,
                           arrival_tokens_per_s=50.0 * 1400)
    s = replace(snap(mixed=17), interactive=lane)
    # 1300 x 1400 tokens over 60 s at 10,000 tok/s per instance: 3.03 -> 4 more, not 1300 / 100 = 13.
    fired = queue_safety_net(s, ChironState(), Requirement(0.0, 12, ()), cfg, Capacity(None, 10_000.0))
    assert fired.value == 17 + 4
    small = replace(s, interactive=replace(lane, queued=10))
    assert queue_safety_net(small, ChironState(), Requirement(0.0, 12, ()), cfg, Capacity(None, 10_000.0)).value == 18


def test_scale_out_target_goes_to_the_requirement_in_one_step():
    cfg = ScalerConfig()
    required = required_instances(snap(), ChironState(), DemandWindow((), 0.0, 8000.0), Trend(0.0, 0.0),
                                  Capacity(None, 1000.0), cfg)
    step = scale_out_target(snap(mixed=4), required, cfg)
    assert step.value == 10 and step.reason == f"{required.reason}: scale out"
    held = scale_out_target(snap(mixed=12, ws=workers("mixed", 12)), required, cfg)
    assert held.value is None and "10 required <= 12 provisioned" in held.reason


def test_scale_in_target_waits_for_a_full_quiet_window():
    cfg = ScalerConfig()
    window = cfg.chiron.scale_in_stabilization_s
    now = 1000.0 + window
    full = Requirement(0.0, 2, ((1000.0 + cfg.chiron.period_s, 3), (now, 2)))
    s = snap(now=now, mixed=8, ws=workers("mixed", 8))
    step = scale_in_target(s, ChironState(), full, cfg)
    assert step.value == 3 and "<= 3" in step.reason and "8 provisioned" in step.reason and "scale in" in step.reason
    busy = Requirement(0.0, 2, ((1000.0 + cfg.chiron.period_s, 8), (now, 2)))
    assert "reached 8" in scale_in_target(s, ChironState(), busy, cfg).reason
    young = Requirement(0.0, 2, ((now - 100.0, 3), (now, 2)))
    assert "100 s only" in scale_in_target(s, ChironState(), young, cfg).reason
    recent = scale_in_target(s, ChironState(last_scale_in=now - 60.0), full, cfg)
    assert recent.value is None and "60 s ago" in recent.reason
    queued = scale_in_target(snap(now=now, mixed=8, ws=workers("mixed", 8), queued=4), ChironState(), full, cfg)
    assert queued.value is None and "4 interactive requests queued" in queued.reason
    starting = replace(s, pools={**s.pools, "mixed": PoolObservation(pool="mixed", ready=7, starting=1)})
    held = scale_in_target(starting, ChironState(), full, cfg)
    assert held.value is None and "1 serving instances still starting" in held.reason


def test_a_queue_scale_out_is_held_through_the_scale_in_window():
    # The safety net adds an instance; the lane then reads empty while the demand still asks for 1. The
    # scale-in window must hold the safety net's target, not fall back to the demand's requirement.
    cfg = ScalerConfig()
    cfg.chiron.scale_in_stabilization_s = 20.0
    cfg.chiron.period_s = 2.0
    cfg.chiron.interactive_capacity_tokens_per_s_prior = 1e6  # demand alone needs one instance
    policy, state = get_policy("chiron"), ChironState()
    now = 1000.0
    for _ in range(15):  # a quiet history covering the window: 1 required
        now += 2.0
        _, state = policy.decide(snap(now=now, mixed=1, ws=workers("mixed", 1)), state, cfg)
    now += 2.0
    decisions, state = policy.decide(snap(now=now, mixed=1, ws=workers("mixed", 1), queued=50, wait=5.0), state, cfg)
    assert by_pool(decisions)["mixed"].target == 2 and "queue waited" in by_pool(decisions)["mixed"].reason
    targets = []
    for _ in range(20):  # 40 s: the new worker is up (ready), the lane is empty, demand still needs 1
        now += 2.0
        decisions, state = policy.decide(snap(now=now, mixed=2, ws=workers("mixed", 2)), state, cfg)
        targets.append(by_pool(decisions)["mixed"].target)
    first_in = targets.index(1)
    assert first_in >= 8, targets  # held for the 20-s window after the scale-out, then scaled in


def test_measure_batch_throughput_on_workers_at_their_limit():
    cfg = ScalerConfig()
    cfg.chiron.batch_tokens_per_s_prior = 2000.0
    at_limit = WorkerObservation("b0", "batch", True, 0, 64, 64, 0.05, batch_tokens_per_s=3000.0)
    below = WorkerObservation("b1", "batch", True, 0, 10, 64, 0.05, batch_tokens_per_s=500.0)
    s = snap(batch_pool=2, ws=workers("mixed", 4) + (at_limit, below))
    step = measure_batch_throughput(s, ChironState(), cfg)
    assert step.value == 3000.0 and "3000 tok/s" in step.reason and "1 batch workers" in step.reason
    assert measure_batch_throughput(snap(), ChironState(batch_tokens_per_s=2500.0), cfg).value == 2500.0
    prior = measure_batch_throughput(snap(), ChironState(), cfg)
    assert prior.value == 2000.0 and "prior" in prior.reason


def test_measure_lent_throughput_measured_while_backlogged_else_spare_share():
    cfg = ScalerConfig()
    cfg.chiron.lent_ewma_alpha, cfg.chiron.mixed_lend_efficiency = 0.5, 0.5
    lending = tuple(WorkerObservation(f"m{i}", "mixed", True, 10, 20, 100, 0.03, batch_tokens_per_s=200.0) for i in range(4))
    backlogged = with_batch_lane(snap(ws=lending), queued=300)
    step = measure_lent_throughput(backlogged, ChironState(lent_tokens_per_s=100.0), 1000.0, cfg)
    assert step.value.per_worker == 150.0 and step.value.tokens_per_s == 600.0
    assert "600 tok/s" in step.reason and "150 x 4" in step.reason and "200 this period" in step.reason
    # Not measured yet: each mixed worker lends its spare share (1 - utilization) at the batch rate x efficiency.
    spare = measure_lent_throughput(snap(ws=workers("mixed", 4, running=25, limit=100, itl=0.02)), ChironState(), 1000.0, cfg)
    assert spare.value.per_worker is None and spare.value.tokens_per_s == pytest.approx(4 * 0.75 * 1000.0 * 0.5)
    assert "3.00 spare workers" in spare.reason and "1000 tok/s" in spare.reason and "0.50" in spare.reason


def test_batch_surplus_and_target():
    cfg = ScalerConfig()
    cfg.chiron.batch_scale_in_stabilization_s = 120.0
    s = snap(now=1000.0, batch_pool=5, ws=workers("mixed", 4) + workers("batch", 5))
    met = BatchNeed(2, False, {})
    surplus = batch_surplus(s, ChironState(batch_surplus=Window(900.0)), met, cfg)
    assert surplus.value == Window(900.0) and "100 s" in surplus.reason and "2 needed < 5 provisioned" in surplus.reason
    assert batch_target(s, Step("batch_need", met, "deadlines met"), surplus.value, cfg).value is None  # not yet
    lasted = batch_target(s, Step("batch_need", met, "deadlines met"), Window(870.0), cfg)
    assert lasted.value == 2 and lasted.reason == "deadlines met: scale in surplus"
    risk = BatchNeed(8, True, {})
    assert batch_surplus(s, ChironState(batch_surplus=Window(900.0)), risk, cfg).value == Window(None)
    grow = batch_target(s, Step("batch_need", risk, "deadline at risk"), Window(None), cfg)
    assert grow.value == 8 and grow.reason == "deadline at risk"


def test_chiron_decision_explains_its_steps_in_order():
    policy, cfg = get_policy("chiron"), ScalerConfig()
    cap = cfg.chiron.interactive_capacity_tokens_per_s_prior * cfg.chiron.target_utilization
    decisions, _ = policy.decide(demand_snap(1000.0, 10 * cap - 1), policy.initial_state(), cfg)
    d = by_pool(decisions)["mixed"]
    steps = d.inputs["steps"]
    assert list(steps) == ["measure_capacity", "demand_window", "demand_trend", "required_instances",
                           "queue_safety_net", "scale_out_target"]  # the chain stops at the step that decides
    assert d.reason == steps["scale_out_target"]
    held = by_pool(policy.decide(demand_snap(1000.0, cap), policy.initial_state(), cfg)[0])["mixed"]
    assert list(held.inputs["steps"])[-1] == "scale_in_target" and not held.is_change
    batch = by_pool(decisions)["batch"]
    assert list(batch.inputs["steps"]) == ["measure_batch_throughput", "measure_lent_throughput", "batch_need",
                                           "batch_surplus", "batch_target"]
