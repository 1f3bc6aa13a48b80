"""The request ledger on real Redis 7 and Valkey: each transition's effect, fencing, cancel, and a publish
that fails half-way leaving nothing behind."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from api.enqueue import Enqueuer
from broker import deadlines
from broker.celery_app import create_app
from broker.ledger import (LEDGER_HEADER, REQUEST_STATE_TTL_S, AsyncLedger, Ledger, LedgerEntry, RequestRecord,
                           RequestStatus)
from broker.messages import GenerationRequest, SamplingOptions
from broker.request_events import EVENTS_TTL_S
from broker.transport import SCORE_HEADER
from core import keys
from core.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
DEADLINE = NOW + 3600
BUCKET = deadlines.deadline_bucket(DEADLINE)


def make_request(request_id: str = "req-1", slo: str = "batch", deadline: float | None = DEADLINE,
                 score: float = 42.5) -> GenerationRequest:
    return GenerationRequest(request_id=request_id, model="tiny", kind="completion", prompt_token_ids=[1, 2, 3],
                             sampling=SamplingOptions(max_tokens=20), slo=slo, deadline=deadline,
                             enqueued_at=NOW, score=score, predicted_output_tokens=8.0)


def enqueue(client: redis.Redis, request: GenerationRequest, message: str = '{"m": 1}') -> bool:
    return Ledger(client).enqueue(request.slo, message, request.score, LedgerEntry.for_request(request))


def deadline_counts(client: redis.Redis) -> tuple[int, float]:
    requests = client.hget(keys.DEADLINE_REQUESTS, BUCKET)
    tokens = client.hget(keys.DEADLINE_TOKENS, BUCKET)
    return int(requests or 0), float(tokens or 0)


def events(client: redis.Redis, request_id: str) -> list[dict]:
    return [json.loads(fields[b"event"]) for _id, fields in client.xrange(keys.request_events_key(request_id))]


class _SyncView:
    """An AsyncLedger driven from sync test code on one event loop, so each test runs against both."""

    def __init__(self, url: str):
        self._loop = asyncio.new_event_loop()
        self._client = aioredis.Redis.from_url(url)
        self._ledger = AsyncLedger(self._client)

    def __getattr__(self, name):
        method = getattr(self._ledger, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def ledger(request, any_redis_url):
    if request.param == "sync":
        yield Ledger(redis.Redis.from_url(any_redis_url))
        return
    view = _SyncView(any_redis_url)
    yield view
    view.close()


@pytest.fixture
def client(any_redis_url):
    return redis.Redis.from_url(any_redis_url)


# --- enqueue ------------------------------------------------------------------------------------
def test_a_publish_through_celery_writes_lane_state_deadline_and_arrivals_together(any_redis_url, client):
    app = create_app(Settings(redis_url=any_redis_url))
    request = make_request()
    Enqueuer(app, client, {}, retry_after_s=1).enqueue(request)

    [(member, score)] = client.zrange(keys.lane_key("batch"), 0, -1, withscores=True)
    message = json.loads(member)
    assert score == 42.5
    assert message["headers"]["id"] == request.request_id
    assert message["headers"][SCORE_HEADER] == 42.5
    assert LEDGER_HEADER not in message["headers"]  # a redelivered copy must not enqueue again
    record = Ledger(client).read(request.request_id)
    assert record == RequestRecord(request_id="req-1", status=RequestStatus.queued, lane="batch", enqueued_at=NOW,
                                   score=42.5, deadline=DEADLINE)
    # A request with a deadline is kept a day past it (a batch's queued requests are expired at its deadline).
    assert REQUEST_STATE_TTL_S < client.ttl(keys.request_key(request.request_id)) <= REQUEST_STATE_TTL_S + 3600
    assert deadline_counts(client) == (1, 8.0)
    assert client.hgetall(keys.ARRIVALS) == {b"requests:batch": b"1", b"tokens:batch": b"11"}


def test_an_interactive_request_counts_arrivals_but_no_deadline_work(client):
    assert enqueue(client, make_request(slo="interactive", deadline=None))
    assert client.exists(keys.DEADLINE_REQUESTS, keys.DEADLINE_TOKENS) == 0
    assert client.hgetall(keys.ARRIVALS) == {b"requests:interactive": b"1", b"tokens:interactive": b"11"}
    assert client.zcard(keys.lane_key("interactive")) == 1


@pytest.mark.parametrize("broken", [keys.lane_key("batch"), keys.ARRIVALS, keys.DEADLINE_TOKENS,
                                    keys.request_key("req-1")])
def test_a_publish_that_fails_leaves_no_request(any_redis_url, client, broken):
    """Kill the publish step between state and lane: a key the script writes last (or first) holds the wrong
    type, so Redis refuses the publish; no state, deadline work, arrival or message may be left behind."""
    client.set(broken, "not what the ledger expects")
    app = create_app(Settings(redis_url=any_redis_url))
    with pytest.raises(Exception, match="WRONGTYPE"):
        Enqueuer(app, client, {}, retry_after_s=1).enqueue(make_request())
    client.delete(broken)
    assert client.keys("sluice:*") == []


@pytest.mark.parametrize("broken", [keys.lane_key("batch"), keys.ARRIVALS, keys.DEADLINE_REQUESTS,
                                    keys.fair_clocks_key("batch")])
def test_the_enqueue_script_checks_every_key_before_its_first_write(client, broken):
    client.set(broken, "corrupt")
    with pytest.raises(redis.ResponseError, match=f"WRONGTYPE {broken} holds a string"):
        enqueue(client, make_request())
    client.delete(broken)
    assert client.keys("sluice:*") == []


def test_a_publish_to_an_unreachable_broker_leaves_no_request(client):
    """The old enqueue wrote the state first and published second: a broker that was not there left a
    queued request and its deadline tokens forever."""
    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.conf.task_publish_retry = False
    with pytest.raises(Exception):
        Enqueuer(app, client, {}, retry_after_s=1).enqueue(make_request())
    assert client.keys("sluice:*") == []


def test_a_retried_publish_enqueues_once(client):
    request = make_request()
    assert enqueue(client, request, '{"try": 1}')
    assert not enqueue(client, request, '{"try": 2}')  # kombu retried after the first try got through
    assert client.zrange(keys.lane_key("batch"), 0, -1) == [b'{"try": 1}']
    assert deadline_counts(client) == (1, 8.0)
    assert client.hget(keys.ARRIVALS, "requests:batch") == b"1"


# --- the worker's transitions -----------------------------------------------------------------------
def test_start_counts_attempts_and_marks_running(ledger, client):
    request = make_request()
    enqueue(client, request)
    assert ledger.start(request.request_id, "w1", NOW + 1) == 1
    record = ledger.read(request.request_id)
    assert (record.status, record.attempt, record.worker, record.started_at) == (RequestStatus.running, 1, "w1", NOW + 1)
    assert ledger.start(request.request_id, "w2", NOW + 2) == 2  # redelivered after w1 was presumed dead
    assert ledger.read(request.request_id).worker == "w2"


def done_record(request: GenerationRequest, attempt: int) -> dict:
    return {"request_id": request.request_id, "attempt": attempt, "worker": "w1", "finished_at": NOW + 5,
            "output_tokens": 2}


def test_finish_answers_logs_the_completion_and_releases_the_deadline(ledger, client):
    request = make_request()
    enqueue(client, request)
    attempt = ledger.start(request.request_id, "w1", NOW + 1)
    assert ledger.finish(request, attempt, done_record(request, attempt), "hi", {"request_id": "req-1"}) is None
    record = ledger.read(request.request_id)
    assert record.status is RequestStatus.done and record.status.ended
    assert record.finished_at == NOW + 5
    assert record.result == {**done_record(request, attempt), "text": "hi"}
    assert events(client, request.request_id) == [{"type": "done", **done_record(request, attempt)}]
    assert 0 < client.ttl(keys.request_events_key(request.request_id)) <= EVENTS_TTL_S
    assert [json.loads(c) for c in client.lrange(keys.COMPLETIONS, 0, -1)] == [{"request_id": "req-1"}]
    assert deadline_counts(client) == (0, 0.0)
    # Redelivered after the worker finished but died before its ack: the delivery is dropped.
    assert ledger.start(request.request_id, "w2", NOW + 9) is None
    assert ledger.read(request.request_id).attempt == 1


def test_only_the_newest_attempt_answers(ledger, client):
    request = make_request()
    enqueue(client, request)
    stale = ledger.start(request.request_id, "w1", NOW + 1)
    newest = ledger.start(request.request_id, "w2", NOW + 2)
    assert ledger.finish(request, stale, done_record(request, stale), "old", {"stale": True}) == newest
    assert ledger.fail(request, stale, "boom", NOW + 3) == newest
    assert ledger.requeue(request, stale, "w1", NOW + 3) == newest
    assert ledger.read(request.request_id).status is RequestStatus.running
    assert events(client, request.request_id) == []
    assert client.llen(keys.COMPLETIONS) == 0
    assert deadline_counts(client) == (1, 8.0)
    assert ledger.finish(request, newest, done_record(request, newest), "new", {"stale": False}) is None
    # The request has ended: nothing answers again, not even its own attempt.
    assert ledger.fail(request, newest, "late", NOW + 9) == newest
    assert ledger.read(request.request_id).status is RequestStatus.done
    assert deadline_counts(client) == (0, 0.0)


def test_an_attempt_whose_start_or_enqueue_was_lost_still_answers(ledger, client):
    # A Sentinel failover promotes a replica that never received the worker's start: the record says
    # attempt 0 (queued) while the worker runs attempt 1. Its finish is the newest there is, so it lands.
    request = make_request()
    enqueue(client, request)
    attempt = ledger.start(request.request_id, "w1", NOW + 1)
    client.hset(keys.request_key(request.request_id), mapping={"attempt": attempt - 1, "status": "queued"})
    assert ledger.finish(request, attempt, done_record(request, attempt), "kept", {}) is None
    record = ledger.read(request.request_id)
    assert (record.status, record.attempt) == (RequestStatus.done, attempt)
    assert deadline_counts(client) == (0, 0.0)
    # Nothing answers after the end, and an older attempt never did.
    assert ledger.fail(request, attempt + 1, "late", NOW + 9) == attempt
    # A record that is gone altogether (its enqueue lost at a failover, or expired queued): a requeue takes
    # nothing, but the answer is the only one there is, so it makes the record again and is delivered.
    client.delete(keys.request_key(request.request_id))
    assert ledger.requeue(request, 5, "w1", NOW + 10) == 0
    assert not client.exists(keys.request_key(request.request_id))
    assert ledger.finish(request, 5, done_record(request, 5), "found", {}) is None
    record = ledger.read(request.request_id)
    assert (record.status, record.attempt, record.lane, record.enqueued_at) == (
        RequestStatus.done, 5, request.slo, request.enqueued_at)
    assert events(client, request.request_id)[-1]["type"] == "done"
    # ... and, being ended, takes no other answer.
    assert ledger.finish(request, 5, done_record(request, 5), "again", {}) == 5


def test_fail_records_the_error_and_releases_the_deadline(ledger, client):
    request = make_request()
    enqueue(client, request)
    attempt = ledger.start(request.request_id, "w1", NOW + 1)
    assert ledger.fail(request, attempt, "engine died", NOW + 2) is None
    record = ledger.read(request.request_id)
    assert (record.status, record.error, record.finished_at) == (RequestStatus.failed, "engine died", NOW + 2)
    assert events(client, request.request_id) == [{"type": "error", "attempt": 1, "message": "engine died"}]
    assert deadline_counts(client) == (0, 0.0)
    assert ledger.start(request.request_id, "w2", NOW + 3) is None


def test_requeue_puts_a_preempted_request_back_in_the_queue(ledger, client):
    request = make_request()
    enqueue(client, request)
    attempt = ledger.start(request.request_id, "w1", NOW + 1)
    assert ledger.requeue(request, attempt, "w1", NOW + 2) is None
    record = ledger.read(request.request_id)
    assert (record.status, record.preemptions, record.attempt) == (RequestStatus.queued, 1, 1)
    assert client.hget(keys.request_key(request.request_id), "preempted_at") == repr(NOW + 2).encode()
    assert events(client, request.request_id) == [{"type": "preempted", "attempt": 1, "worker": "w1"}]
    assert deadline_counts(client) == (1, 8.0)  # still unfinished work
    assert ledger.start(request.request_id, "w1", NOW + 3) == 2


# --- cancel and expire ------------------------------------------------------------------------------
def test_cancel_of_a_queued_request_takes_it_out_of_its_lane(ledger, client):
    request = make_request()
    enqueue(client, request)
    [member] = client.zrange(keys.lane_key("batch"), 0, -1)
    assert ledger.cancel(request.request_id, NOW + 1, lane="batch", member=member)
    assert client.zcard(keys.lane_key("batch")) == 0
    record = ledger.read(request.request_id)
    assert (record.status, record.finished_at) == (RequestStatus.cancelled, NOW + 1)
    assert deadline_counts(client) == (0, 0.0)
    [event] = events(client, request.request_id)
    assert (event["type"], event["attempt"], event["status"]) == ("error", 0, "cancelled")
    assert not ledger.cancel(request.request_id, NOW + 2)  # once: the deadline is released once
    assert deadline_counts(client) == (0, 0.0)


def test_a_cancelled_message_left_in_its_lane_is_dropped_when_delivered(ledger, client):
    request = make_request()
    enqueue(client, request)
    attempt = ledger.start(request.request_id, "w1", NOW + 1)
    assert not ledger.cancel(request.request_id, NOW + 2)  # running: not a queued request's cancel
    ledger.requeue(request, attempt, "w1", NOW + 3)
    assert ledger.cancel(request.request_id, NOW + 4)  # preempted, queued again: cancellable
    assert client.zcard(keys.lane_key("batch")) == 1
    assert ledger.start(request.request_id, "w2", NOW + 5) is None
    assert ledger.read(request.request_id).status is RequestStatus.cancelled
    assert [e["type"] for e in events(client, request.request_id)] == ["preempted", "error"]


def test_expire_ends_a_queued_request(ledger, client):
    request = make_request()
    enqueue(client, request)
    assert ledger.expire(request.request_id, DEADLINE + 1)
    assert ledger.read(request.request_id).status is RequestStatus.expired
    assert deadline_counts(client) == (0, 0.0)
    assert client.zcard(keys.lane_key("batch")) == 1
    assert ledger.start(request.request_id, "w1", DEADLINE + 2) is None
    assert not ledger.expire("unknown", NOW)
    assert ledger.read("unknown") is None


def test_a_request_read_decodes_every_field(client):
    record = RequestRecord.from_redis("r", {b"status": b"done", b"lane": b"interactive", b"attempt": b"2",
                                           b"worker": b"w", b"enqueued_at": b"1.5", b"score": b"2.5",
                                           b"started_at": b"3.5", b"finished_at": b"4.5", b"preemptions": b"1",
                                           b"result": b'{"text": "x"}', b"error": b"", b"unknown": b"ignored"})
    assert record == RequestRecord(request_id="r", status=RequestStatus.done, lane="interactive", attempt=2,
                                   worker="w", enqueued_at=1.5, score=2.5, started_at=3.5, finished_at=4.5,
                                   preemptions=1, result={"text": "x"}, error=None)
    assert RequestStatus("queued") is RequestStatus.queued and RequestStatus.queued == "queued"
    assert not RequestStatus.running.ended


def test_a_ledger_entry_refuses_values_redis_would_reject_half_way():
    with pytest.raises(ValueError, match="expected_tokens"):
        LedgerEntry(request_id="r", enqueued_at=NOW, expected_tokens=float("inf"))
    entry = LedgerEntry.for_request(make_request())
    assert LedgerEntry.from_header(json.loads(json.dumps(entry.to_header()))) == entry
    assert (entry.deadline_bucket, entry.expected_tokens, entry.arrival_tokens) == (BUCKET, 8.0, 11.0)
