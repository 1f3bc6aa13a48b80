"""The live scaler's pure half: snapshots built from Redis data, and the hold on stale observations."""

from __future__ import annotations

from scaler.config import ScalerConfig
from scaler.observe import RawObservation, build_snapshot, worker_observation
from scaler.policies import get_policy
from scaler.state import PoolObservation

NOW = 1_800_000_000.0


def raw(read_at=NOW, heartbeat_age=1.0, arrivals=None, queued=0, oldest=None, buckets=()):
    beat = {"pool": "mixed", "lanes": "interactive,batch", "admission_limit": "16", "inflight": "3",
            "inflight_interactive": "2", "inflight_batch": "1", "itl_s": "0.02", "tokens_per_s": "900",
            "updated_at": str(read_at - heartbeat_age)}
    return RawObservation(read_at=read_at, heartbeats={"w1": beat}, lane_depths={"interactive": queued, "batch": 0},
                          oldest_enqueued_at={"interactive": oldest, "batch": None}, arrivals=arrivals or {},
                          deadline_buckets=list(buckets),
                          pools={"mixed": PoolObservation(pool="mixed", ready=1), "interactive": PoolObservation(pool="interactive"),
                                 "batch": PoolObservation(pool="batch")})


def test_worker_fields_map_to_observation():
    observation = worker_observation("w1", raw().heartbeats["w1"])
    assert (observation.running_interactive, observation.running_batch, observation.batch_limit) == (2, 1, 16)
    assert observation.itl_ewma_s == 0.02


def test_rates_come_from_counter_deltas():
    previous = raw(read_at=NOW - 10, arrivals={"requests:interactive": 100, "tokens:interactive": 10_000})
    current = raw(arrivals={"requests:interactive": 150, "tokens:interactive": 30_000}, queued=4, oldest=NOW - 3)
    snapshot = build_snapshot(current, previous, max_heartbeat_age_s=15, token_variance_per_request=1.0)
    assert snapshot.interactive.arrival_rate_per_s == 5.0
    assert snapshot.interactive.arrival_tokens_per_s == 2000.0
    assert snapshot.interactive.queued == 4 and snapshot.interactive.oldest_wait_s == 3.0
    assert snapshot.complete


def test_first_observation_and_stale_heartbeats_are_incomplete():
    assert not build_snapshot(raw(), None, max_heartbeat_age_s=15, token_variance_per_request=1.0).complete
    stale = build_snapshot(raw(heartbeat_age=60), raw(read_at=NOW - 5), max_heartbeat_age_s=15,
                           token_variance_per_request=1.0)
    assert not stale.complete


def test_stale_snapshot_makes_chiron_hold_not_scale_to_zero():
    snapshot = build_snapshot(raw(heartbeat_age=60), raw(read_at=NOW - 5), max_heartbeat_age_s=15,
                              token_variance_per_request=1.0)
    policy = get_policy("chiron")
    decisions, _ = policy.decide(snapshot, policy.initial_state(), ScalerConfig())
    assert decisions and all(not d.is_change for d in decisions)


def test_deadline_buckets_become_groups():
    snapshot = build_snapshot(raw(buckets=[(NOW + 600, 10, 4000.0)]), raw(read_at=NOW - 5), max_heartbeat_age_s=15,
                              token_variance_per_request=100.0)
    [group] = snapshot.batch.deadline_groups
    assert (group.deadline, group.requests, group.predicted_tokens, group.predicted_variance) == (NOW + 600, 10, 4000.0, 1000.0)
