"""The live scaler's pure half: snapshots built from Redis data, and the hold on stale observations."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from broker.heartbeat import WorkerHeartbeat, write_heartbeat
from core.scaler_config import ScalerConfig
from scaler.observe import RawObservation, build_snapshot, read_raw, worker_observation
from scaler.policies import get_policy
from scaler.state import PoolObservation

NOW = 1_800_000_000.0
POOLS = {"mixed": PoolObservation(pool="mixed", ready=1), "interactive": PoolObservation(pool="interactive"),
         "batch": PoolObservation(pool="batch")}


def beat(worker_id="w1", read_at=NOW, heartbeat_age=1.0, **fields) -> WorkerHeartbeat:
    values = dict(pool="mixed", lanes=("interactive", "batch"), admission_limit=16, inflight=3,
                  inflight_interactive=2, inflight_batch=1, itl_s=0.02, tokens_per_s=900.0)
    return WorkerHeartbeat(worker_id=worker_id, updated_at=read_at - heartbeat_age, **{**values, **fields})


def raw(read_at=NOW, heartbeat_age=1.0, arrivals=None, queued=0, oldest=None, buckets=(), beats=None):
    beats = beats if beats is not None else [beat(read_at=read_at, heartbeat_age=heartbeat_age)]
    return RawObservation(read_at=read_at, heartbeats={b.worker_id: b for b in beats},
                          lane_depths={"interactive": queued, "batch": 0},
                          oldest_enqueued_at={"interactive": oldest, "batch": None}, arrivals=arrivals or {},
                          deadline_buckets=list(buckets), pools=dict(POOLS))


def test_worker_fields_map_to_observation():
    observation = worker_observation(raw().heartbeats["w1"])
    assert observation.worker_id == "w1" and observation.pool == "mixed"
    assert (observation.running_interactive, observation.running_batch, observation.admission_limit) == (2, 1, 16)
    assert observation.itl_ewma_s == 0.02 and not observation.draining
    assert observation.batch_tokens_per_s == observation.interactive_tokens_per_s == 900.0
    idle = worker_observation(beat(inflight=0, inflight_interactive=0, inflight_batch=0, itl_s=None))
    assert idle.itl_ewma_s is None and idle.batch_tokens_per_s == idle.interactive_tokens_per_s == 0.0


def test_a_draining_worker_is_observed_draining_and_does_not_serve():
    current = raw(beats=[beat("w1"), beat("w2", draining=True)])
    snapshot = build_snapshot(current, raw(read_at=NOW - 5), max_heartbeat_age_s=15, token_variance_per_request=1.0)
    assert {w.worker_id: w.draining for w in snapshot.workers} == {"w1": False, "w2": True}
    assert [w.worker_id for w in snapshot.workers_in("mixed")] == ["w1"]


@pytest.fixture
def scaler_redis(machine_redis_url):
    client = redis.Redis.from_url(machine_redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def test_read_raw_decodes_the_heartbeats_workers_write(scaler_redis):
    """The I/O half against a real Redis: what a worker writes is what the snapshot sees."""
    import time

    now = time.time()
    write_heartbeat(scaler_redis, beat("serving@h", read_at=now), ttl_s=30)
    write_heartbeat(scaler_redis, beat("leaving@h", read_at=now, draining=True), ttl_s=30)
    observed = read_raw(scaler_redis, dict(POOLS))
    assert observed.heartbeats["leaving@h"] == beat("leaving@h", read_at=now, draining=True)
    assert observed.lane_depths == {"interactive": 0, "batch": 0}
    snapshot = build_snapshot(observed, dataclasses.replace(observed, read_at=observed.read_at - 5),
                              max_heartbeat_age_s=15, token_variance_per_request=1.0)
    assert snapshot.complete
    assert {w.worker_id: w.draining for w in snapshot.workers} == {"leaving@h": True, "serving@h": False}


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
