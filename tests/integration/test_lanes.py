"""The atomic pop (broker.lanes) on real Redis/Valkey: a message leaves its lane and enters the unacked
records in one script, so no consumer death can lose it; consumers block on the lanes' wake-up signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from kombu import Connection, Consumer, Queue

from broker import lanes
from broker.ledger import Ledger, LedgerEntry
from broker.redelivery import redeliver_from_dead_workers
from broker.transport import SCORE_HEADER
from broker.celery_app import create_app
from core import keys
from core.settings import Settings
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration

POP = lanes.OnceScript(lanes.POP)


def publish(app, name: str, lane: str, score: float) -> None:
    app.send_task("tests.record", args=[name, 0.0], queue=lane, routing_key=lane, headers={SCORE_HEADER: score})


def kombu_url(redis_url: str) -> str:
    return "sluice" + redis_url[len("redis"):]


def tokens(client, queue: str) -> int:
    return client.llen(keys.lane_signal_key(queue))


def test_pop_takes_the_lowest_of_the_first_lane_and_records_it_unacked_in_the_same_step(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    app = create_app(Settings(redis_url=any_redis_url))
    publish(app, "b", "batch", 1.0)
    publish(app, "i-later", "interactive", 9.0)
    publish(app, "i-first", "interactive", 7.0)
    assert (tokens(client, "interactive"), tokens(client, "batch")) == (2, 1)  # one per message published
    stored, score = client.zrange(keys.lane_key("interactive"), 0, 0, withscores=True)[0]
    assert score == 7.0

    call_keys, args = lanes.pop_call([("interactive", True), ("batch", True)], "interactive", "w@test", 1234.5)
    lane, member = POP(client, call_keys, args)

    assert (lane, member) == (keys.lane_key("interactive").encode(), stored)  # the stored message, as it was
    message = json.loads(member)
    tag, info = message["properties"]["delivery_tag"], message["properties"]["delivery_info"]
    # kombu's ack emulation record (what QoS.append writes), and the owner, written by the pop itself.
    assert json.loads(client.hget(keys.UNACKED, tag)) == [message, info["exchange"], info["routing_key"]]
    assert client.zscore(keys.UNACKED_INDEX, tag) == 1234.5
    assert client.hget(keys.UNACKED_OWNER, tag) == b"w@test"
    assert client.zcard(keys.lane_key("interactive")) == 1 and client.zcard(keys.lane_key("batch")) == 1
    # No more tokens than messages: the one a BLPOP would have taken is trimmed.
    assert (tokens(client, "interactive"), tokens(client, "batch")) == (1, 1)


def test_a_no_ack_lane_is_popped_without_a_record(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    publish(create_app(Settings(redis_url=any_redis_url)), "reply", "batch", 1.0)
    lane, _member = POP(client, *lanes.pop_call([("batch", False)], "batch", "w@test", 1.0))
    assert lane == keys.lane_key("batch").encode()
    assert client.hlen(keys.UNACKED) == 0 and client.zcard(keys.UNACKED_INDEX) == 0
    assert client.hlen(keys.UNACKED_OWNER) == 0


def test_signals_are_capped_trimmed_and_rearmed(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    put = client.register_script(lanes.PUT)
    with client.pipeline(transaction=False) as pipe:
        for index in range(lanes.SIGNAL_TOKENS_KEPT + 5):
            put(keys=[keys.lane_key("batch"), keys.lane_signal_key("batch")],
                args=[index, json.dumps({"n": index}), lanes.SIGNAL_TOKENS_KEPT], client=pipe)
        pipe.execute()
    assert tokens(client, "batch") == lanes.SIGNAL_TOKENS_KEPT  # capped

    # Stale tokens of an empty lane go; a woken lane not consumed keeps one token while it has messages.
    client.delete(keys.lane_key("batch"))
    client.zadd(keys.lane_key("interactive"), {json.dumps({"n": "no token"}): 1.0})  # a write without a token
    assert POP(client, *lanes.pop_call([("batch", True)], "interactive", None, 1.0)) is None
    assert tokens(client, "batch") == 0
    assert tokens(client, "interactive") == 1


def test_ledger_enqueue_pushes_the_token_with_the_message(any_redis_url):
    client = redis.Redis.from_url(any_redis_url)
    message = json.dumps({"body": "[]", "headers": {SCORE_HEADER: 3.0},
                          "properties": {"delivery_tag": "t-1", "delivery_info": {"exchange": "", "routing_key": "batch"}}})
    assert Ledger(client).enqueue("batch", message, 3.0, LedgerEntry(request_id="r-1", enqueued_at=3.0))
    assert tokens(client, "batch") == 1
    assert not Ledger(client).enqueue("batch", message, 3.0, LedgerEntry(request_id="r-1", enqueued_at=3.0))
    assert tokens(client, "batch") == 1  # a repeated enqueue adds nothing, its token neither


def test_a_blocked_consumer_is_woken_and_its_append_writes_nothing(any_redis_url):
    """A consumer blocked on the signals (its timeout 30 s: only a wake-up can deliver within it) takes a
    message published meanwhile; the message is recorded as unacked with its owner before kombu's
    callback runs, and kombu's QoS.append does no Redis write of its own."""
    client = redis.Redis.from_url(any_redis_url)
    app = create_app(Settings(redis_url=any_redis_url))
    with Connection(kombu_url(any_redis_url), transport_options={"worker_id": "w@test", "polling_interval": 30}) as conn:
        channel = conn.channel()
        seen = []

        def no_write(*args, **kwargs):
            raise AssertionError("QoS.append wrote to Redis")

        channel.qos.pipe_or_acquire = no_write

        def on_message(body, message):
            seen.append((time.monotonic(), message, client.hget(keys.UNACKED_OWNER, message.delivery_tag),
                         client.hexists(keys.UNACKED, message.delivery_tag)))

        consumer = Consumer(channel, [Queue("interactive", routing_key="interactive"),
                                      Queue("batch", routing_key="batch")], callbacks=[on_message])
        consumer.consume()
        sent = []
        timer = threading.Timer(0.5, lambda: (sent.append(time.monotonic()), publish(app, "x", "batch", 2.0)))
        timer.start()
        conn.drain_events(timeout=20)
        timer.join()
        [(received, message, owner, recorded)] = seen
        assert received - sent[0] < 2.0
        assert owner == b"w@test" and recorded
        assert message.headers[SCORE_HEADER] == 2.0 and not message.delivery_info.get("redelivered")
        del channel.qos.pipe_or_acquire
        message.ack()
    assert client.hlen(keys.UNACKED) == 0 and client.hlen(keys.UNACKED_OWNER) == 0


def test_a_message_written_without_a_token_is_taken_after_the_wait_times_out(any_redis_url):
    """The safety net: the timed-out wait pops too."""
    client = redis.Redis.from_url(any_redis_url)
    app = create_app(Settings(redis_url=any_redis_url))
    publish(app, "x", "batch", 2.0)
    client.delete(keys.lane_signal_key("batch"))  # as if its token went with a consumer that died
    with Connection(kombu_url(any_redis_url), transport_options={"polling_interval": 0.5}) as conn:
        received = []
        consumer = Consumer(conn.channel(), [Queue("batch", routing_key="batch")],
                            callbacks=[lambda body, message: (received.append(body), message.ack())])
        consumer.consume()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    assert len(received) == 1


# A consumer that dies right after its pop: delivery (kombu's QoS.append and everything after it) never runs.
POP_AND_HANG = """
import sys, time
import redis
from kombu import Connection, Consumer, Queue
import broker.transport

url, redis_url, worker_id = sys.argv[1:4]
conn = Connection(url, transport_options={"worker_id": worker_id})
channel = conn.channel()

def hang(message, queue):
    redis.Redis.from_url(redis_url).rpush("test:popped", message["properties"]["delivery_tag"])
    time.sleep(3600)

conn.transport._deliver = hang
Consumer(channel, [Queue("batch", routing_key="batch")], callbacks=[lambda body, message: None]).consume()
conn.drain_events(timeout=120)
"""


def test_a_consumer_killed_right_after_its_pop_has_its_message_redelivered(any_redis_url, tmp_path):
    client = redis.Redis.from_url(any_redis_url)
    app = create_app(Settings(redis_url=any_redis_url))
    worker_id = "victim@test"
    client.set(keys.worker_key(worker_id), "alive", px=60_000)
    log = open(tmp_path / "consumer.log", "wb")
    consumer = subprocess.Popen([sys.executable, "-c", POP_AND_HANG, kombu_url(any_redis_url), any_redis_url, worker_id],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        publish(app, "x", "batch", 123.25)
        [tag] = wait_until(lambda: client.lrange("test:popped", 0, -1), 60, "the consumer's pop")
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait(10)
        tag = tag.decode()
        assert client.zcard(keys.lane_key("batch")) == 0  # popped ...
        assert client.hget(keys.UNACKED_OWNER, tag) == worker_id.encode()  # ... and recorded, by the pop alone
        assert redeliver_from_dead_workers(client) == []  # its heartbeat is still alive
        client.delete(keys.worker_key(worker_id))  # the heartbeat lapses
        assert redeliver_from_dead_workers(client) == [tag]
        [(member, score)] = client.zrange(keys.lane_key("batch"), 0, -1, withscores=True)
        assert score == 123.25
        assert json.loads(member)["headers"]["redelivered"] is True
        assert tokens(client, "batch") >= 1  # the redelivery wakes a consumer
        assert client.hlen(keys.UNACKED) == 0 and client.hlen(keys.UNACKED_OWNER) == 0
    finally:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGKILL)
            consumer.wait(10)


def test_basic_get_pops_atomically_too(any_redis_url):
    """The non-blocking path (kombu's basic_get -> _get): recorded with its owner by the pop, unless no_ack."""
    client = redis.Redis.from_url(any_redis_url)
    app = create_app(Settings(redis_url=any_redis_url))
    publish(app, "acked", "batch", 1.0)
    publish(app, "not acked", "batch", 2.0)
    with Connection(kombu_url(any_redis_url), transport_options={"worker_id": "w@test"}) as conn:
        channel = conn.channel()
        Consumer(channel, [Queue("batch", routing_key="batch")], callbacks=[lambda body, message: None]).consume()
        channel.qos.pipe_or_acquire = lambda *args, **kwargs: pytest.fail("QoS.append wrote to Redis")
        message = channel.basic_get("batch")
        assert message.headers[SCORE_HEADER] == 1.0
        assert client.hget(keys.UNACKED_OWNER, message.delivery_tag) == b"w@test"
        assert client.hexists(keys.UNACKED, message.delivery_tag)
        other = channel.basic_get("batch", no_ack=True)
        assert other.headers[SCORE_HEADER] == 2.0
        assert not client.hexists(keys.UNACKED, other.delivery_tag) and client.hlen(keys.UNACKED_OWNER) == 1
        del channel.qos.pipe_or_acquire
        message.ack()
    assert client.hlen(keys.UNACKED) == 0
