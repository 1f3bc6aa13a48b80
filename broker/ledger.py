"""The request ledger: the one writer of request state (``sluice:req:<id>``).

A request's life, one atomic Redis step (a Lua script) per arrow; each step changes the request's state,
its deadline accounting (:mod:`broker.deadlines`), its terminal event (:mod:`broker.request_events`) and,
where it moves, its message in the lane together or not at all::

    publish --enqueue--> queued --start--> running --finish--> done
                           ^  |                |   +---fail----> failed
                           |  |                |
                           +--|----requeue-----+   (preempted: its message goes back to its lane)
                              +----cancel------> cancelled
                              +----expire------> expired

    A delivery of a request that has ended (done, failed, cancelled, expired): start drops it.

Who calls what:

* **API** publishes with Celery's ``send_task`` as before (Flower sees every task), adding the header
  ``LEDGER_HEADER: LedgerEntry.for_request(request).to_header()``.  The transport's ``_put``
  (:mod:`broker.transport`) strips that header from the stored message and calls :meth:`Ledger.enqueue`,
  which ZADDs the message into its lane (and pushes the lane's wake-up token, :mod:`broker.lanes`) AND
  writes the queued state, the deadline tokens (+) and the arrival counters.  A failed publish leaves
  none of them.
* **Worker** (``GenerationRequest`` in hand; ``now`` defaults to the current time where it is optional):

  - ``start(request_id, worker_id, now) -> int | None``: the attempt number this delivery runs as, or
    ``None``: drop (acknowledge without running) a delivery of a request that already ended.
  - ``finish(request, attempt, record, text, completion) -> int | None``: done, the answer kept with the
    state, the ``done`` event, the completion log, deadline (−).  ``record`` is the completion record
    without its text (it is the ``done`` event), ``record["finished_at"]`` is when.
  - ``fail(request, attempt, error, now=None) -> int | None``: failed, the ``error`` event, deadline (−).
  - ``requeue(request, attempt, worker_id, now=None) -> int | None``: preempted: queued again,
    ``preemptions`` +1, the ``preempted`` event (the task then requeues its message).

  ``finish``, ``fail`` and ``requeue`` are fenced: only the newest attempt of a request that has not
  ended answers.  They return ``None`` when this attempt's step was applied, else the newest attempt
  number (greater than ``attempt`` when another attempt started since; equal to it when the request had
  already ended), and then wrote nothing.  An attempt *above* the newest recorded answers (and becomes the
  newest): its ``start`` was lost, as at a Sentinel failover to a replica that had not received it.
* **Cancel / expire** (the batch issue's): ``cancel(request_id, now, lane=None, member=None) -> bool`` and
  ``expire(...)`` end a *queued* request (True when this call ended it): status, deadline (−), an ``error``
  event for whoever follows it, and the message ZREMed from ``lane`` when the caller passes its lane
  member; a message left in the lane is dropped by the ``start`` of its delivery.
* **Anyone** reads with ``read(request_id) -> RequestRecord | None``.

:class:`Ledger` takes a ``redis.Redis``, :class:`AsyncLedger` a ``redis.asyncio.Redis``; both have the
same methods (``enqueue`` is the transport's, sync only).  Deadline accounting uses the bucket and
predicted tokens written at enqueue, so (−) undoes exactly the (+), once: on the step from queued or
running to an ended status.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Mapping

from broker import deadlines
from broker.fair_share import FairTicket
from broker.lanes import SIGNAL_LUA, SIGNAL_TOKENS_KEPT
from broker.messages import GenerationRequest
from broker.request_events import EVENT_FIELD, EVENTS_TTL_S, encode_event
from core import keys

log = logging.getLogger(__name__)

REQUEST_STATE_TTL_S = 24 * 3600
COMPLETIONS_KEPT = 10_000
# A lane's fair-share clocks are kept this long after its last tenant request (an idle lane restarts them).
FAIR_CLOCKS_TTL_S = 24 * 3600
# The message header that carries a message's lane score (broker.transport reads it back when it restores one).
SCORE_HEADER = "sluice_score"
# The publish header that carries a LedgerEntry to the transport (which strips it from the stored message).
LEDGER_HEADER = "sluice_ledger"
ABANDONED_MESSAGE = "the client disconnected before the answer was complete"


class RequestStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def ended(self) -> bool:
        return self in ENDED


ENDED = frozenset({RequestStatus.done, RequestStatus.failed, RequestStatus.cancelled, RequestStatus.expired})


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_float(raw: Mapping[str, str], name: str) -> float | None:
    value = raw.get(name)
    return float(value) if value not in (None, "") else None


@dataclass(frozen=True)
class RequestRecord:
    """A typed read of a request's state hash."""

    request_id: str
    status: RequestStatus
    lane: str | None = None
    attempt: int = 0
    worker: str | None = None
    enqueued_at: float | None = None
    score: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0
    result: dict | None = None  # the answer of a done request: its completion record with the text
    error: str | None = None
    deadline: float | None = None
    batch_id: str | None = None  # the Batch API batch it belongs to
    tenant: str | None = None  # the tenant whose API key submitted it: the only one who may read it

    @classmethod
    def from_redis(cls, request_id: str, raw: Mapping) -> RequestRecord:
        fields = {_text(name): _text(value) for name, value in raw.items()}
        return cls(
            request_id=request_id,
            status=RequestStatus(fields["status"]),
            lane=fields.get("lane"),
            attempt=int(fields.get("attempt", 0)),
            worker=fields.get("worker"),
            enqueued_at=_optional_float(fields, "enqueued_at"),
            score=_optional_float(fields, "score"),
            started_at=_optional_float(fields, "started_at"),
            finished_at=_optional_float(fields, "finished_at"),
            preemptions=int(fields.get("preemptions", 0)),
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=fields.get("error") or None,
            deadline=_optional_float(fields, "deadline"),
            batch_id=fields.get("batch") or None,
            tenant=fields.get("tenant") or None,
        )


@dataclass(frozen=True)
class ReplicaWait:
    """Make a write wait until ``replicas`` replicas have it (Redis ``WAIT``), at most ``timeout_ms``.

    Replication is asynchronous: a write the master acknowledged and died before sending is lost at
    failover.  WAIT narrows that to writes whose WAIT timed out (logged here); it does not make Redis
    strongly consistent (docs/operations.md)."""

    replicas: int
    timeout_ms: int

    def __bool__(self) -> bool:
        return self.replicas > 0

    def add_to(self, pipe) -> None:
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def check(self, acknowledged, writes: int) -> None:
        if int(acknowledged) < self.replicas:
            log.warning("%d write(s) reached %s of %d replicas within %d ms: they are on the master only "
                        "until replication catches up", writes, acknowledged, self.replicas, self.timeout_ms)


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger records when a request enters its lane (its score is the message's lane score)."""

    request_id: str
    enqueued_at: float
    deadline: float | None = None
    # Set for a batch request with a deadline: the bucket it counts in (broker.deadlines).
    deadline_bucket: str | None = None
    expected_tokens: float = 0.0  # predicted output tokens, capped by max_tokens
    arrival_tokens: float = 0.0  # prompt + expected output tokens, for the scaler's arrival rate
    batch_id: str | None = None  # set for a request of a Batch API batch: it counts in the batch's counters
    tenant: str | None = None  # the owner (the API key's tenant; None with authentication off)
    # Fair share inside the lane (broker.fair_share): set for a request with a tenant when fair share is on.
    # The enqueue script then moves the message's score (and its score header) by the tenant's clock.
    fair: bool = False
    tenant_weight: float = 1.0
    fair_cost_s: float = 0.0
    fair_round_s: float = 0.0

    def state_ttl_s(self) -> int:
        """How long a queued request's state is kept: a day, and for a request with a deadline a day past it
        (a batch's queued requests must still be there to be expired at its deadline)."""
        if self.deadline is None:
            return REQUEST_STATE_TTL_S
        return REQUEST_STATE_TTL_S + max(0, int(math.ceil(self.deadline - self.enqueued_at)))

    def __post_init__(self):
        # A value Redis rejects half-way through the script would leave half a request: refuse it here.
        for name in ("enqueued_at", "deadline", "expected_tokens", "arrival_tokens", "tenant_weight", "fair_cost_s",
                     "fair_round_s"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"ledger entry {self.request_id}: {name} is {value}")

    @property
    def fair_ticket(self) -> FairTicket | None:
        if not self.fair or self.tenant is None:
            return None
        return FairTicket(tenant=self.tenant, weight=self.tenant_weight, arrival=self.enqueued_at,
                          cost_s=self.fair_cost_s, round_s=self.fair_round_s)

    @classmethod
    def for_request(cls, request: GenerationRequest, fair: FairTicket | None = None) -> LedgerEntry:
        """The request's entry; ``fair`` (``FairShareConfig.ticket``) places it by its tenant's fair share."""
        expected = deadlines.expected_tokens(request)
        tracked = request.slo == "batch" and request.deadline is not None
        fair_fields = {} if fair is None else {"fair": True, "tenant_weight": fair.weight,
                                               "fair_cost_s": fair.cost_s, "fair_round_s": fair.round_s}
        return cls(
            **fair_fields,
            request_id=request.request_id,
            enqueued_at=request.enqueued_at,
            deadline=request.deadline,
            deadline_bucket=deadlines.deadline_bucket(request.deadline) if tracked else None,
            expected_tokens=expected,
            arrival_tokens=request.prompt_tokens + expected,
            batch_id=request.batch_id,
            tenant=request.tenant,
        )

    def to_header(self) -> dict:
        # Flat fields: a plain dict, not dataclasses.asdict (its deep copy was a tenth of a bulk publish).
        return {name: getattr(self, name) for name in _ENTRY_FIELDS}

    @classmethod
    def from_header(cls, header: Mapping) -> LedgerEntry:
        return cls(**header)


_ENTRY_FIELDS = tuple(item.name for item in dataclasses.fields(LedgerEntry))


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# --- the scripts ----------------------------------------------------------------------------------
# Every script checks the types of all its keys before its first write: Redis does not roll back a
# script that fails half-way, so one that cannot finish must not start.
#
# A request of a Batch API batch also moves in its batch's counters (KEYS: the counts hash, passed after
# a script's own keys when the request has a batch): one field per request status, so a batch's progress
# is read in one HGETALL whatever its size.
_LUA_COMMON = """
local EVENT_FIELD = '%s'
local SCORE_HEADER = '%s'
local ENDED = {done = true, failed = true, cancelled = true, expired = true}

local function wrong_type(specs)
  for i = 1, #specs, 2 do
    local found = redis.call('TYPE', specs[i])['ok']
    if found ~= 'none' and found ~= specs[i + 1] then
      return 'WRONGTYPE ' .. specs[i] .. ' holds a ' .. found .. ', the request ledger needs a ' .. specs[i + 1]
    end
  end
  return nil
end

-- The key specs plus the batch counters and the all-batches totals (hashes) when the caller passed them as
-- KEYS[n], KEYS[n + 1].
local function with_counts(specs, n)
  if KEYS[n] then
    table.insert(specs, KEYS[n]); table.insert(specs, 'hash')
    table.insert(specs, KEYS[n + 1]); table.insert(specs, 'hash')
  end
  return specs
end

-- The attempt that may answer is the newest, while the request has not ended: nil then, else the newest.
-- An attempt above the newest recorded ran from a start this Redis lost (a Sentinel failover promoted a
-- replica that had not received it): it is the newest there is, so it answers, and the record learns it.
-- An answer (``lane`` given: finish, fail) for a record that is gone altogether ran from an enqueue this
-- Redis lost the same way (or a record that expired queued, after a day): it is the only answer there is,
-- so the record is made again from it and its client gets it. A requeue of a gone record takes nothing.
local function superseded(state, attempt, lane, enqueued_at)
  attempt = tonumber(attempt)
  if lane and redis.call('EXISTS', state) == 0 then
    redis.call('HSET', state, 'attempt', attempt, 'lane', lane, 'enqueued_at', enqueued_at, 'recreated', '1')
    return nil
  end
  local newest = tonumber(redis.call('HGET', state, 'attempt') or '0')
  local status = redis.call('HGET', state, 'status')
  if attempt < newest or not status or ENDED[status] then
    return newest
  end
  if attempt > newest then
    redis.call('HSET', state, 'attempt', attempt)
  end
  return nil
end

-- Take a batch request's work out of its deadline bucket; called once, on the step that ends it.
local function release_deadline(state, deadline_requests, deadline_tokens)
  local bucket = redis.call('HGET', state, 'deadline_bucket')
  if not bucket then
    return
  end
  local tokens = redis.call('HGET', state, 'expected_tokens') or '0'
  if string.sub(tokens, 1, 1) == '-' then tokens = string.sub(tokens, 2) else tokens = '-' .. tokens end
  redis.call('HINCRBY', deadline_requests, bucket, -1)
  redis.call('HINCRBYFLOAT', deadline_tokens, bucket, tokens)
end

-- Move a request to a status: its batch's counters first (they count it under its old status), and the
-- totals of batch requests ended (Prometheus' sluice_batch_requests_total), then it.
local function set_status(state, counts, status, ...)
  if counts then
    local old = redis.call('HGET', state, 'status')
    if old then redis.call('HINCRBY', counts, old, -1) end
    redis.call('HINCRBY', counts, status, 1)
    if ENDED[status] then redis.call('HINCRBY', KEYS[#KEYS], status, 1) end
  end
  redis.call('HSET', state, 'status', status, ...)
end

-- End a queued request of a batch that was closed (cancelled or expired) without running it.
local function end_closed(state, counts, closed, now, deadline_requests, deadline_tokens)
  set_status(state, counts, closed, 'finished_at', now)
  release_deadline(state, deadline_requests, deadline_tokens)
end
""" % (EVENT_FIELD, SCORE_HEADER)

# KEYS: lane, state, deadline requests, deadline tokens, arrivals, the lane's fair-share clocks, the lane's
#       signal[, batch counts]
# ARGV: message, score, lane, enqueued_at, state TTL, deadline, deadline bucket, expected tokens, arrival tokens,
#       batch id, tenant ('' for none), tenant weight, fair cost (s), fair round (s), fair clocks TTL,
#       fair share ('1' to place the request by its tenant's clock), signal tokens kept
_ENQUEUE = _LUA_COMMON + SIGNAL_LUA + """
local counts = KEYS[8]
local wrong = wrong_type(with_counts({KEYS[1], 'zset', KEYS[2], 'hash', KEYS[3], 'hash', KEYS[4], 'hash',
                                      KEYS[5], 'hash', KEYS[6], 'hash', KEYS[7], 'list'}, 8))
if wrong then return redis.error_reply(wrong) end
-- A publish retried after its first try reached Redis: the request is in its lane already.  (A batch's
-- enqueue resumed after its API process died relies on this too: every request enters once.)
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
-- A batch closed while it was being enqueued takes no more requests.
if counts and redis.call('HEXISTS', counts, 'closed') == 1 then return 0 end
local message, score = ARGV[1], ARGV[2]
if ARGV[16] == '1' then
  -- Fair share inside the lane: broker.fair_share.decide, line by line.
  local tenant, arrival, base = ARGV[11], tonumber(ARGV[4]), tonumber(ARGV[2])
  local weight, cost, round_s = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local clock = redis.call('HMGET', KEYS[6], 'finish:' .. tenant, 'round:' .. tenant, 'first:' .. tenant)
  local finish, round_start, round_arrival = tonumber(clock[1]), tonumber(clock[2]), tonumber(clock[3])
  local start
  if #head == 0 then
    start = arrival
  elseif not finish then
    start = tonumber(head[2])
  else
    start = math.max(tonumber(head[2]), finish)
  end
  local new_finish = start + cost / weight
  local new_round = start
  if round_s > 0 then new_round = math.floor(start / round_s) * round_s end
  local new_arrival = arrival
  if round_s > 0 and round_start == new_round and round_arrival then new_arrival = round_arrival end
  local delay = math.max(0, math.min(new_round - new_arrival, start - arrival))
  score = string.format('%.17g', base + delay)
  redis.call('HSET', KEYS[6], 'finish:' .. tenant, string.format('%.17g', new_finish),
             'round:' .. tenant, string.format('%.17g', new_round), 'first:' .. tenant,
             string.format('%.17g', new_arrival))
  redis.call('EXPIRE', KEYS[6], ARGV[15])
  -- The message carries its lane score (broker.transport's score header): a restored or requeued copy goes
  -- back to this place.  The body is a JSON string (its quotes escaped), so the header is the only match.
  message = string.gsub(message, '"' .. SCORE_HEADER .. '": [-+.%deE]+', '"' .. SCORE_HEADER .. '": ' .. score, 1)
end
redis.call('ZADD', KEYS[1], score, message)
signal_lane(KEYS[7], ARGV[17])  -- wakes a consumer (broker.lanes)
if counts then redis.call('HINCRBY', counts, 'queued', 1) end
redis.call('HSET', KEYS[2], 'status', 'queued', 'lane', ARGV[3], 'enqueued_at', ARGV[4], 'score', score,
           'expected_tokens', ARGV[8])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[2], 'batch', ARGV[10]) end
if ARGV[11] and ARGV[11] ~= '' then redis.call('HSET', KEYS[2], 'tenant', ARGV[11]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'deadline', ARGV[6]) end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[2], 'deadline_bucket', ARGV[7])
  redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
  redis.call('HINCRBYFLOAT', KEYS[4], ARGV[7], ARGV[8])
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HINCRBY', KEYS[5], 'requests:' .. ARGV[3], 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'tokens:' .. ARGV[3], ARGV[9])
return 1
"""

# KEYS: state, deadline requests, deadline tokens[, batch counts]
# ARGV: worker id, started_at, state TTL.  Returns the attempt, 0 to drop the delivery.
_START = _LUA_COMMON + """
local counts = KEYS[4]
local wrong = wrong_type(with_counts({KEYS[1], 'hash', KEYS[2], 'hash', KEYS[3], 'hash'}, 4))
if wrong then return redis.error_reply(wrong) end
if ENDED[redis.call('HGET', KEYS[1], 'status')] then return 0 end
local closed = counts and redis.call('HGET', counts, 'closed')
if closed then
  -- Its batch was cancelled or expired while this message was in the lane or in a worker's prefetch.
  end_closed(KEYS[1], counts, closed, ARGV[2], KEYS[2], KEYS[3])
  return 0
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
set_status(KEYS[1], counts, 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return attempt
"""

# KEYS: state, events, completions, deadline requests, deadline tokens[, batch counts]
# ARGV: attempt, finished_at, result, done event ('' for a request nobody follows), completion, events TTL,
#       completions kept, state TTL, lane, enqueued_at (these two make a lost record again)
_FINISH = _LUA_COMMON + """
local counts = KEYS[6]
local wrong = wrong_type(with_counts({KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'list', KEYS[4], 'hash',
                                      KEYS[5], 'hash'}, 6))
if wrong then return redis.error_reply(wrong) end
local newest = superseded(KEYS[1], ARGV[1], ARGV[9], ARGV[10])
if newest then return newest end
set_status(KEYS[1], counts, 'done', 'finished_at', ARGV[2], 'result', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[8])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], '*', EVENT_FIELD, ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
release_deadline(KEYS[1], KEYS[4], KEYS[5])
return false
"""

# KEYS: state, events, deadline requests, deadline tokens[, batch counts]
# ARGV: attempt, finished_at, error, error event ('' for a request nobody follows), events TTL, state TTL,
#       status (failed; or cancelled | expired for a running request of a closed batch), lane, enqueued_at
_FAIL = _LUA_COMMON + """
local counts = KEYS[5]
local wrong = wrong_type(with_counts({KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'hash', KEYS[4], 'hash'}, 5))
if wrong then return redis.error_reply(wrong) end
local newest = superseded(KEYS[1], ARGV[1], ARGV[8], ARGV[9])
if newest then return newest end
set_status(KEYS[1], counts, ARGV[7], 'finished_at', ARGV[2], 'error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], '*', EVENT_FIELD, ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
release_deadline(KEYS[1], KEYS[3], KEYS[4])
return false
"""

# KEYS: state, events[, batch counts].  ARGV: attempt, preempted_at, preempted event, events TTL
_REQUEUE = _LUA_COMMON + """
local counts = KEYS[3]
local wrong = wrong_type(with_counts({KEYS[1], 'hash', KEYS[2], 'stream'}, 3))
if wrong then return redis.error_reply(wrong) end
local newest = superseded(KEYS[1], ARGV[1])
if newest then return newest end
set_status(KEYS[1], counts, 'queued', 'preempted_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'preemptions', 1)
-- For whoever reads the stream: this attempt ends here, unanswered; a later one starts over.
redis.call('XADD', KEYS[2], '*', EVENT_FIELD, ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return false
"""

# KEYS: state, events, deadline requests, deadline tokens, lane (or '' when no member is given)[, batch counts]
# ARGV: cancelled|expired, now, message, events TTL, state TTL, lane member
_END_QUEUED = _LUA_COMMON + """
local counts = KEYS[6]
local specs = {KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'hash', KEYS[4], 'hash'}
if ARGV[6] ~= '' then table.insert(specs, KEYS[5]); table.insert(specs, 'zset') end
local wrong = wrong_type(with_counts(specs, 6))
if wrong then return redis.error_reply(wrong) end
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[5], ARGV[6]) end
set_status(KEYS[1], counts, ARGV[1], 'finished_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
release_deadline(KEYS[1], KEYS[3], KEYS[4])
-- Whoever follows the request hears it ended (api/events.py: an error event of its current attempt).
redis.call('XADD', KEYS[2], '*', EVENT_FIELD,
           cjson.encode({type = 'error', attempt = attempt, status = ARGV[1], message = ARGV[3]}))
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# The client that followed a request went away (closed its stream or connection): end the request as
# cancelled whether it is queued (its message stays in the lane; `start` drops the delivery) or running (the
# worker's watch reads the status and aborts the engine request; the attempt's own finish or abort is then
# fenced out).  Only followed requests are abandoned, never a Batch API batch's, so there are no batch counters.
# KEYS: state, events, deadline requests, deadline tokens.  ARGV: now, message, events TTL, state TTL
_ABANDON = _LUA_COMMON + """
local wrong = wrong_type({KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'hash', KEYS[4], 'hash'})
if wrong then return redis.error_reply(wrong) end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
set_status(KEYS[1], nil, 'cancelled', 'finished_at', ARGV[1], 'error', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
release_deadline(KEYS[1], KEYS[3], KEYS[4])
redis.call('XADD', KEYS[2], '*', EVENT_FIELD,
           cjson.encode({type = 'error', attempt = attempt, status = 'cancelled', message = ARGV[2]}))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# Close a batch's part of a lane: end its queued requests and take their messages out, one slice of the
# lane per call.  The requests' state keys are found in the lane (their messages' task ids), so they are
# not declared: this needs a standalone Redis (or Sentinel), as kombu's Redis transport does.
# KEYS: lane, deadline requests, deadline tokens, batch counts, batch totals
# ARGV: batch id, cancelled|expired, now, first rank, slice length, state key prefix
# Returns {the rank the next call starts at, requests ended, 1 when the slice reached the lane's end}.
_CLOSE_BATCH_SLICE = _LUA_COMMON + """
local wrong = wrong_type({KEYS[1], 'zset', KEYS[2], 'hash', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'hash'})
if wrong then return redis.error_reply(wrong) end
local first = tonumber(ARGV[4])
local members = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[5]) - 1)
local prefix = ARGV[1] .. '-'
local ended, removed = 0, 0
for _, member in ipairs(members) do
  -- A cheap test first: the batch id appears in the headers of its requests' messages.
  if string.find(member, prefix, 1, true) then
    local ok, message = pcall(cjson.decode, member)
    local id = ok and type(message) == 'table' and type(message.headers) == 'table' and message.headers.id
    if type(id) == 'string' and string.sub(id, 1, #prefix) == prefix then
      local state = ARGV[6] .. id
      local status = redis.call('HGET', state, 'status')
      if status == 'queued' then
        end_closed(state, KEYS[4], ARGV[2], ARGV[3], KEYS[2], KEYS[3])
        ended = ended + 1
      end
      if status == 'queued' or ENDED[status] then
        redis.call('ZREM', KEYS[1], member)
        removed = removed + 1
      end
    end
  end
end
return {first + #members - removed, ended, #members < tonumber(ARGV[5]) and 1 or 0}
"""

_SCRIPTS = {"abandon": _ABANDON, "enqueue": _ENQUEUE, "start": _START, "finish": _FINISH, "fail": _FAIL, "requeue": _REQUEUE,
            "end_queued": _END_QUEUED, "close_batch_slice": _CLOSE_BATCH_SLICE}


# --- the calls, shared by the sync and async ledgers ------------------------------------------------
@dataclass(frozen=True)
class _Call:
    script: str
    keys: list
    args: list


def _counts(batch_id: str | None) -> list[str]:
    """The batch counters' and the totals' keys, to append (last) to a script's keys, for a request of a batch."""
    return [keys.batch_counts_key(batch_id), keys.BATCH_REQUESTS_ENDED] if batch_id else []


def _enqueue_call(queue: str, message: str | bytes, score: float, entry: LedgerEntry) -> _Call:
    if not math.isfinite(score):
        raise ValueError(f"ledger entry {entry.request_id}: score is {score}")
    return _Call("enqueue",
                 [keys.lane_key(queue), keys.request_key(entry.request_id), keys.DEADLINE_REQUESTS,
                  keys.DEADLINE_TOKENS, keys.ARRIVALS, keys.fair_clocks_key(queue), keys.lane_signal_key(queue),
                  *_counts(entry.batch_id)],
                 [message, repr(float(score)), queue, _number(entry.enqueued_at), entry.state_ttl_s(),
                  _number(entry.deadline), entry.deadline_bucket or "", _number(entry.expected_tokens),
                  _number(entry.arrival_tokens), entry.batch_id or "", entry.tenant or "",
                  _number(entry.tenant_weight), _number(entry.fair_cost_s), _number(entry.fair_round_s),
                  FAIR_CLOCKS_TTL_S, "1" if entry.fair else "", SIGNAL_TOKENS_KEPT])


def _start_call(request_id: str, worker_id: str, now: float, batch_id: str | None) -> _Call:
    return _Call("start", [keys.request_key(request_id), keys.DEADLINE_REQUESTS, keys.DEADLINE_TOKENS,
                           *_counts(batch_id)],
                 [worker_id, _number(now), REQUEST_STATE_TTL_S])


def _finish_call(request: GenerationRequest, attempt: int, record: dict, text: str, completion: dict) -> _Call:
    request_id = request.request_id
    return _Call("finish",
                 [keys.request_key(request_id), keys.request_events_key(request_id), keys.COMPLETIONS,
                  keys.DEADLINE_REQUESTS, keys.DEADLINE_TOKENS, *_counts(request.batch_id)],
                 [attempt, _number(record["finished_at"]),
                  # The answer stays with the request state (24 h) for clients that poll instead of waiting.
                  json.dumps({**record, "text": text}),
                  encode_event({"type": "done", **record}) if request.followed else "",
                  json.dumps(completion), EVENTS_TTL_S, COMPLETIONS_KEPT, REQUEST_STATE_TTL_S,
                  request.slo, _number(request.enqueued_at)])  # to make a lost record again


def _fail_call(request: GenerationRequest, attempt: int, error: str, now: float | None,
               status: RequestStatus = RequestStatus.failed) -> _Call:
    request_id = request.request_id
    event = {"type": "error", "attempt": attempt, "message": error}
    if status is not RequestStatus.failed:
        event["status"] = status.value
    return _Call("fail",
                 [keys.request_key(request_id), keys.request_events_key(request_id), keys.DEADLINE_REQUESTS,
                  keys.DEADLINE_TOKENS, *_counts(request.batch_id)],
                 [attempt, _number(_now(now)), error, encode_event(event) if request.followed else "",
                  EVENTS_TTL_S, REQUEST_STATE_TTL_S, status.value, request.slo, _number(request.enqueued_at)])


def _requeue_call(request: GenerationRequest, attempt: int, worker_id: str, now: float | None) -> _Call:
    request_id = request.request_id
    return _Call("requeue", [keys.request_key(request_id), keys.request_events_key(request_id),
                             *_counts(request.batch_id)],
                 [attempt, _number(_now(now)), encode_event({"type": "preempted", "attempt": attempt, "worker": worker_id}),
                  EVENTS_TTL_S])


def _end_queued_call(status: RequestStatus, request_id: str, now: float, lane: str | None,
                     member: str | bytes | None, message: str, batch_id: str | None) -> _Call:
    if (lane is None) != (member is None):
        raise ValueError("pass both the lane and the lane member, or neither")
    call_keys = [keys.request_key(request_id), keys.request_events_key(request_id), keys.DEADLINE_REQUESTS,
                 keys.DEADLINE_TOKENS, keys.lane_key(lane) if lane is not None else keys.request_key(request_id),
                 *_counts(batch_id)]
    args = [status.value, _number(now), message, EVENTS_TTL_S, REQUEST_STATE_TTL_S, member or ""]
    return _Call("end_queued", call_keys, args)


def _abandon_call(request_id: str, now: float) -> _Call:
    return _Call("abandon", [keys.request_key(request_id), keys.request_events_key(request_id),
                             keys.DEADLINE_REQUESTS, keys.DEADLINE_TOKENS],
                 [_number(now), ABANDONED_MESSAGE, EVENTS_TTL_S, REQUEST_STATE_TTL_S])


def _close_batch_slice_call(batch_id: str, lane: str, status: RequestStatus, now: float, first: int,
                            length: int) -> _Call:
    if status not in (RequestStatus.cancelled, RequestStatus.expired):
        raise ValueError(f"a batch closes as cancelled or expired, not {status.value}")
    return _Call("close_batch_slice",
                 [keys.lane_key(lane), keys.DEADLINE_REQUESTS, keys.DEADLINE_TOKENS, *_counts(batch_id)],
                 [batch_id, status.value, _number(now), first, length, keys.request_key("")])


def _fenced(reply) -> int | None:
    return None if reply is None else int(reply)


def _record(request_id: str, raw) -> RequestRecord | None:
    return RequestRecord.from_redis(request_id, raw) if raw else None


@dataclass(frozen=True)
class SliceClosed:
    """What one :meth:`AsyncLedger.close_batch_slice` call did."""

    next_rank: int  # where the next slice starts
    ended: int  # queued requests of the batch it ended
    at_end: bool  # the slice reached the end of the lane


CLOSE_SLICE_LENGTH = 500  # lane members one close_batch_slice call reads: a few ms of Redis time


class Ledger:
    """The ledger over a sync ``redis.Redis`` (the API's publish path, the worker's Celery threads)."""

    def __init__(self, client):
        self.client = client
        self._scripts = {name: client.register_script(source) for name, source in _SCRIPTS.items()}

    def _run(self, call: _Call, client=None):
        return self._scripts[call.script](keys=call.keys, args=call.args, client=client)

    def enqueue(self, queue: str, message: str | bytes, score: float, entry: LedgerEntry) -> bool:
        """Put a kombu message into its lane and record the request queued; False (and nothing written)
        when the request is already recorded, i.e. a publish retried after its first try got through, or
        when its batch was closed meanwhile."""
        return bool(self._run(_enqueue_call(queue, message, score, entry)))

    def enqueue_many(self, items: list[tuple[str, str | bytes, float, LedgerEntry]],
                     wait: ReplicaWait | None = None) -> list[bool]:
        """``enqueue`` for many (queue, message, score, entry) in one round trip (a pipeline, not one
        transaction: each request still enters whole or not at all).  With ``wait``, the same round trip
        ends with ``WAIT`` (on the connection that wrote, as WAIT requires): it returns once enough
        replicas have the writes, or after the timeout (then a warning; the requests stay queued)."""
        calls = [_enqueue_call(*item) for item in items]  # every ValueError before the first write
        with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                self._run(call, client=pipe)
            if wait:
                wait.add_to(pipe)
            replies = pipe.execute()
        if wait:
            wait.check(replies.pop(), len(calls))
        return [bool(reply) for reply in replies]

    def start(self, request_id: str, worker_id: str, now: float, batch_id: str | None = None) -> int | None:
        return int(self._run(_start_call(request_id, worker_id, now, batch_id))) or None

    def finish(self, request: GenerationRequest, attempt: int, record: dict, text: str,
               completion: dict) -> int | None:
        return _fenced(self._run(_finish_call(request, attempt, record, text, completion)))

    def fail(self, request: GenerationRequest, attempt: int, error: str,
             now: float | None = None) -> int | None:
        return _fenced(self._run(_fail_call(request, attempt, error, now)))

    def requeue(self, request: GenerationRequest, attempt: int, worker_id: str,
                now: float | None = None) -> int | None:
        return _fenced(self._run(_requeue_call(request, attempt, worker_id, now)))

    def cancel(self, request_id: str, now: float, lane: str | None = None, member: str | bytes | None = None,
               batch_id: str | None = None) -> bool:
        return bool(self._run(_end_queued_call(RequestStatus.cancelled, request_id, now, lane, member,
                                               "the request was cancelled", batch_id)))

    def expire(self, request_id: str, now: float, lane: str | None = None, member: str | bytes | None = None,
               batch_id: str | None = None) -> bool:
        return bool(self._run(_end_queued_call(RequestStatus.expired, request_id, now, lane, member,
                                               "the request expired before it ran", batch_id)))

    def read(self, request_id: str) -> RequestRecord | None:
        return _record(request_id, self.client.hgetall(keys.request_key(request_id)))


class AsyncLedger:
    """The ledger over a ``redis.asyncio.Redis`` (the worker's engine loop, the API's routes)."""

    def __init__(self, client):
        self.client = client
        self._scripts = {name: client.register_script(source) for name, source in _SCRIPTS.items()}

    async def _run(self, call: _Call):
        return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def start(self, request_id: str, worker_id: str, now: float, batch_id: str | None = None) -> int | None:
        return int(await self._run(_start_call(request_id, worker_id, now, batch_id))) or None

    async def finish(self, request: GenerationRequest, attempt: int, record: dict, text: str,
                     completion: dict) -> int | None:
        return _fenced(await self._run(_finish_call(request, attempt, record, text, completion)))

    async def fail(self, request: GenerationRequest, attempt: int, error: str,
                   now: float | None = None) -> int | None:
        return _fenced(await self._run(_fail_call(request, attempt, error, now)))

    async def abort(self, request: GenerationRequest, attempt: int, status: RequestStatus,
                    now: float | None = None) -> int | None:
        """End a running request of a closed batch as ``status`` (cancelled or expired); fenced as ``fail``."""
        if status not in (RequestStatus.cancelled, RequestStatus.expired):
            raise ValueError(f"a running request is aborted as cancelled or expired, not {status.value}")
        return _fenced(await self._run(_fail_call(request, attempt, f"the request's batch was {status.value}", now,
                                                  status)))

    async def requeue(self, request: GenerationRequest, attempt: int, worker_id: str,
                      now: float | None = None) -> int | None:
        return _fenced(await self._run(_requeue_call(request, attempt, worker_id, now)))

    async def cancel(self, request_id: str, now: float, lane: str | None = None,
                     member: str | bytes | None = None, batch_id: str | None = None) -> bool:
        return bool(await self._run(_end_queued_call(RequestStatus.cancelled, request_id, now, lane, member,
                                                     "the request was cancelled", batch_id)))

    async def expire(self, request_id: str, now: float, lane: str | None = None,
                     member: str | bytes | None = None, batch_id: str | None = None) -> bool:
        return bool(await self._run(_end_queued_call(RequestStatus.expired, request_id, now, lane, member,
                                                     "the request expired before it ran", batch_id)))

    async def abandon(self, request_id: str, now: float | None = None) -> bool:
        """The client following a queued or running request went away: end it as cancelled (a running
        attempt is aborted by its worker's watch).  False when it had ended already."""
        return bool(await self._run(_abandon_call(request_id, _now(now))))

    async def close_batch_slice(self, batch_id: str, lane: str, status: RequestStatus, now: float, first: int,
                                length: int = CLOSE_SLICE_LENGTH) -> SliceClosed:
        """End the queued requests of a closed batch found in one slice of ``lane`` (ranks ``first`` on),
        taking their messages out.  Call again from ``next_rank`` until ``at_end``."""
        next_rank, ended, at_end = await self._run(_close_batch_slice_call(batch_id, lane, status, now, first,
                                                                           length))
        return SliceClosed(int(next_rank), int(ended), bool(at_end))

    async def read(self, request_id: str) -> RequestRecord | None:
        return _record(request_id, await self.client.hgetall(keys.request_key(request_id)))

    async def statuses(self, request_ids: list[str]) -> list[RequestStatus | None]:
        """Each request's status (None: no record), in one round trip (a worker's abort watch)."""
        if not request_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hget(keys.request_key(request_id), "status")
            raws = await pipe.execute()
        return [None if raw is None else RequestStatus(_text(raw)) for raw in raws]

    async def read_many(self, request_ids: list[str]) -> list[RequestRecord | None]:
        """Many requests' state in one round trip (a batch's finalization reads its requests this way)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hgetall(keys.request_key(request_id))
            raws = await pipe.execute()
        return [_record(request_id, raw) for request_id, raw in zip(request_ids, raws)]
