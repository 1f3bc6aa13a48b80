import pytest

from scaler.config import ScalerConfig
from scaler.policies import POLICY_NAMES, get_policy
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
    small = batch_need(snap(groups=[batch_group(1000.0, 3600, 100)]), 1000.0, 0.0, cfg).inputs["margin_tokens"]
    large = batch_need(snap(groups=[batch_group(1000.0, 3600, 10_000)]), 1000.0, 0.0, cfg).inputs["margin_tokens"]
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
