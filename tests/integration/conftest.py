"""One real Sluice stack per test session: the machine's Redis, a vLLM worker, the API."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from core.processes import http_ok
from api.enqueue import Enqueuer
from core import keys
from core.names import SET_ADMISSION_LIMIT
from broker.messages import GenerationRequest, SamplingOptions
from core.settings import Settings
from tests.conftest import MACHINE_REDIS_URL, Process, free_port, require_redis, wait_until
from broker.celery_app import create_app

STACK_REDIS_DB = 13


@dataclass
class Stack:
    redis_url: str
    env: dict
    log_dir: Path
    api_port: int
    processes: list[Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.redis_url)

    def celery(self):
        return create_app(self.settings)

    def start(self, name: str, args: list[str], **extra_env) -> Process:
        process = Process(name, args, {**self.env, **extra_env}, self.log_dir)
        self.processes.append(process)
        return process

    def start_worker(self, worker_id: str, **extra_env) -> Process:
        process = self.start(worker_id.split("@")[0], ["worker", "--worker-id", worker_id], **extra_env)
        # This process's heartbeat (its pid), not that of a leftover worker with the same id, saying ready.
        wait_until(lambda: self.redis.hmget(keys.worker_key(worker_id), "pid", "state")
                   == [str(process.pid).encode(), b"ready"], 240,
                   f"worker {worker_id} heartbeat", interval=0.5, process=process)
        return process

    def process(self, name: str) -> Process:
        """The started process of that name (a worker is named by the part of its id before the @)."""
        return next(process for process in self.processes if process.name == name)

    def set_admission_limit(self, worker_id: str, limit: int) -> None:
        reply = self.celery().control.broadcast(SET_ADMISSION_LIMIT, arguments={"limit": limit},
                                                destination=[worker_id], reply=True, timeout=5)
        assert reply == [{worker_id: {"ok": limit}}], reply


def stack_redis_url() -> str:
    base = MACHINE_REDIS_URL.rsplit("/", 1)[0]
    return f"{base}/{STACK_REDIS_DB}"


@pytest.fixture(scope="session")
def stack(model_dir, log_dir):
    url = stack_redis_url()
    require_redis(url)
    client = redis.Redis.from_url(url)
    client.flushdb()
    # Workers run in their own sessions, so a pytest that was killed, or whose stack failed to start, can
    # leave them running: they would go on consuming these lanes and answering control messages sent to
    # main@test or victim@test. Their next beat (every second) shows them.
    time.sleep(1.5)
    leftovers = {key.decode(): client.hget(key, "pid") for key in client.scan_iter(keys.worker_key("*"))}
    if leftovers:
        pytest.fail(f"workers of an earlier session still use {url} (worker key: pid): {leftovers}; stop them")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_REDIS_URL=url, SLUICE_MODEL=str(model_dir), SLUICE_DATA_DIR=str(log_dir / "data"),
               SLUICE_HEARTBEAT_TTL_S="5", SLUICE_MAX_ADMISSION_LIMIT="64", SLUICE_ADMISSION_LIMIT="32",
               SLUICE_BODY_READ_TIMEOUT_S="5")
    stack = Stack(redis_url=url, env=env, log_dir=log_dir, api_port=free_port())
    try:  # stopped even when the stack fails to start, so that nothing outlives this session
        stack.start_worker("main@test")
        api = stack.start("api", ["api", "--port", str(stack.api_port)])
        wait_until(lambda: http_ok(stack.base_url + "/healthz"), 120, "the API", interval=0.5, process=api)
        yield stack
    finally:
        for process in reversed(stack.processes):
            process.stop()


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


def lane_snapshot(client: redis.Redis) -> dict:
    """What is queued, per lane, and how many request records exist (to prove nothing was enqueued)."""
    return {
        "interactive": client.zcard(keys.lane_key("interactive")),
        "batch": client.zcard(keys.lane_key("batch")),
        "requests": len(list(client.scan_iter("sluice:req:*", count=1000))),
    }


def wait_for_idle(stack: Stack, timeout: float = 120) -> None:
    client = stack.redis
    wait_until(lambda: lane_snapshot(client)["interactive"] == 0 and lane_snapshot(client)["batch"] == 0
               and client.hlen(keys.UNACKED) == 0, timeout, "the queues to drain")
    time.sleep(0.1)


def enqueue_direct(enqueuer: Enqueuer, name: str, lane: str, score: float, max_tokens: int, *,
                   model: str) -> GenerationRequest:
    """Put a request straight into its lane at a chosen score, without the API."""
    request = GenerationRequest(
        request_id=name, model=model, kind="completion", prompt_token_ids=[1, 22557, 1526], slo=lane,
        sampling=SamplingOptions(max_tokens=max_tokens, ignore_eos=True), enqueued_at=time.time(), score=score)
    enqueuer.enqueue(request)
    return request


def pytest_collection_modifyitems(session, config, items):
    """The chaos test runs last. It SIGKILLs workers and restarts Redis on a stack of its own, and twice a
    test_fleet test right after it failed (a killed worker's stream completed instead of failing), though
    test_fleet passes alone and no leftover process or key was found; until the cause is known, nothing runs
    after it."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_chaos"))  # stable: others keep their order
