"""Build a ClusterSnapshot from what Sluice keeps in Redis (heartbeats, lanes, counters).

``read_raw`` does the I/O; ``build_snapshot`` is a pure function of what was read (and the previous
read, for rates), so the decision inputs can be logged, replayed and tested. Heartbeats are decoded
once, by :class:`broker.heartbeat.WorkerHeartbeat`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from broker.capacity import read_profile
from broker.deadlines import read_deadline_buckets
from broker.heartbeat import WorkerHeartbeat, read_heartbeats
from broker.transport import request_payload
from core import keys
from core.names import LANES
from scaler.state import ClusterSnapshot, DeadlineGroup, LaneObservation, PoolObservation, WorkerObservation


@dataclass
class RawObservation:
    read_at: float
    heartbeats: dict[str, WorkerHeartbeat]
    lane_depths: dict[str, int]
    oldest_enqueued_at: dict[str, float | None]
    arrivals: dict[str, float]
    deadline_buckets: list[tuple[float, int, float]]
    pools: dict[str, PoolObservation] = field(default_factory=dict)
    # Per-worker interactive capacity of the served model, from `sluice profile` (None: never profiled).
    profiled_capacity_tokens_per_s: float | None = None


def _oldest_enqueued_at(client, lane: str, sample: int = 32) -> float | None:
    """Oldest arrival among the lane's first members (exact under FCFS, a lower bound of waits otherwise)."""
    oldest = None
    for member in client.zrange(keys.lane_key(lane), 0, sample - 1):
        try:
            enqueued_at = float(request_payload(json.loads(member))["enqueued_at"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        oldest = enqueued_at if oldest is None else min(oldest, enqueued_at)
    return oldest


def read_raw(client, pools: dict[str, PoolObservation]) -> RawObservation:
    heartbeats = read_heartbeats(client)
    with client.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.zcard(keys.lane_key(lane))
        pipe.hgetall(keys.ARRIVALS)
        replies = pipe.execute()
    depths = dict(zip(LANES, replies[:len(LANES)]))
    arrivals = {k.decode(): float(v) for k, v in replies[-1].items()}
    models = sorted({beat.model for beat in heartbeats.values() if beat.model})
    profile = read_profile(client, models[0]) if models else None
    return RawObservation(
        read_at=time.time(), heartbeats=heartbeats, lane_depths=depths,
        oldest_enqueued_at={lane: _oldest_enqueued_at(client, lane) if depths[lane] else None for lane in LANES},
        arrivals=arrivals, deadline_buckets=read_deadline_buckets(client), pools=pools,
        profiled_capacity_tokens_per_s=profile.tokens_per_s if profile else None,
    )


def worker_observation(beat: WorkerHeartbeat) -> WorkerObservation:
    # The heartbeat carries one throughput; it counts for each kind of work the worker was running
    # (for both on a worker that runs both).
    return WorkerObservation(
        worker_id=beat.worker_id, pool=beat.pool, ready=True,
        running_interactive=beat.inflight_interactive, running_batch=beat.inflight_batch,
        admission_limit=beat.admission_limit, itl_ewma_s=beat.itl_s,
        batch_tokens_per_s=beat.tokens_per_s if beat.inflight_batch else 0.0,
        draining=beat.draining,
        interactive_tokens_per_s=beat.tokens_per_s if beat.inflight_interactive else 0.0,
    )


def build_snapshot(raw: RawObservation, previous: RawObservation | None, *, max_heartbeat_age_s: float,
                   token_variance_per_request: float) -> ClusterSnapshot:
    """Pure: the snapshot the policies see; ``observed_at`` is the oldest heartbeat that went into it."""
    workers = tuple(worker_observation(beat) for _, beat in sorted(raw.heartbeats.items()))
    updated = [beat.updated_at for beat in raw.heartbeats.values()]
    observed_at = min([raw.read_at, *updated])
    complete = all(raw.read_at - u <= max_heartbeat_age_s for u in updated)
    lanes = {}
    for lane in LANES:
        rate = tokens_rate = 0.0
        if previous is not None and raw.read_at > previous.read_at:
            dt = raw.read_at - previous.read_at
            rate = (raw.arrivals.get(f"requests:{lane}", 0) - previous.arrivals.get(f"requests:{lane}", 0)) / dt
            tokens_rate = (raw.arrivals.get(f"tokens:{lane}", 0) - previous.arrivals.get(f"tokens:{lane}", 0)) / dt
        oldest = raw.oldest_enqueued_at.get(lane)
        groups = ()
        if lane == "batch":
            groups = tuple(DeadlineGroup(deadline=d, requests=n, predicted_tokens=t,
                                         predicted_variance=n * token_variance_per_request)
                           for d, n, t in raw.deadline_buckets)
        lanes[lane] = LaneObservation(
            slo_class=lane, queued=raw.lane_depths.get(lane, 0),
            oldest_wait_s=max(0.0, raw.read_at - oldest) if oldest else 0.0,
            arrival_rate_per_s=max(0.0, rate), arrival_tokens_per_s=max(0.0, tokens_rate), deadline_groups=groups,
        )
    return ClusterSnapshot(now=raw.read_at, observed_at=observed_at, complete=complete and previous is not None,
                           pools=dict(raw.pools), workers=workers, interactive=lanes["interactive"],
                           batch=lanes["batch"], profiled_capacity_tokens_per_s=raw.profiled_capacity_tokens_per_s)


def default_token_variance(mean_tokens: float = 400.0) -> float:
    """Variance of one request's output length when nothing better is known (CV ~ 1, as in real traces)."""
    return math.pow(mean_tokens, 2)
