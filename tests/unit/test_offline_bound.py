"""The offline lower bound: its pure pieces on hand-checkable workloads, the replaying policy, and one tiny run."""

import numpy as np
import pytest

from core.scaler_config import ScalerConfig
from scaler.policies import get_policy
from scaler.policies.offline_bound import OfflineBoundPolicy
from scaler.sim.cluster import ClusterSimulation, SimSettings
from scaler.sim.latency import InstanceProfile, _itl_at, engine, instance_profile
from scaler.sim.offline_bound import OfflineSchedule, batch_fill, keep_through_short_gaps, offline_schedule, serving_need
from scaler.sim.workload import Requests
from scaler.state import ClusterSnapshot, PoolObservation


def test_serving_need_is_the_ceiling_of_each_windows_load_over_capacity_at_least_one():
    arrival = np.array([1.0, 2.0, 3.0, 61.0, 130.0])
    tokens = np.array([600.0, 600.0, 600.0, 100.0, 2000.0])  # per 60-s window: 30, 1.67, 33.3 tok/s
    counts, load = serving_need(arrival, tokens, 180.0, 60.0, capacity_tokens_per_s=20.0)
    assert load.tolist() == pytest.approx([30.0, 100 / 60, 2000 / 60])
    assert counts.tolist() == [2, 1, 2]


def test_batch_fill_uses_spare_serving_time_first_then_levels_the_batch_pool():
    # 100 s of work in two 60-s windows, 30 s spare in the first: 70 s left -> one instance-window in
    # each window (the lower one first), not two in the first.
    counts, left = batch_fill(np.array([0.0]), np.array([120.0]), np.array([100.0]), np.array([30.0, 0.0]), 60.0, 4)
    assert counts.tolist() == [1, 1] and left.tolist() == [0.0]
    # EDF: the job due at 60 s takes window 0 (2 instances, 30 s left over), the other uses that and window 1.
    counts, left = batch_fill(np.array([0.0, 0.0]), np.array([120.0, 60.0]), np.array([100.0, 90.0]), np.zeros(2), 60.0, 4)
    assert counts.tolist() == [2, 2] and left.tolist() == [0.0, 0.0]
    # A job arriving mid-window only gets the rest of it; more than the pool limit is reported unplaced.
    counts, left = batch_fill(np.array([30.0]), np.array([60.0]), np.array([100.0]), np.zeros(1), 60.0, 2)
    assert counts.tolist() == [2] and left.tolist() == pytest.approx([40.0])


def test_instances_off_for_at_most_a_cold_start_stay_on():
    counts = np.array([3, 1, 3, 1, 1, 3])
    assert keep_through_short_gaps(counts, 1).tolist() == [3, 3, 3, 1, 1, 3]
    assert keep_through_short_gaps(counts, 2).tolist() == [3, 3, 3, 3, 3, 3]
    assert keep_through_short_gaps(np.array([0, 2, 0]), 1).tolist() == [0, 2, 0]  # the edges are not gaps


def _requests(arrival, ctx, gen, deadline=np.inf, job=-1):
    n = len(arrival)
    return Requests(np.asarray(arrival, float), np.full(n, ctx), np.full(n, gen), np.full(n, deadline, float), np.full(n, job))


def test_offline_schedule_on_a_tiny_workload():
    profile = InstanceProfile(interactive_rps=1.0, interactive_batch=10.0, batch_rps=2.0, mean_tokens=100.0)
    # Interactive: 150 requests of 100 tokens in the first minute (250 tok/s -> 3 instances at 100 tok/s),
    # 30 in the second (0.5 -> 1), 90 in the third (1.5 -> 2).
    arrival = np.concatenate([np.linspace(0, 59, 150), np.linspace(60, 119, 30), np.linspace(120, 179, 90)])
    inter = _requests(arrival, 60, 40)
    # Batch: one job of 120 requests at t=0 due at 180 s: 60 s of engine time at 2 req/s.
    batch = _requests(np.zeros(120), 10, 5, deadline=180.0, job=0)
    s = offline_schedule(inter, batch, 180.0, profile, profile, cold_start_s=0.0, window_s=60.0)
    assert s.counts["mixed"] == (3, 1, 2)
    # Spare serving time: 0.5 x 60 = 30 s in window 0, 0.5 x 60 in window 1, 0.5 x 60 in window 2 -> 60 s >= the job.
    assert s.counts["batch"] == (0, 0, 0)
    assert s.inputs["batch_work_instance_hours"] == pytest.approx(60 / 3600)
    assert s.inputs["instance_hours_scheduled"] == pytest.approx(6 * 60 / 3600)
    # With a one-window cold start, the dip in window 1 is kept: restarting would cost as much.
    s = offline_schedule(inter, batch, 180.0, profile, profile, cold_start_s=60.0, window_s=60.0)
    assert s.counts["mixed"] == (3, 2, 2)


def test_offline_schedule_at_a_lower_utilization_plans_more_instances_and_less_spare_time():
    profile = InstanceProfile(interactive_rps=1.0, interactive_batch=10.0, batch_rps=2.0, mean_tokens=100.0)
    arrival = np.concatenate([np.linspace(0, 59, 150), np.linspace(60, 119, 30), np.linspace(120, 179, 90)])
    inter = _requests(arrival, 60, 40)
    batch = _requests(np.zeros(120), 10, 5, deadline=180.0, job=0)
    # At 0.5 an instance carries 50 tok/s: 250 -> 5, 50 -> 1, 150 -> 3, each full, so the job needs batch instances.
    s = offline_schedule(inter, batch, 180.0, profile, profile, cold_start_s=0.0, window_s=60.0, utilization=0.5)
    assert s.counts["mixed"] == (5, 1, 3)
    assert sum(s.counts["batch"]) == 1
    assert s.inputs["utilization"] == 0.5 and s.inputs["planned_tokens_per_s_per_instance"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        offline_schedule(inter, batch, 180.0, profile, profile, cold_start_s=0.0, utilization=0.0)


def _snapshot(now, counts):
    pools = {p: PoolObservation(pool=p, ready=0, starting=c, draining=0) for p, c in counts.items()}  # no workers needed
    return ClusterSnapshot(now=now, observed_at=now, complete=True, pools=pools, workers=(), interactive=None, batch=None)


def test_offline_bound_policy_launches_one_cold_start_ahead_and_holds_without_a_schedule():
    cfg = ScalerConfig()
    cfg.chiron.cold_start_s = 60.0
    schedule = OfflineSchedule(60.0, {"mixed": (2, 2, 5, 1), "batch": (0, 3, 0, 0), "interactive": ()}, {})
    policy = get_policy("offline_bound", schedule=schedule)
    assert policy.initial_counts(cfg) == {"interactive": 0, "batch": 3, "mixed": 2}
    decisions, _ = policy.decide(_snapshot(70.0, {"interactive": 0, "batch": 3, "mixed": 2}), None, cfg)
    targets = {d.pool: d.target for d in decisions}
    assert targets == {"interactive": 0, "batch": 3, "mixed": 5}  # window 2 (t=120..180) needs 5: launch now
    decisions, _ = policy.decide(_snapshot(190.0, {"interactive": 0, "batch": 0, "mixed": 5}), None, cfg)
    assert {d.pool: d.target for d in decisions}["mixed"] == 1
    held, _ = OfflineBoundPolicy().decide(_snapshot(0.0, {"interactive": 0, "batch": 0, "mixed": 2}), None, cfg)
    assert all(not d.is_change for d in held)


def test_replaying_a_schedule_bills_what_it_scheduled():
    cfg = ScalerConfig()
    cfg.chiron.cold_start_s = 10.0
    schedule = OfflineSchedule(60.0, {"mixed": (2, 2, 1), "batch": (), "interactive": ()}, {})
    inter = _requests(np.linspace(0, 170, 100), 200, 20)
    empty = _requests([], 0, 0)
    sim = ClusterSimulation(OfflineBoundPolicy(schedule), cfg, engine("llama-3-8b", "h100-80gb", 1), inter, empty, 180.0,
                            SimSettings(cold_start_s=10.0))
    r = sim.run()
    assert r.policy == "offline_bound"
    assert np.all(r.interactive_ttft_s < 2.0)
    # Two instances until the last window, then one drains (it is idle, so it stops at once): 2 x 120 + 1 x 60 s.
    assert r.gpu_seconds == pytest.approx(2 * 120.0 + 60.0, abs=1.0)


def test_interactive_capacity_is_the_highest_rate_whose_mean_itl_meets_the_slo():
    eng = engine("llama-3-70b", "h100-80gb", 4)
    ctx, gen = np.full(10, 1000), np.full(10, 200)
    p = instance_profile(eng, ctx, gen, itl_slo_s=0.1, max_batch=256)
    prefill_s = float(eng.prefill_compute_s(1000))
    assert _itl_at(eng, p.interactive_rps, prefill_s, 1000.0, 200.0, 0.25)[0] <= 0.1 + 1e-9
    assert _itl_at(eng, p.interactive_rps * 1.01, prefill_s, 1000.0, 200.0, 0.25)[0] > 0.1
    assert p.interactive_tokens_per_s == pytest.approx(p.interactive_rps * 1200)
    looser = instance_profile(eng, ctx, gen, itl_slo_s=0.2, max_batch=256)
    assert looser.interactive_rps > p.interactive_rps  # a looser SLO carries more
    assert p.batch_rps > p.interactive_rps  # no latency target: the largest batch that fits
