"""Following a request's event stream on a real Redis: when is a streaming client told its worker is lost?"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from api.events import EventHub, WorkerLost, follow
from broker.request_events import publish
from core import keys

pytestmark = pytest.mark.integration

WORKER = "events@test"
GRACE_S = 2.0


async def follow_while(url: str, request_id: str, worker_side) -> tuple[list[str], float]:
    """Follow ``request_id`` (tokens already sent) while ``worker_side(client)`` plays the worker.
    Returns the event types seen and how long following took; raises what ``follow`` raises."""
    client = aioredis.Redis.from_url(url)
    hub = EventHub(client)
    reader = asyncio.create_task(hub.run())
    try:
        await client.set(keys.worker_key(WORKER), "alive", ex=60)
        await publish(client, request_id, {"type": "start", "attempt": 1, "worker": WORKER})
        await publish(client, request_id, {"type": "delta", "attempt": 1, "text": "a", "tokens": 1})
        playing = asyncio.create_task(worker_side(client))
        seen, started = [], time.monotonic()
        try:
            async for event in follow(hub, request_id, timeout_s=60, tokens_sent=lambda: True,
                                      liveness_check_s=0.1, worker_absent_grace_s=GRACE_S):
                seen.append(event["type"])
        finally:
            playing.cancel()
        return seen, time.monotonic() - started
    finally:
        reader.cancel()
        await hub.close()
        await client.aclose()


def test_a_heartbeat_that_lapses_for_less_than_the_grace_does_not_end_the_stream(any_redis_url):
    async def stalled_then_resumed(client):
        # The host paused the worker past its heartbeat TTL: the key expired, then the worker beat again.
        await client.delete(keys.worker_key(WORKER))
        await asyncio.sleep(GRACE_S / 2)
        await client.set(keys.worker_key(WORKER), "alive", ex=60)
        await publish(client, "stalled", {"type": "delta", "attempt": 1, "text": "b", "tokens": 1})
        await publish(client, "stalled", {"type": "done", "attempt": 1, "output_tokens": 2})

    seen, _ = asyncio.run(follow_while(any_redis_url, "stalled", stalled_then_resumed))
    assert seen == ["start", "delta", "delta", "done"]


def test_a_heartbeat_absent_for_the_grace_ends_the_stream_with_worker_lost(any_redis_url):
    async def died(client):
        await client.delete(keys.worker_key(WORKER))

    with pytest.raises(WorkerLost, match="stopped responding"):
        asyncio.run(follow_while(any_redis_url, "dead", died))


def test_another_attempt_starting_ends_the_stream_at_once(any_redis_url):
    async def redelivered_elsewhere(client):
        await publish(client, "moved", {"type": "start", "attempt": 2, "worker": "other@test"})

    with pytest.raises(WorkerLost, match="was lost"):  # not a timeout, and not the heartbeat check
        asyncio.run(follow_while(any_redis_url, "moved", redelivered_elsewhere))


def test_events_written_twice_by_a_retried_publish_reach_the_client_once(any_redis_url):
    """Redis applied a publish and died before replying; the worker's client retried it, so the stream holds
    the event twice (what a Redis restart under load left in the chaos bench)."""
    async def scenario() -> list[dict]:
        client = aioredis.Redis.from_url(any_redis_url)
        hub = EventHub(client)
        reader = asyncio.create_task(hub.run())
        request_id = "written-twice"
        try:
            await client.delete(keys.request_events_key(request_id))
            start = {"type": "start", "attempt": 1, "worker": WORKER}
            first = {"type": "delta", "attempt": 1, "text": "a", "tokens": 1, "offset": 0}
            second = {"type": "delta", "attempt": 1, "text": "bc", "tokens": 2, "offset": 1}
            for event in (start, start, first, first, second, second,
                          {"type": "delta", "attempt": 1, "text": "d", "tokens": 1, "offset": 3},
                          {"type": "done", "attempt": 1, "output_tokens": 4}):
                await publish(client, request_id, event)
            return [event async for event in follow(hub, request_id, timeout_s=30, tokens_sent=lambda: True)]
        finally:
            reader.cancel()
            await hub.close()
            await client.aclose()

    seen = asyncio.run(scenario())
    assert [event["type"] for event in seen] == ["start", "delta", "delta", "delta", "done"]
    assert "".join(event["text"] for event in seen if event["type"] == "delta") == "abcd"
