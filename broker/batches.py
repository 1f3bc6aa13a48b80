"""Batches (the OpenAI Batch API): one record per batch in Redis, and every change of its status.

A batch's life (each arrow one atomic step here; what drives them is :mod:`broker.batch_steps`)::

    create --> validating --(a bad line)--------------------------------------------> failed
                   |
                   +--(valid: requests counted)--> in_progress --(all requests ended)--> finalizing --> completed
                   |                                   |  +--(deadline)--> finalizing (closed: expired) --> expired
                   +--------------cancel---------------+--cancel--> cancelling (closed: cancelled) ---> cancelled

* ``closed`` (in the batch's counters, :func:`core.keys.batch_counts_key`) is set in the same step that
  starts cancelling or expiring: from then on the request ledger ends the batch's queued requests
  instead of starting them, refuses to enqueue more, and workers abort its running ones.
* The request counters (one field per request status) are the ledger's: it moves a request of a batch
  between them in the step that moves the request, so progress costs one HGETALL at any batch size.
* ``BATCHES_BY_STATUS`` counts batches per status (Prometheus' ``sluice_batches``), moved by every step.

The record is a :class:`BatchRecord` with one encoder; the OpenAI batch object is ``to_openai(counts)``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import secrets
from dataclasses import dataclass
from typing import Literal, Mapping

from broker.paging import IndexPager
from broker.records import hash_fields
from core import keys

BATCH_RECORD_VERSION = 1
LIST_LIMIT_MAX = 100  # OpenAI's bound for `limit` when listing batches (default 20)
LIST_LIMIT_DEFAULT = 20


class BatchStatus(str, enum.Enum):
    validating = "validating"
    failed = "failed"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (BatchStatus.failed, BatchStatus.completed, BatchStatus.expired, BatchStatus.cancelled)


# The statuses a batch may be cancelled from (OpenAI: a batch that is finalizing or ended cannot be).
CANCELLABLE = (BatchStatus.validating, BatchStatus.in_progress)
# The timestamp field each status sets when a batch enters it.
TIMESTAMP_OF = {BatchStatus.in_progress: "in_progress_at", BatchStatus.finalizing: "finalizing_at",
                BatchStatus.completed: "completed_at", BatchStatus.failed: "failed_at",
                BatchStatus.expired: "expired_at", BatchStatus.cancelling: "cancelling_at",
                BatchStatus.cancelled: "cancelled_at"}
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def request_id_of(batch_id: str, line: int) -> str:
    """A batch request's id: its batch and its line in the input file.  Deterministic, so an enqueue that
    is resumed (its API process died) finds the requests it already enqueued (the ledger enqueues an id once)."""
    return f"{batch_id}-{line}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class BatchCounts:
    """How many of a batch's requests are in each request status (the ledger keeps them), and ``closed``."""

    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    closed: Literal["cancelled", "expired"] | None = None

    @classmethod
    def from_redis(cls, raw: Mapping) -> BatchCounts:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        counts = {f.name: int(fields.get(f.name, 0)) for f in dataclasses.fields(cls) if f.name != "closed"}
        return cls(**counts, closed=fields.get("closed") or None)

    @property
    def unfinished(self) -> int:
        return self.queued + self.running

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.cancelled + self.expired


@dataclass(frozen=True)
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str  # as the client wrote it ("24h", "30m")
    created_at: float
    expires_at: float  # created_at + the window: every request's deadline
    status: BatchStatus = BatchStatus.validating
    metadata: dict | None = None
    errors: dict | None = None  # OpenAI's errors object of a batch that failed validation
    total: int = 0  # requests in the input file, once validated
    enqueued: bool = False  # every request of the file went to the lane (or the batch closed first)
    lane_closed: bool = False  # the batch's queued requests were taken out of the lane after it closed
    ends_as: str | None = None  # what finalizing ends in: completed or expired
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    # The owner: the tenant whose API key created it (None with authentication off), and its fair-share
    # weight; the batch's requests carry both (GenerationRequest.tenant, .tenant_weight).
    tenant: str | None = None
    tenant_weight: float = 1.0
    version: int = BATCH_RECORD_VERSION

    def to_redis(self) -> dict[str, str]:
        return hash_fields(self)

    @classmethod
    def from_redis(cls, raw: Mapping) -> BatchRecord:
        fields = {_text(k): _text(v) for k, v in raw.items()}

        def number(name):
            return float(fields[name]) if fields.get(name) not in (None, "") else None

        return cls(
            id=fields["id"], endpoint=fields["endpoint"], input_file_id=fields["input_file_id"],
            completion_window=fields["completion_window"], created_at=float(fields["created_at"]),
            expires_at=float(fields["expires_at"]), status=BatchStatus(fields["status"]),
            metadata=json.loads(fields["metadata"]) if fields.get("metadata") else None,
            errors=json.loads(fields["errors"]) if fields.get("errors") else None,
            total=int(fields.get("total", 0)), enqueued=fields.get("enqueued") == "1",
            lane_closed=fields.get("lane_closed") == "1", ends_as=fields.get("ends_as") or None,
            output_file_id=fields.get("output_file_id") or None, error_file_id=fields.get("error_file_id") or None,
            **{name: number(name) for name in TIMESTAMPS},
            tenant=fields.get("tenant") or None, tenant_weight=float(fields.get("tenant_weight") or 1.0),
            version=int(fields.get("version", BATCH_RECORD_VERSION)),
        )

    def to_openai(self, counts: BatchCounts) -> dict:
        """The OpenAI batch object, plus a ``sluice`` block (request counts by status, the deadline)."""
        def when(value):
            return int(value) if value is not None else None

        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status.value, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": int(self.created_at),
            "expires_at": int(self.expires_at), **{name: when(getattr(self, name)) for name in TIMESTAMPS},
            "request_counts": {"total": self.total, "completed": counts.done,
                               "failed": counts.failed + counts.cancelled + counts.expired},
            "metadata": self.metadata,
            # enqueued: every request of the file is in the lane (or the batch closed before they all were).
            "sluice": {"deadline": self.expires_at, "enqueued": self.enqueued, "queued": counts.queued, "running": counts.running,
                       "done": counts.done, "failed": counts.failed, "cancelled": counts.cancelled,
                       "expired": counts.expired},
        }


@dataclass(frozen=True)
class BatchPage:
    batches: list[tuple[BatchRecord, BatchCounts]]
    has_more: bool


class TransitionRefused(Exception):
    """The batch is not in a status the step starts from (it moved on meanwhile), or does not exist."""

    def __init__(self, batch_id: str, status: str | None):
        super().__init__(f"batch {batch_id} is {status or 'unknown'}")
        self.status = BatchStatus(status) if status else None


# One step: from one of the allowed statuses to the next, its timestamp, its fields, and `closed` on the
# counters when it closes the batch; off the open index when it ends it.  Returns {1} or {0, status}.
# KEYS: batch, counts, open index, by-status counts.  ARGV: to, allowed (comma separated), timestamp field,
# now, fields (JSON object), closed ('' for none), 1 when `to` ends the batch.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
local allowed = false
for candidate in string.gmatch(ARGV[2], '[^,]+') do
  if candidate == status then allowed = true end
end
if not allowed then return {0, status} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[4]) end
for name, value in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[1], name, tostring(value)) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'closed', ARGV[6]) end
if ARGV[7] == '1' then redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id')) end
if status ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[4], status, -1)
  redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
end
return {1}
"""

# Set fields of a batch that is in one of the allowed statuses (progress flags that change no status).
# KEYS: batch.  ARGV: allowed (comma separated), fields (JSON object).  Returns 1, or 0 when not allowed.
_MARK = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for candidate in string.gmatch(ARGV[1], '[^,]+') do
  if candidate == status then
    for name, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], name, tostring(value)) end
    return 1
  end
end
return 0
"""


def _statuses(statuses) -> str:
    return ",".join(BatchStatus(s).value for s in statuses)


class BatchStore:
    """Batch records in Redis (asyncio client): the one writer of ``sluice:batch:<id>``."""

    def __init__(self, client):
        self.client = client
        self._transition = client.register_script(_TRANSITION)
        self._mark = client.register_script(_MARK)
        self._pager = IndexPager(client)

    async def create(self, record: BatchRecord) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch_key(record.id), mapping=record.to_redis())
            pipe.zadd(keys.BATCHES, {record.id: record.created_at})
            if record.tenant is not None:
                pipe.zadd(keys.batches_index_key(record.tenant), {record.id: record.created_at})
            pipe.zadd(keys.BATCHES_OPEN, {record.id: record.expires_at})
            pipe.hincrby(keys.BATCHES_BY_STATUS, record.status.value, 1)
            await pipe.execute()

    async def get(self, batch_id: str) -> tuple[BatchRecord, BatchCounts] | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.batch_key(batch_id))
            pipe.hgetall(keys.batch_counts_key(batch_id))
            raw, counts = await pipe.execute()
        return (BatchRecord.from_redis(raw), BatchCounts.from_redis(counts)) if raw else None

    async def open_ids(self) -> list[str]:
        """Batches not ended yet, earliest deadline first: the batch runner's work list."""
        return [_text(i) for i in await self.client.zrange(keys.BATCHES_OPEN, 0, -1)]

    async def open_batch_reading(self, file_id: str) -> str | None:
        """The id of a batch not yet ended whose input file is ``file_id`` (the open batches are few)."""
        for batch_id in await self.open_ids():
            if _text(await self.client.hget(keys.batch_key(batch_id), "input_file_id") or b"") == file_id:
                return batch_id
        return None

    async def page(self, *, limit: int = LIST_LIMIT_DEFAULT, after: str | None = None,
                   tenant: str | None = None) -> BatchPage:
        """The batches of ``tenant`` (every batch when None), newest first, as OpenAI lists them.
        ``broker.paging.UnknownCursor`` for an unknown ``after``."""
        ids, has_more = await self._pager.ids(keys.batches_index_key(tenant), limit=limit, after=after, order="desc")
        async with self.client.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hgetall(keys.batch_key(batch_id))
                pipe.hgetall(keys.batch_counts_key(batch_id))
            raws = await pipe.execute()
        batches = [(BatchRecord.from_redis(raw), BatchCounts.from_redis(counts))
                   for raw, counts in zip(raws[::2], raws[1::2]) if raw]
        return BatchPage(batches, has_more)

    async def by_status(self) -> dict[str, int]:
        raw = await self.client.hgetall(keys.BATCHES_BY_STATUS)
        return {status.value: max(0, int(raw.get(status.value.encode(), 0))) for status in BatchStatus}

    # --- the steps -----------------------------------------------------------------------------------
    async def _step(self, batch_id: str, to: BatchStatus, allowed, now: float, fields: dict | None = None,
                    closed: str | None = None) -> None:
        reply = await self._transition(
            keys=[keys.batch_key(batch_id), keys.batch_counts_key(batch_id), keys.BATCHES_OPEN,
                  keys.BATCHES_BY_STATUS],
            args=[to.value, _statuses(allowed), TIMESTAMP_OF.get(to, ""), repr(float(now)),
                  json.dumps(fields or {}), closed or "", "1" if to.ended else "0"])
        if not int(reply[0]):
            raise TransitionRefused(batch_id, _text(reply[1]) if len(reply) > 1 else None)

    async def start(self, batch_id: str, now: float, total: int) -> None:
        """Validated: ``total`` requests, enqueued next."""
        await self._step(batch_id, BatchStatus.in_progress, [BatchStatus.validating], now, {"total": total})

    async def fail(self, batch_id: str, now: float, errors: dict) -> None:
        """A bad input file: the batch ends ``failed`` with OpenAI's errors object, having run nothing."""
        await self._step(batch_id, BatchStatus.failed, [BatchStatus.validating], now, {"errors": json.dumps(errors)})

    async def cancel(self, batch_id: str, now: float) -> None:
        """Cancelling: the ledger stops its queued requests, workers abort its running ones."""
        await self._step(batch_id, BatchStatus.cancelling, CANCELLABLE, now, closed="cancelled")

    async def expire(self, batch_id: str, now: float) -> None:
        """Its deadline passed: finalizing, to end ``expired`` once its unfinished requests are ended."""
        await self._step(batch_id, BatchStatus.finalizing, [BatchStatus.in_progress], now, {"ends_as": "expired"},
                         closed="expired")

    async def finalize(self, batch_id: str, now: float) -> None:
        """Every request ended: finalizing, to write the output files and end ``completed``."""
        await self._step(batch_id, BatchStatus.finalizing, [BatchStatus.in_progress], now, {"ends_as": "completed"})

    async def end(self, batch_id: str, to: BatchStatus, now: float, output_file_id: str | None,
                  error_file_id: str | None) -> None:
        """The output files are written: the batch ends ``to`` (completed, expired or cancelled)."""
        allowed = [BatchStatus.cancelling] if to is BatchStatus.cancelled else [BatchStatus.finalizing]
        fields = {name: value for name, value in (("output_file_id", output_file_id),
                                                  ("error_file_id", error_file_id)) if value}
        await self._step(batch_id, to, allowed, now, fields)

    async def mark(self, batch_id: str, *, allowed, **flags: bool) -> bool:
        """Set progress flags (``enqueued``, ``lane_closed``) while the batch is in an ``allowed`` status."""
        return bool(await self._mark(keys=[keys.batch_key(batch_id)],
                                     args=[_statuses(allowed), json.dumps({k: int(v) for k, v in flags.items()})]))
