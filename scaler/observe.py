"""Build a ClusterSnapshot from what Sluice keeps in Redis (heartbeats, lanes, counters).

``read_raw`` does the I/O; ``build_snapshot`` is a pure function of what was read (and the previous
read, for rates), so the decision inputs can be logged, replayed and tested.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from broker import keys
from broker.deadlines import read_deadline_buckets
from scaler.state import ClusterSnapshot, DeadlineGroup, LaneObservation, PoolObservation, WorkerObservation

LANES = ("interactive", "batch")


@dataclass
class RawObservation:
    read_at: float
    heartbeats: dict[str, dict[str, str]]
    lane_depths: dict[str, int]
    oldest_enqueued_at: dict[str, float | None]
    arrivals: dict[str, float]
    deadline_buckets: list[tuple[float, int, float]]
    pools: dict[str, PoolObservation] = field(default_factory=dict)


def _oldest_enqueued_at(client, lane: str, sample: int = 32) -> float | None:
    """Oldest arrival among the lane's first members (exact under FCFS, a lower bound of waits otherwise)."""
    import base64

    oldest = None
    for member in client.zrange(keys.lane_key(lane), 0, sample - 1):
        try:
            message = json.loads(member)
            args = json.loads(base64.b64decode(message["body"]))[0]
            enqueued_at = float(args[0]["enqueued_at"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        oldest = enqueued_at if oldest is None else min(oldest, enqueued_at)
    return oldest


def read_raw(client, pools: dict[str, PoolObservation]) -> RawObservation:
    worker_ids = [w.decode() for w in client.zrange(keys.WORKERS, 0, -1)]
    with client.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.hgetall(keys.worker_key(worker_id))
        for lane in LANES:
            pipe.zcard(keys.lane_key(lane))
        pipe.hgetall(keys.ARRIVALS)
        replies = pipe.execute()
    beats = {w: {k.decode(): v.decode() for k, v in b.items()} for w, b in zip(worker_ids, replies) if b}
    depths = dict(zip(LANES, replies[len(worker_ids):len(worker_ids) + len(LANES)]))
    arrivals = {k.decode(): float(v) for k, v in replies[-1].items()}
    return RawObservation(
        read_at=time.time(), heartbeats=beats, lane_depths=depths,
        oldest_enqueued_at={lane: _oldest_enqueued_at(client, lane) if depths[lane] else None for lane in LANES},
        arrivals=arrivals, deadline_buckets=read_deadline_buckets(client), pools=pools,
    )


def _float(fields: dict, name: str, default: float = 0.0) -> float:
    value = fields.get(name, "")
    return float(value) if value not in ("", None) else default


def worker_observation(worker_id: str, fields: dict[str, str]) -> WorkerObservation:
    itl = fields.get("itl_s", "")
    return WorkerObservation(
        worker_id=worker_id, pool=fields.get("pool", "mixed"), ready=True,
        running_interactive=int(_float(fields, "inflight_interactive")),
        running_batch=int(_float(fields, "inflight_batch")),
        batch_limit=int(_float(fields, "admission_limit", 1)),
        itl_ewma_s=float(itl) if itl else None,
        batch_tokens_per_s=_float(fields, "tokens_per_s") if int(_float(fields, "inflight_batch")) else 0.0,
        draining=fields.get("draining") == "1",
        interactive_tokens_per_s=_float(fields, "tokens_per_s") if int(_float(fields, "inflight_interactive")) else 0.0,
    )


def build_snapshot(raw: RawObservation, previous: RawObservation | None, *, max_heartbeat_age_s: float,
                   token_variance_per_request: float) -> ClusterSnapshot:
    """Pure: the snapshot the policies see; ``observed_at`` is the oldest heartbeat that went into it."""
    workers = tuple(worker_observation(w, f) for w, f in sorted(raw.heartbeats.items()))
    updated = [_float(f, "updated_at", raw.read_at) for f in raw.heartbeats.values()]
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
                           batch=lanes["batch"])


def default_token_variance(mean_tokens: float = 400.0) -> float:
    """Variance of one request's output length when nothing better is known (CV ~ 1, as in real traces)."""
    return math.pow(mean_tokens, 2)
