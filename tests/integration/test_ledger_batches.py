"""The request ledger's batch accounting on real Redis 7 and Valkey: a Batch API request moves in its batch's
counters with every transition, a closed batch's requests are ended instead of started, a bulk publish
enqueues each request once, and closing a batch empties its part of the lane and nothing else."""

from __future__ import annotations

import json

import pytest
import redis

from api.enqueue import Enqueuer
from broker.batches import BatchCounts, request_id_of
from broker.celery_app import create_app
from broker.ledger import RequestStatus
from broker.messages import GenerationRequest, SamplingOptions
from core import keys
from core.settings import Settings
from tests.integration.test_ledger import BUCKET, DEADLINE, NOW, _SyncView, deadline_counts, events

pytestmark = pytest.mark.integration

BATCH = "batch_abc"


def batch_request(line: int, batch_id: str = BATCH) -> GenerationRequest:
    return GenerationRequest(request_id=request_id_of(batch_id, line), model="tiny", kind="chat",
                             prompt_token_ids=[1, 2, 3, line], sampling=SamplingOptions(max_tokens=20), slo="batch",
                             deadline=DEADLINE, enqueued_at=NOW, score=NOW + line * 1e-6,
                             predicted_output_tokens=8.0, batch_id=batch_id)


@pytest.fixture
def client(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    client.flushdb()
    return client


@pytest.fixture
def ledger(any_redis_url):
    view = _SyncView(any_redis_url)  # the AsyncLedger: the worker's and the batch runner's
    yield view
    view.close()


@pytest.fixture
def enqueuer(any_redis_url, client):
    return Enqueuer(create_app(Settings(redis_url=any_redis_url)), client, {}, retry_after_s=1)


def counts(client, batch_id: str = BATCH) -> BatchCounts:
    return BatchCounts.from_redis(client.hgetall(keys.batch_counts_key(batch_id)))


def ended_totals(client) -> dict:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.BATCH_REQUESTS_ENDED).items()}


def test_a_bulk_publish_enqueues_each_request_once_and_counts_it(client, enqueuer):
    requests = [batch_request(line) for line in range(1, 1201)]
    assert enqueuer.enqueue_many(requests) == 1200
    assert enqueuer.enqueue_many(requests[:700]) == 0  # resumed after a crash: nothing enters twice
    assert client.zcard(keys.lane_key("batch")) == 1200
    assert counts(client) == BatchCounts(queued=1200)
    assert deadline_counts(client) == (1200, 1200 * 8.0)
    members = client.zrange(keys.lane_key("batch"), 0, -1)
    assert [json.loads(m)["headers"]["id"] for m in members] == [r.request_id for r in requests]  # file order
    message = json.loads(members[0])
    assert message["headers"]["task"] == "sluice.generate" and "sluice_ledger" not in message["headers"]
    body = json.loads(message["body"])  # stored as JSON text: no base64
    assert GenerationRequest.model_validate(body[0][0]) == requests[0].model_copy(update={"prompt_text": None})
    state = client.hgetall(keys.request_key(requests[0].request_id))
    assert state[b"batch"] == BATCH.encode() and state[b"status"] == b"queued"


def test_the_batch_counters_follow_every_transition(client, enqueuer, ledger):
    first, second, third = (batch_request(line) for line in (1, 2, 3))
    enqueuer.enqueue_many([first, second, third])
    attempt = ledger.start(first.request_id, "w1", NOW + 1, batch_id=BATCH)
    assert counts(client) == BatchCounts(queued=2, running=1)
    record = {"finished_at": NOW + 2, "worker": "w1", "attempt": attempt}
    assert ledger.finish(first, attempt, record, text="hi", completion={}) is None
    assert counts(client) == BatchCounts(queued=2, done=1)
    assert events(client, first.request_id) == []  # nobody follows a batch request: no events written
    attempt = ledger.start(second.request_id, "w1", NOW + 3, batch_id=BATCH)
    assert ledger.requeue(second, attempt, "w1") is None
    assert counts(client) == BatchCounts(queued=2, done=1)
    attempt = ledger.start(second.request_id, "w2", NOW + 4, batch_id=BATCH)
    assert ledger.fail(second, attempt, "boom") is None
    assert ledger.cancel(third.request_id, NOW + 5, batch_id=BATCH)
    assert counts(client) == BatchCounts(done=1, failed=1, cancelled=1)
    assert ended_totals(client) == {"done": 1, "failed": 1, "cancelled": 1}
    assert deadline_counts(client) == (0, 0.0)


def test_a_closed_batch_takes_no_more_requests_and_its_deliveries_are_ended(client, enqueuer, ledger):
    queued, running = batch_request(1), batch_request(2)
    enqueuer.enqueue_many([queued, running])
    attempt = ledger.start(running.request_id, "w1", NOW + 1, batch_id=BATCH)
    client.hset(keys.batch_counts_key(BATCH), "closed", "cancelled")
    assert enqueuer.enqueue_many([batch_request(3)]) == 0  # cancelled during its enqueue
    assert not client.exists(keys.request_key(request_id_of(BATCH, 3)))
    # A delivery of a queued request of the closed batch: ended, not started.
    assert ledger.start(queued.request_id, "w1", NOW + 2, batch_id=BATCH) is None
    assert ledger.read(queued.request_id).status is RequestStatus.cancelled
    # A running one is aborted by its worker: fenced like fail, counted as cancelled.
    assert ledger.abort(running, attempt - 1, RequestStatus.cancelled) == attempt  # a stale attempt: nothing
    assert ledger.abort(running, attempt, RequestStatus.cancelled) is None
    assert ledger.read(running.request_id).status is RequestStatus.cancelled
    assert counts(client) == BatchCounts(cancelled=2, closed="cancelled")
    assert deadline_counts(client) == (0, 0.0)
    with pytest.raises(ValueError):
        ledger.abort(running, attempt, RequestStatus.done)


def test_closing_a_batch_empties_its_part_of_the_lane_and_leaves_the_rest(client, enqueuer, ledger):
    ours = [batch_request(line) for line in range(1, 1301)]
    others = [batch_request(line, batch_id="batch_other") for line in range(1, 401)]
    # Interleaved with another batch's requests, and a request whose prompt text names our batch.
    enqueuer.enqueue_many([r for pair in zip(ours, others) for r in pair] + ours[len(others):])
    lookalike = GenerationRequest(request_id="chatcmpl-1", model="tiny", kind="chat", prompt_token_ids=[1],
                                  prompt_text=f"{BATCH}-7", sampling=SamplingOptions(max_tokens=5), slo="batch",
                                  enqueued_at=NOW, score=NOW)
    Enqueuer(enqueuer.celery_app, client, {}, 1, keep_prompt_text=True).enqueue(lookalike)
    started = ledger.start(ours[0].request_id, "w1", NOW + 1, batch_id=BATCH)
    taken = next(m for m in client.zrange(keys.lane_key("batch"), 0, -1)
                 if json.loads(m)["headers"]["id"] == ours[0].request_id)
    client.zrem(keys.lane_key("batch"), taken)  # the worker that started it took it from the lane
    client.hset(keys.batch_counts_key(BATCH), "closed", "expired")

    first, ended, slices = 0, 0, 0
    while True:
        sliced = ledger.close_batch_slice(BATCH, "batch", RequestStatus.expired, NOW + 10, first, length=300)
        ended, slices, first = ended + sliced.ended, slices + 1, sliced.next_rank
        if sliced.at_end:
            break
    assert ended == 1299 and slices > 1
    remaining = [json.loads(m)["headers"]["id"] for m in client.zrange(keys.lane_key("batch"), 0, -1)]
    assert sorted(remaining) == sorted([r.request_id for r in others] + ["chatcmpl-1"])
    assert counts(client) == BatchCounts(running=1, expired=1299, closed="expired")
    assert counts(client, "batch_other") == BatchCounts(queued=400)
    assert ledger.read(ours[1].request_id).status is RequestStatus.expired
    assert started == 1 and ledger.read(ours[0].request_id).status is RequestStatus.running
    assert int(client.hget(keys.DEADLINE_REQUESTS, BUCKET)) == 1 + 400  # the running one and the other batch's
    assert ended_totals(client) == {"expired": 1299}
