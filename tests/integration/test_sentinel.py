"""Redis with failover: a Sentinel group (one master, one replica, three sentinels, all the embedded
Valkey binary), its master SIGKILLed under load, and Sluice's clients and broker go on with the
promoted replica (docs/operations.md, "Redis with replicas and Sentinel")."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
import redis
from kombu.utils.encoding import bytes_to_str

from api.enqueue import Enqueuer
from broker.celery_app import create_app
from broker.messages import GenerationRequest, SamplingOptions
from broker.transport import SCORE_HEADER
from core import keys
from core.redis_clients import async_client, sync_client
from core.settings import Settings
from tests.conftest import ROOT, wait_until
from tests.integration.conftest import enqueue_direct
from bench.sentinel_group import SentinelGroup

pytestmark = pytest.mark.integration


@pytest.fixture
def group(tmp_path):
    group = SentinelGroup(tmp_path / "group").start()
    yield group
    group.stop()


def _retry(action, timeout: float = 60):
    """What a Sluice client does around a failover (the retry policy is the caller's): try again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_clients_follow_the_master_through_a_failover(group):
    url = group.url(db=3)
    client = sync_client(url)
    client.set("before", "1")
    client.wait(1, 1000)  # replicated: survives the failover
    assert client.connection_pool.connection_kwargs["db"] == 3
    old_master = group.kill_master()
    new_master = group.wait_for_failover()
    assert new_master != old_master
    _retry(lambda: client.set("after", "2"))
    assert client.get("before") == b"1"
    # The write went to the promoted replica, the old master's process is gone.
    direct = redis.Redis(port=new_master, db=3)
    assert direct.get("after") == b"2" and direct.info("replication")["role"] == "master"

    async def async_side():
        aclient = async_client(url, max_connections=4)
        try:
            await aclient.set("async", "3")
            return await aclient.get("before")
        finally:
            await aclient.aclose()

    assert asyncio.run(async_side()) == b"1"
    assert direct.get("async") == b"3"


def start_celery_worker(redis_url: str, log_path, **env) -> subprocess.Popen:
    env = {**os.environ, "SLUICE_REDIS_URL": redis_url, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.broker_app", "worker", "--pool", "threads",
         "--concurrency", "2", "--prefetch-multiplier", "1", "--queues", "interactive,batch",
         "--without-mingle", "--without-gossip", "--loglevel", "INFO", "--hostname", "failover@test"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_broker_continues_on_the_promoted_replica_under_load(group, tmp_path):
    """A publisher and a Celery worker on the sentinel URL; the master dies mid-stream.  Every publish that
    returned (with enqueue waiting for one replica) is run, on the new master, at least once."""
    url = group.url()
    settings = Settings(redis_url=url, enqueue_wait_replicas=1, enqueue_wait_timeout_ms=1000)
    worker = start_celery_worker(url, tmp_path / "worker.log", SLUICE_ENQUEUE_WAIT_REPLICAS="1",
                                 TEST_WORKER_ID="failover@test")
    app = create_app(settings)
    published: list[str] = []
    failed_publishes: list[str] = []
    stop = threading.Event()

    def publisher():
        index = 0
        while not stop.is_set():
            name = f"t{index}"
            try:
                app.send_task("tests.record", args=[name], queue="interactive", routing_key="interactive",
                              headers={SCORE_HEADER: float(index)},
                              retry_policy={"max_retries": 100, "interval_start": 0.1, "interval_step": 0.1,
                                            "interval_max": 0.5})
                published.append(name)
            except Exception:  # noqa: BLE001  (a publish that failed for good is not accepted; counted)
                failed_publishes.append(name)
            index += 1
            time.sleep(0.01)

    client = sync_client(url)
    thread = threading.Thread(target=publisher, daemon=True)
    try:
        thread.start()
        wait_until(lambda: client.llen("test:finished") >= 30, 60, "the worker to run tasks before the failover")
        before = len(published)
        old_master = group.kill_master()
        group.wait_for_failover()
        # The old master comes back as the new master's replica (its supervisor asks the sentinels which
        # server is master): until then a publish waits its WAIT timeout out (no replica to wait for).
        group.restart(old_master)
        group.wait_for_replica()
        # Load goes on across the failover, and after it.
        wait_until(lambda: len(published) >= before + 100, 90, "publishes after the failover")
        stop.set()
        thread.join(30)

        def finished() -> set[str]:
            return {item.decode() for item in _retry(lambda: client.lrange("test:finished", 0, -1))}

        try:
            wait_until(lambda: set(published) <= finished(), 60, "every accepted publish to run", interval=0.5)
        except AssertionError:
            missing = sorted(set(published) - finished())
            held = {bytes_to_str(value)[:200] for value in client.hvals(keys.UNACKED)}
            raise AssertionError(f"never run: {missing}; unacked: {held}; lane: {client.zcard(keys.lane_key('interactive'))}"
                                 ) from None
        assert not failed_publishes, failed_publishes
        assert redis.Redis(port=group.master_port).info("replication")["role"] == "master"
        assert redis.Redis(port=old_master).info("replication")["role"] == "slave"
    finally:
        stop.set()
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def _wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_enqueue_waits_for_a_replica_and_says_when_none_answered(group, caplog):
    """With enqueue_wait_replicas=1 each request publish (one WAIT) and each pipeline of a bulk publish (one
    WAIT for all) is on the replica when it returns; with the replica gone the enqueue still returns, the
    request stays queued on the master, and a warning says it is on the master only."""
    url = group.url()
    settings = Settings(redis_url=url, enqueue_wait_replicas=1, enqueue_wait_timeout_ms=300)
    app = create_app(settings)
    client = sync_client(url)
    master, replica = redis.Redis(port=group.master_port), redis.Redis(port=group.replica_port)
    enqueuer = Enqueuer(app, client, {"interactive": 100}, 1)
    try:
        waits = _wait_calls(master)
        for index in range(3):
            request = enqueue_direct(enqueuer, f"w-{index}", "interactive", float(index), 4, model="m")
            # Read from the replica itself, right after the enqueue returned.
            assert replica.exists(keys.request_key(request.request_id)), index
        assert _wait_calls(master) - waits == 3

        bulk = [GenerationRequest(request_id=f"bulk-{index}", model="m", kind="completion",
                                  prompt_token_ids=[1, 2, 3], slo="batch", sampling=SamplingOptions(max_tokens=4),
                                  enqueued_at=time.time(), score=float(index)) for index in range(10)]
        waits = _wait_calls(master)
        assert enqueuer.enqueue_many(bulk) == 10
        assert _wait_calls(master) - waits == 1 and replica.zcard(keys.lane_key("batch")) == 10
        assert not [record for record in caplog.records if "replicas within" in record.getMessage()]

        group.servers[group.replica_port].kill()
        request = enqueue_direct(enqueuer, "alone", "interactive", 9.0, 4, model="m")
        assert master.exists(keys.request_key(request.request_id))
        assert [record for record in caplog.records if "reached 0 of 1 replicas" in record.getMessage()]
    finally:
        app.close()
