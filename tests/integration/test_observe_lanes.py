"""What the scaler reads from the lanes on real Redis: the oldest queued request's arrival, from messages
published one at a time, in bulk, and stored base64-encoded (kombu's default, as older Sluice stored them)."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from api.enqueue import Enqueuer
from broker.celery_app import create_app
from broker.messages import GenerationRequest, SamplingOptions
from broker.transport import request_payload
from core import keys
from core.settings import Settings
from scaler.observe import read_raw

pytestmark = pytest.mark.integration


def request(request_id: str, enqueued_at: float, slo: str = "interactive") -> GenerationRequest:
    return GenerationRequest(request_id=request_id, model="tiny", kind="completion", prompt_token_ids=[1, 2],
                             sampling=SamplingOptions(max_tokens=4), slo=slo, enqueued_at=enqueued_at,
                             score=enqueued_at, deadline=enqueued_at + 60 if slo == "batch" else None)


def test_the_oldest_arrival_is_read_from_every_kind_of_stored_message(machine_redis_url):
    client = redis.Redis.from_url(machine_redis_url)
    client.flushdb()
    enqueuer = Enqueuer(create_app(Settings(redis_url=machine_redis_url)), client, {}, retry_after_s=1)
    enqueuer.enqueue(request("one", 1000.0))
    enqueuer.enqueue_many([request("bulk-1", 990.0), request("bulk-2", 995.0)])
    enqueuer.enqueue_many([request("b-1", 900.0, slo="batch")])
    # A message as kombu stores it by default (base64 body), as it would be after an upgrade.
    member = json.loads(client.zrange(keys.lane_key("interactive"), 0, 0)[0])
    member["body"] = base64.b64encode(member["body"].encode()).decode()
    member["properties"]["body_encoding"] = "base64"
    member["headers"]["id"] = "old"
    payload = request_payload(member)
    payload["enqueued_at"] = 980.0
    member["body"] = base64.b64encode(json.dumps([[payload], {}, {}]).encode()).decode()
    client.zadd(keys.lane_key("interactive"), {json.dumps(member): 1.0})

    raw = read_raw(client, pools={})
    assert raw.lane_depths == {"interactive": 4, "batch": 1}
    assert raw.oldest_enqueued_at == {"interactive": 980.0, "batch": 900.0}
    client.flushdb()
