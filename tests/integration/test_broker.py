"""The sorted-set lanes with real Redis/Valkey and a real Celery worker (no vLLM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import redis

from core import keys
from broker.redelivery import redeliver_from_dead_workers
from broker.transport import SCORE_HEADER
from core.settings import Settings
from tests.conftest import ROOT, wait_until
from broker.celery_app import create_app

pytestmark = pytest.mark.integration


def start_celery_worker(redis_url: str, log_path, worker_id: str | None = None, headroom: bool = False,
                        ) -> subprocess.Popen:
    env = {**os.environ, "SLUICE_REDIS_URL": redis_url}
    if worker_id:
        env["TEST_WORKER_ID"] = worker_id
    if headroom:
        env["TEST_HEADROOM"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.broker_app", "worker", "--pool", "threads",
         "--concurrency", "2" if headroom else "1", "--prefetch-multiplier", "1", "--queues", "interactive,batch",
         "--without-mingle", "--without-gossip", "--loglevel", "INFO", "--hostname", worker_id or "order@test"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def publish(app, name: str, lane: str, score: float, sleep_s: float = 0.0) -> None:
    app.send_task("tests.record", args=[name, sleep_s], queue=lane, routing_key=lane, headers={SCORE_HEADER: score})


def order(client) -> list[str]:
    return [item.decode() for item in client.lrange("test:order", 0, -1)]


def test_publish_keeps_score_and_lane(any_redis_url):
    app = create_app(Settings(redis_url=any_redis_url))
    client = redis.Redis.from_url(any_redis_url)
    publish(app, "a", "batch", 42.5)
    publish(app, "b", "interactive", 7.0)
    [(member, score)] = client.zrange(keys.lane_key("batch"), 0, -1, withscores=True)
    assert score == 42.5
    assert json.loads(member)["headers"][SCORE_HEADER] == 42.5
    assert client.zcard(keys.lane_key("interactive")) == 1


def test_worker_serves_interactive_first_then_lowest_score(any_redis_url, tmp_path):
    """While the worker's one admission slot is busy, the queue fills; then it drains in schedule order."""
    app = create_app(Settings(redis_url=any_redis_url))
    client = redis.Redis.from_url(any_redis_url)
    worker = start_celery_worker(any_redis_url, tmp_path / "worker.log")
    try:
        publish(app, "blocker", "interactive", 0.0, sleep_s=2.0)
        wait_until(lambda: order(client) == ["blocker"], 30, "the blocker to start")
        for name, lane, score in [("batch-5", "batch", 5), ("int-9", "interactive", 9), ("batch-1", "batch", 1),
                                  ("int-2", "interactive", 2), ("batch-0", "batch", 0), ("batch-3", "batch", 3)]:
            publish(app, name, lane, score)
        wait_until(lambda: len(order(client)) == 7, 30, "all tasks to run")
        assert order(client) == ["blocker", "int-2", "int-9", "batch-0", "batch-1", "batch-3", "batch-5"]
    finally:
        worker.terminate()
        worker.wait(20)


def finished(client) -> list[str]:
    return [item.decode() for item in client.lrange("test:finished", 0, -1)]


@pytest.fixture
def headroom_worker(any_redis_url, tmp_path):
    """A worker with prefetch 1 plus one slot of interactive headroom; yields (app, redis client)."""
    worker = start_celery_worker(any_redis_url, tmp_path / "worker.log", headroom=True)
    try:
        yield create_app(Settings(redis_url=any_redis_url)), redis.Redis.from_url(any_redis_url)
    finally:
        worker.terminate()
        worker.wait(20)


def test_a_full_worker_with_headroom_takes_interactive_work_but_no_more_batch_work(headroom_worker):
    """The interactive request starts beside the running batch request; the queued batch request waits
    for a slot, although it has the lower score."""
    app, client = headroom_worker
    publish(app, "batch-blocker", "batch", 5.0, sleep_s=4.0)
    wait_until(lambda: order(client) == ["batch-blocker"], 30, "the blocker to start")
    publish(app, "batch-next", "batch", 0.0)
    publish(app, "interactive", "interactive", 9.0)
    wait_until(lambda: order(client) == ["batch-blocker", "interactive"], 30, "the interactive request to start")
    assert "batch-blocker" not in finished(client)  # it started beside the running blocker
    assert client.zcard(keys.lane_key("batch")) == 1
    wait_until(lambda: len(order(client)) == 3, 30, "the queued batch request to run")
    assert finished(client)[0] == "interactive"
    assert order(client)[2] == "batch-next"
    assert "batch-blocker" in finished(client)  # batch-next waited for the blocker's slot


def test_a_worker_full_of_interactive_work_has_no_headroom(headroom_worker):
    """Headroom exists to displace batch work: holding only interactive work, the worker takes the next
    interactive request when a slot frees, in queue order, not early."""
    app, client = headroom_worker
    publish(app, "interactive-blocker", "interactive", 5.0, sleep_s=3.0)
    wait_until(lambda: order(client) == ["interactive-blocker"], 30, "the blocker to start")
    publish(app, "interactive-next", "interactive", 9.0)
    wait_until(lambda: len(order(client)) == 2, 30, "the next interactive request to run")
    assert "interactive-blocker" in finished(client)  # it waited for the blocker's slot


def test_dead_worker_message_returns_with_original_score(any_redis_url, tmp_path):
    """SIGKILL a worker mid-task: once its heartbeat lapses, the message goes back at its old score."""
    app = create_app(Settings(redis_url=any_redis_url))
    client = redis.Redis.from_url(any_redis_url)
    client.set(keys.worker_key("victim@test"), "alive", px=60_000)
    worker = start_celery_worker(any_redis_url, tmp_path / "victim.log", worker_id="victim@test")
    try:
        publish(app, "long", "batch", 123.25, sleep_s=60)
        wait_until(lambda: order(client) == ["long"], 30, "the task to start")
        assert client.hget(keys.UNACKED_OWNER, next(iter(client.hkeys(keys.UNACKED_OWNER)))) == b"victim@test"
        assert redeliver_from_dead_workers(client) == []  # heartbeat still alive: nothing moves
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        client.delete(keys.worker_key("victim@test"))  # the heartbeat lapses
        restored = redeliver_from_dead_workers(client)
        assert len(restored) == 1
        [(member, score)] = client.zrange(keys.lane_key("batch"), 0, -1, withscores=True)
        assert score == 123.25
        assert json.loads(member)["headers"]["redelivered"] is True
        assert client.hlen(keys.UNACKED) == 0 and client.hlen(keys.UNACKED_OWNER) == 0
        assert redeliver_from_dead_workers(client) == []  # restored once only
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
