"""Fair share inside a lane on the real thing.

* The enqueue script mirrors ``broker.fair_share.decide`` exactly (Redis 7 and Valkey): random tenants,
  weights, costs, rounds and arrivals, with workers' pops between, one request at a time and in bulk.
* Two tenants share the batch lane of a real Celery + vLLM worker: A floods it with 5,000 requests, B sends
  20 later; B's requests finish within the fair-share bound (broker/fair_share.py), far ahead of A's flood.
"""

from __future__ import annotations

import json
import math
import random
import time

import pytest
import redis
from kombu.utils.json import dumps

from api.enqueue import Enqueuer
from broker.fair_share import FairClock, FairShareConfig, FairTicket, decide
from broker.ledger import Ledger, LedgerEntry, RequestStatus
from broker.messages import GenerationRequest, SamplingOptions
from broker.transport import SCORE_HEADER, message_score
from core import keys
from core.settings import Settings
from tests.conftest import wait_until
from tests.integration.conftest import wait_for_idle

pytestmark = pytest.mark.integration
T0 = 1_800_000_000.0
LANE = "batch"


class Model:
    """What the lane and the clocks must hold after each enqueue, computed by the pure decision."""

    def __init__(self):
        self.scores: dict[str, float] = {}  # request id -> lane score
        self.clocks: dict[str, FairClock] = {}

    def enqueue(self, request_id: str, base: float, ticket: FairTicket | None) -> float:
        if ticket is not None:
            head = min(self.scores.values()) if self.scores else None
            old = self.clocks.get(ticket.tenant, FairClock())
            decision = decide(FairClock(head, old.finish, old.round_start, old.round_arrival), ticket, base)
            self.clocks[ticket.tenant] = FairClock(None, decision.finish, decision.round_start,
                                                   decision.round_arrival)
            base = decision.score
        self.scores[request_id] = base
        return base


def message(request_id: str, score: float) -> str:
    """A stored kombu message as the transport hands it to the ledger (body first, a JSON string)."""
    body = json.dumps([[{"request_id": request_id, "score": score, "prompt_text": '"sluice_score": 1'}], {}, {}])
    return dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                  "headers": {"id": request_id, SCORE_HEADER: score, "lang": "py"}, "properties": {}})


def read_clocks(client: redis.Redis, lane: str, tenant: str) -> FairClock:
    finish, round_start, round_arrival = client.hmget(keys.fair_clocks_key(lane), f"finish:{tenant}",
                                                      f"round:{tenant}", f"first:{tenant}")
    return FairClock(None, *(float(value) if value is not None else None for value in (finish, round_start,
                                                                                         round_arrival)))


@pytest.mark.parametrize(("lane", "seed"), [("batch", 1), ("interactive", 2)])
def test_the_enqueue_script_mirrors_the_pure_decision(any_redis_url, lane, seed):
    client = redis.Redis.from_url(any_redis_url)
    ledger = Ledger(client)
    rng = random.Random(seed)
    model = Model()
    round_s = rng.choice([0.0, 25.6, 102.4])
    now = T0
    for step in range(400):
        now += rng.expovariate(2.0)
        if model.scores and rng.random() < 0.35:  # a worker takes the lowest score
            [(member, score)] = client.zpopmin(keys.lane_key(lane))
            taken = json.loads(member)["headers"]["id"]
            assert score == model.scores.pop(taken) == min([score, *model.scores.values()])
            continue
        tenant = rng.choice([None, "a", "a", "b", "c:with:colons"])
        ticket = None if tenant is None else FairTicket(tenant, rng.choice([0.5, 1.0, 3.0]), now,
                                                        rng.uniform(0, 200), round_s)
        base = now + rng.uniform(0, 200)
        request_id = f"r{step}"
        fields = {} if ticket is None else {"tenant": tenant, "fair": True, "tenant_weight": ticket.weight,
                                             "fair_cost_s": ticket.cost_s, "fair_round_s": ticket.round_s}
        entry = LedgerEntry(request_id=request_id, enqueued_at=now, **fields)
        if step % 50 == 49:  # the bulk path: the same script, pipelined
            items = [(lane, message(f"{request_id}-{i}", base + i), base + i,
                      LedgerEntry(request_id=f"{request_id}-{i}", enqueued_at=now, **fields)) for i in range(20)]
            assert ledger.enqueue_many(items) == [True] * 20
            expected = {f"{request_id}-{i}": model.enqueue(f"{request_id}-{i}", base + i, ticket) for i in range(20)}
        else:
            assert ledger.enqueue(lane, message(request_id, base), base, entry)
            expected = {request_id: model.enqueue(request_id, base, ticket)}
        for rid, score in expected.items():
            assert ledger.read(rid).score == score
        if tenant is not None:
            assert read_clocks(client, lane, tenant) == model.clocks[tenant]
    # Every message's score header is its lane score (a restored message goes back to its place), and the
    # body's text was not touched.
    members = client.zrange(keys.lane_key(lane), 0, -1, withscores=True)
    assert {json.loads(member)["headers"]["id"]: score for member, score in members} == model.scores
    for member, score in members:
        stored = json.loads(member)
        assert message_score(stored) == score
        assert json.loads(stored["body"])[0][0]["prompt_text"] == '"sluice_score": 1'
    assert 0 < client.ttl(keys.fair_clocks_key(lane)) <= 24 * 3600
    assert sum(1 for _, score in members) == len(model.scores) > 50


def test_a_request_without_a_tenant_leaves_message_score_and_clocks_alone(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    stored = message("plain", 123.25)
    assert Ledger(client).enqueue(LANE, stored, 123.25, LedgerEntry(request_id="plain", enqueued_at=T0))
    assert client.zrange(keys.lane_key(LANE), 0, -1, withscores=True) == [(stored.encode(), 123.25)]
    assert not client.exists(keys.fair_clocks_key(LANE))


# --- two tenants on a real worker -------------------------------------------------------------------
FLOOD = 5000
LATER = 20
COST_TOKENS = 64  # predicted = max_tokens: every request costs c = 64 / aging rate in the score
HELD = 4  # the worker's admission limit while it serves the two tenants
MODEL = "sluice-tiny-llama"


def tenant_requests(tenant: str, count: int, model: str) -> list[GenerationRequest]:
    now = time.time()
    return [GenerationRequest(
        request_id=f"{tenant}-{index}", model=model, kind="completion", prompt_token_ids=[1, 22557, 1526],
        slo=LANE, sampling=SamplingOptions(max_tokens=COST_TOKENS, ignore_eos=True), enqueued_at=now,
        score=now + COST_TOKENS / 20.0, predicted_output_tokens=COST_TOKENS, forced_output_tokens=1,
        tenant=tenant) for index in range(count)]


def test_a_flooding_tenant_does_not_starve_a_later_one(stack):
    settings = Settings()  # the defaults the API runs with
    config = FairShareConfig.from_settings(settings)
    c, round_s = COST_TOKENS / config.tokens_per_s, config.round_tokens / config.tokens_per_s
    wait_for_idle(stack)
    app = stack.celery()
    enqueuer = Enqueuer(app, stack.redis, {}, retry_after_s=1, fair_share=config)
    client = stack.redis
    stack.set_admission_limit("main@test", HELD)
    app.control.cancel_consumer(LANE, destination=["main@test"], reply=True, timeout=5)
    try:
        flood = tenant_requests("A", FLOOD, MODEL)
        assert enqueuer.enqueue_many(flood) == FLOOD
        [(_, head)] = client.zrange(keys.lane_key(LANE), 0, 0, withscores=True)
        later = tenant_requests("B", LATER, MODEL)
        assert enqueuer.enqueue_many(later) == LATER
        # The bound (broker/fair_share.py) for B's last request: A's requests before it at most
        # (max(b_r, S_r + c) + Q - S_A0) / c + 1, with S_r = V + (n - 1) c and S_A0 >= V - c.
        b_last = later[-1].score
        bound = math.floor((max(b_last, head + LATER * c) + round_s - (head - c)) / c) + 1
        lane = [member for member in client.zrange(keys.lane_key(LANE), 0, -1)]
        ranks = [index for index, member in enumerate(lane) if b'"id": "B-' in member]
        assert len(ranks) == LATER
        queued_before = ranks[-1] - (LATER - 1)
        print(f"fair share: head {head - flood[0].enqueued_at:.2f} s after A's arrival, B's last behind "
              f"{queued_before} of A's {FLOOD} (bound {bound}; without fair share: {FLOOD})")
        assert queued_before <= bound < FLOOD // 50
    finally:
        app.control.add_consumer(LANE, destination=["main@test"], reply=True, timeout=5)
    try:
        ledger = Ledger(client)
        wait_until(lambda: all(ledger.read(r.request_id).status is RequestStatus.done for r in later), 600,
                   "B's requests to finish")
        app.control.cancel_consumer(LANE, destination=["main@test"], reply=True, timeout=5)
        last_b_started = max(ledger.read(r.request_id).started_at for r in later)
        last_b_finished = max(ledger.read(r.request_id).finished_at for r in later)
        with client.pipeline(transaction=False) as pipe:
            for request in flood:
                pipe.hmget(keys.request_key(request.request_id), "started_at", "finished_at")
            times = [(float(start), float(end) if end is not None else math.inf)
                     for start, end in pipe.execute() if start is not None]
        served_before = sum(1 for start, _ in times if start < last_b_started)
        finished_before = sum(1 for _, end in times if end < last_b_finished)
        print(f"fair share: {served_before} of A's requests started and {finished_before} finished before B's last "
              f"({len(times)} started in all)")
        # The requests in service when B's last was taken add at most the admission limit.
        assert served_before <= bound + HELD
    finally:
        client.delete(keys.lane_key(LANE))
        wait_until(lambda: client.hlen(keys.UNACKED) == 0, 300, "the worker to finish what it holds")
        app.control.add_consumer(LANE, destination=["main@test"], reply=True, timeout=5)
        stack.set_admission_limit("main@test", 32)
        with client.pipeline(transaction=False) as pipe:
            for request in flood + later:
                pipe.delete(keys.request_key(request.request_id))
            pipe.delete(keys.fair_clocks_key(LANE))
            pipe.execute()
