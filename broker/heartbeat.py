"""A worker's heartbeat: one typed record, one encoder, one decoder.

The worker writes it every ``heartbeat_interval_s`` to ``sluice:worker:<id>`` (a hash with a TTL:
the key's expiry is how the fleet learns the worker died) and to the ``sluice:workers`` registry.
Every reader (the scaler's observation, the actuators, ``/metrics``, ``sluice scaler status``, the
benches) decodes it with :meth:`WorkerHeartbeat.from_redis`, so a field has one name and one type.

``version`` is the record's format: a reader meets older workers during a rolling upgrade, so
decoding tolerates missing fields (they take their defaults) and ignores unknown ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Mapping

from core import keys

HEARTBEAT_VERSION = 3
# A worker beats from the moment it starts: ``starting`` while its engine loads, ``ready`` once it consumes.
STARTING, READY = "starting", "ready"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class WorkerHeartbeat:
    worker_id: str
    pool: str = "mixed"
    lanes: tuple[str, ...] = ("interactive", "batch")
    model: str = ""
    batching_mode: str = "continuous"
    # Requests the worker runs at once (the consumer's prefetch limit); the local autoscaler moves it.
    admission_limit: int = 1
    max_admission_limit: int = 1
    inflight: int = 0
    inflight_interactive: int = 0
    inflight_batch: int = 0
    # Set by a worker that was told to drain: it consumes nothing more and exits once its requests finish.
    draining: bool = False
    preempted_batch_requests: int = 0
    # Engine state, from vLLM's own stat logger.
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    preemptions: int = 0
    generation_tokens: int = 0
    itl_s: float | None = None  # mean inter-token latency over the last seconds; None when nothing decoded
    tokens_per_s: float = 0.0
    pid: int = 0
    started_at: float = 0.0
    # ``starting`` until the engine is warm and Celery consumes; a worker of version 2 or older beat only
    # once ready, so a missing field reads as ready.
    state: str = READY
    ready_s: float | None = None  # time to ready: from the process's start to consuming; None while starting
    updated_at: float = field(default_factory=time.time)
    version: int = HEARTBEAT_VERSION

    # --- encoding -------------------------------------------------------------------------------
    def to_redis(self) -> dict[str, str]:
        """The hash fields, all strings (``None`` as the empty string)."""
        encoded = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None:
                encoded[item.name] = ""
            elif isinstance(value, bool):
                encoded[item.name] = "1" if value else "0"
            elif isinstance(value, tuple):
                encoded[item.name] = ",".join(value)
            else:
                encoded[item.name] = str(value)
        return encoded

    @classmethod
    def from_redis(cls, raw: Mapping, worker_id: str | None = None) -> "WorkerHeartbeat":
        """Decode a hash as Redis returns it (bytes or str); missing fields take their defaults."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        values: dict = {}
        for item in dataclasses.fields(cls):
            text = fields.get(item.name)
            if text is None:
                continue
            default = item.default if item.default is not dataclasses.MISSING else None
            if item.name in ("itl_s", "ready_s"):
                values[item.name] = float(text) if text else None
            elif item.name == "lanes":
                values[item.name] = tuple(lane for lane in text.split(",") if lane)
            elif isinstance(default, bool):
                values[item.name] = text in ("1", "true", "True")
            elif isinstance(default, int):
                values[item.name] = int(float(text)) if text else default
            elif isinstance(default, float) or item.name in ("updated_at",):
                values[item.name] = float(text) if text else (default or 0.0)
            else:
                values[item.name] = text
        # A beat that never said when it was written reads as stale, not as fresh.
        values.setdefault("updated_at", 0.0)
        if worker_id is not None:
            values["worker_id"] = worker_id
        if "worker_id" not in values:
            raise ValueError("a heartbeat needs a worker_id")
        return cls(**values)

    @property
    def age_s(self) -> float:
        return time.time() - self.updated_at


# --- I/O ------------------------------------------------------------------------------------------
def write_heartbeat(client, beat: WorkerHeartbeat, ttl_s: float) -> None:
    """Store one beat: the hash (replaced whole, so a field the worker stopped writing disappears),
    its TTL, and the registry entry."""
    key = keys.worker_key(beat.worker_id)
    with client.pipeline() as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=beat.to_redis())
        pipe.pexpire(key, int(ttl_s * 1000))
        pipe.zadd(keys.WORKERS, {beat.worker_id: beat.updated_at})
        pipe.execute()


def retire_heartbeat(client, worker_id: str) -> None:
    """A clean exit leaves no heartbeat behind, so nobody mistakes it for a live worker."""
    with client.pipeline() as pipe:
        pipe.delete(keys.worker_key(worker_id))
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.execute()


def _ready_only(beats: dict[str, WorkerHeartbeat], starting: bool) -> dict[str, WorkerHeartbeat]:
    return beats if starting else {worker_id: beat for worker_id, beat in beats.items() if beat.state != STARTING}


def read_heartbeats(client, worker_ids=None, *, starting: bool = False) -> dict[str, WorkerHeartbeat]:
    """Live heartbeats (registered workers whose key has not expired), by worker id; those of workers still
    starting (engine loading: they serve nothing yet) only with ``starting``."""
    if worker_ids is None:
        worker_ids = [_text(w) for w in client.zrange(keys.WORKERS, 0, -1)]
    worker_ids = list(worker_ids)
    if not worker_ids:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.hgetall(keys.worker_key(worker_id))
        replies = pipe.execute()
    return _ready_only({worker_id: WorkerHeartbeat.from_redis(raw, worker_id)
                        for worker_id, raw in zip(worker_ids, replies) if raw}, starting)


async def read_heartbeats_async(client, *, starting: bool = False) -> dict[str, WorkerHeartbeat]:
    """:func:`read_heartbeats` on an asyncio client."""
    worker_ids = [_text(w) for w in await client.zrange(keys.WORKERS, 0, -1)]
    if not worker_ids:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.hgetall(keys.worker_key(worker_id))
        replies = await pipe.execute()
    return _ready_only({worker_id: WorkerHeartbeat.from_redis(raw, worker_id)
                        for worker_id, raw in zip(worker_ids, replies) if raw}, starting)
