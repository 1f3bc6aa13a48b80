"""Outages and crashes against the real stack: a Redis of its own (append-only) killed and restarted under
load; a worker SIGKILLed (its engine processes go with it); a worker's start as healthz and its heartbeat
see it (starting, then ready with its time to ready). docs/operations.md describes what is tested here."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
import redis

from bench.chaos import StandaloneRedis
from broker.heartbeat import read_heartbeats
from core import keys
from core.processes import http_ok
from tests.conftest import Process, engine_processes, free_port, suspended, wait_until

pytestmark = pytest.mark.integration

WORKER = "resil@test"
MAX_TOKENS = 600
# Streams run longer than the whole replies, up to the 2,048-token context: every stream must still be running
# when Redis goes (with 1,000-1,500 tokens one finished first, in 1 of 2 fresh-clone CI runs).
STREAM_MAX_TOKENS = 2000


@pytest.fixture(scope="module")
def outage_stack(model_dir, log_dir, tmp_path_factory):
    server = StandaloneRedis(tmp_path_factory.mktemp("redis-aof"), appendfsync="always")  # an fsync per write
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_REDIS_URL=server.url, SLUICE_MODEL=str(model_dir), SLUICE_DATA_DIR=str(log_dir / "resil-data"),
               SLUICE_QUEUE_POLICY="fcfs", SLUICE_MAX_ADMISSION_LIMIT="16", SLUICE_ADMISSION_LIMIT="8")
    api_port = free_port()
    processes = []
    try:
        api = Process("resil-api", ["api", "--port", str(api_port)], env, log_dir)
        processes.append(api)
        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: http_ok(base + "/healthz"), 120, "the API", interval=0.5, process=api)
        worker = Process("resil-worker", ["worker", "--worker-id", WORKER], env, log_dir)
        processes.append(worker)
        yield {"server": server, "api": api, "worker": worker, "base": base, "env": env}
    finally:
        for process in reversed(processes):
            process.stop()
        server.stop()


def healthz(base: str) -> tuple[int, dict]:
    reply = httpx.get(base + "/healthz", timeout=10)
    return reply.status_code, reply.json()


def test_a_starting_worker_is_counted_apart_then_reports_its_time_to_ready(outage_stack):
    base, worker = outage_stack["base"], outage_stack["worker"]
    client = redis.Redis.from_url(outage_stack["server"].url)
    # It registers before its engine loads (which takes seconds): healthz sees it starting, not ready.
    starting = wait_until(lambda: healthz(base)[1].get("starting_workers") == 1 and healthz(base)[1], 120,
                          "the worker registered as starting", interval=0.2, process=worker)
    assert starting["registered_workers"] == 0
    assert client.hget(keys.worker_key(WORKER), "state") == b"starting"
    wait_until(lambda: client.hget(keys.worker_key(WORKER), "state") == b"ready", 240, "the worker ready",
               interval=0.5, process=worker)
    status, body = healthz(base)
    assert (status, body["registered_workers"], body["starting_workers"]) == (200, 1, 0)
    ready_s = float(client.hget(keys.worker_key(WORKER), "ready_s"))
    assert ready_s > 0
    assert f"worker {WORKER} ready in" in worker.log_tail(400)
    metrics = httpx.get(base + "/metrics", timeout=10).text
    assert f'sluice_worker_ready_s{{pool="mixed",worker="{WORKER}"}}' in metrics


class Load:
    """Requests in flight, on threads: streamed ones record their SSE events, the others their reply."""

    def __init__(self, base: str):
        self.base = base
        self.streams: list[list[dict | str]] = []
        self.replies: list[httpx.Response | Exception] = []
        self.threads: list[threading.Thread] = []

    def body(self, stream: bool) -> dict:
        return {"model": "sluice-tiny-llama", "prompt": "tell me a long story",
                "max_tokens": STREAM_MAX_TOKENS if stream else MAX_TOKENS, "ignore_eos": True, "stream": stream}

    def stream(self) -> None:
        events: list[dict | str] = []
        self.streams.append(events)

        def run():
            try:
                with httpx.stream("POST", self.base + "/v1/completions", json=self.body(True), timeout=300) as reply:
                    for line in reply.iter_lines():
                        if line.startswith("data: "):
                            data = line[len("data: "):]
                            events.append(data if data == "[DONE]" else json.loads(data))
            except Exception as exc:  # noqa: BLE001  (recorded: the test asserts there is none)
                events.append(f"exception: {exc!r}")
        self._start(run)

    def whole(self) -> None:
        def run():
            try:
                self.replies.append(httpx.post(self.base + "/v1/completions", json=self.body(False), timeout=300))
            except Exception as exc:  # noqa: BLE001
                self.replies.append(exc)
        self._start(run)

    def _start(self, target) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), "requests still hanging"


def test_redis_outage_503_then_in_flight_requests_finish_and_the_stack_recovers(outage_stack):
    base, server, worker = outage_stack["base"], outage_stack["server"], outage_stack["worker"]
    client = redis.Redis.from_url(server.url)
    wait_until(lambda: client.hget(keys.worker_key(WORKER), "state") == b"ready", 240, "the worker ready",
               interval=0.5, process=worker)
    load = Load(base)
    # The engine is held while the four requests reach the worker: all four are running together before any
    # writes a token (the tiny model writes 2,000 tokens in 3-6 s on a quiet host, so a request submitted
    # last could otherwise start after the first had finished).
    with suspended(engine_processes(worker.pid)):
        for _ in range(2):
            load.stream()
            load.whole()
        wait_until(lambda: read_heartbeats(client, [WORKER])[WORKER].inflight == 4, 60,
                   "the four requests running on the worker", interval=0.2, process=worker)
    # Every stream has produced tokens: the requests are running on the worker when Redis goes.
    wait_until(lambda: all(sum(1 for e in events if isinstance(e, dict) and e.get("choices")) >= 3
                           for events in load.streams), 120, "the streams under way", interval=0.1)
    assert all("[DONE]" not in events for events in load.streams), "too short to be in flight during the outage"

    server.kill()
    down_at = time.monotonic()
    # While Redis is down: 503 + Retry-After (never 500), healthz degraded, what needs no Redis still answers.
    refused = httpx.post(base + "/v1/completions", json=load.body(False), timeout=30)
    assert refused.status_code == 503, refused.text
    assert refused.headers.get("retry-after") == "2"
    assert refused.json()["error"]["code"] == "redis_unavailable"
    refused_stream = httpx.post(base + "/v1/completions", json=load.body(True), timeout=30)
    assert refused_stream.status_code == 503, refused_stream.text
    status = httpx.get(base + "/v1/sluice/requests/nope", timeout=30)
    assert status.status_code == 503 and "retry-after" in status.headers
    code, body = healthz(base)
    assert (code, body["status"]) == (503, "degraded")
    assert httpx.get(base + "/v1/models", timeout=10).status_code == 200
    time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # an outage of a few seconds, not a blip

    server.start()
    restarted_at = time.monotonic()
    # Everything works again within 10 s of Redis coming back.
    wait_until(lambda: healthz(base)[0] == 200, 10, "healthz ok again")
    fresh = None

    def fresh_ok():
        nonlocal fresh
        fresh = httpx.post(base + "/v1/completions", timeout=10,
                           json={"model": "sluice-tiny-llama", "prompt": "hi", "max_tokens": 4, "ignore_eos": True})
        return fresh.status_code == 200
    wait_until(fresh_ok, max(0.5, 10 - (time.monotonic() - restarted_at)), "a new request served", interval=0.5)
    assert fresh.json()["usage"]["completion_tokens"] == 4

    # The requests in flight during the outage finish, whole: nothing failed, nothing hung.
    load.join(240)
    for events in load.streams:
        assert events[-1] == "[DONE]", events[-3:]
        assert not any(isinstance(e, str) and e.startswith("exception") or isinstance(e, dict) and "error" in e
                       for e in events), [e for e in events if isinstance(e, str) or "error" in e]
        text_chunks = [e for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["text"]]
        assert len(text_chunks) >= 1
    for reply in load.replies:
        assert isinstance(reply, httpx.Response) and reply.status_code == 200, reply
        assert reply.json()["usage"]["completion_tokens"] == MAX_TOKENS
        assert reply.json()["sluice"]["attempt"] == 1  # not failed into a redelivery
    assert "Traceback" not in outage_stack["api"].log_tail(2000)


def test_a_sigkilled_worker_leaves_no_engine_process(outage_stack):
    worker = outage_stack["worker"]
    client = redis.Redis.from_url(outage_stack["server"].url)
    wait_until(lambda: client.hget(keys.worker_key(WORKER), "state") == b"ready", 240, "the worker ready",
               interval=0.5, process=worker)
    descendants = worker.descendants()
    engines = [p for p in descendants if "EngineCore" in p.name()]
    assert engines, [(p.pid, p.name(), p.cmdline()) for p in descendants]
    os.kill(worker.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
    worker.wait(30)
    # Nobody reaps them here (no group kill): the kernel kills the engine core with its worker (PDEATHSIG).
    gone, alive = psutil.wait_procs(engines, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    # What the engine core started (vLLM's executor process, the multiprocessing resource tracker) follows
    # on its own: vLLM's death pipe, then EOF; the executor shuts down gracefully, which on a loaded host
    # takes longer than the kernel's kill, so this waits longer.
    gone, alive = psutil.wait_procs(descendants, timeout=60)
    assert not alive, [(p.pid, p.name(), p.cmdline()) for p in alive]
