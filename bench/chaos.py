"""`sluice bench chaos`: faults under a steady mixed load, and what the clients and the ledger saw.

A stack of real processes (bench.processes.BenchCluster): a Redis of the bench's own, two `sluice api`
replicas behind the load generator (which round-robins between them), and one vLLM worker.  The load is
steady and mixed: streaming, non-streaming and asynchronous (``Prefer: respond-async``) completions, in
both lanes (``X-Sluice-SLO: interactive|batch``).  While it runs, the bench injects, one after another:

* ``worker``: SIGKILL of the worker's main process; a replacement worker is started at once (what
  `sluice run`'s supervision does), and the killed worker's requests come back by heartbeat redelivery;
* ``redis``: SIGKILL of the standalone redis-server (append-only, ``--appendfsync always`` by default),
  restarted on its files after ``--outage-s``;
* ``api``: SIGKILL of one API replica; its streams are followed to the end through the survivor
  (``GET /v1/sluice/requests/{id}``), its asynchronous requests are polled there;
* ``failover`` (a second round, on a Sentinel group: one master, one replica, three sentinels, every
  client on a ``redis+sentinel://`` URL): SIGKILL of the master; the sentinels promote the replica; the
  old master comes back as a replica.  Skipped when this build cannot use Sentinel URLs.

Then it drains, and counts, against the clients' records AND the ledger (every ``sluice:req:<id>``, the
``done`` events of each request's event stream, the completion log):

* ``accepted``: requests the API took (a 2xx/202 the client saw, or a ledger record: a non-streaming
  request whose replica died before answering is known only to the ledger);
* ``completed``: accepted and done in the ledger, and the client read the answer where it could;
* ``lost``: accepted but not completed within the run plus ``--drain-s``;
* ``answered_twice``: more than one ``done`` event or completion record for one request, or a stream
  that saw two ends or more text than the answer (duplicated tokens);
* ``http_5xx``: 5xx answers other than 503 (a 503 with Retry-After during an outage is the documented
  answer: counted as ``http_503`` and retried by the client after Retry-After);
* ``client_errors``: what a client saw go wrong, by kind;
* per fault: the time from the fault to the first accepted request sent after it, to the first
  completion after it, and to the load's success rate (by send time, over ``--window-s``) returning
  to its pre-fault level.

docs/operations.md ("Chaos benchmark") explains how to read the figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import httpx
import psutil
import redis

from bench.processes import BenchCluster
from broker.heartbeat import read_heartbeats
from broker.ledger import Ledger
from core import keys
from core.embedded_valkey import _valkey_binary
from core.processes import Child, free_port, http_ok, wait_for
from core.redis_clients import sync_client

log = logging.getLogger(__name__)

MODEL = "sluice-tiny-llama"
KINDS = ("stream", "whole", "async")
LANES = ("interactive", "batch")
STANDALONE_FAULTS = ("worker", "redis", "api")
ALL_FAULTS = (*STANDALONE_FAULTS, "failover")
# The children's settings for a fault-heavy run: dead workers are noticed within seconds, not 15 s.
CHAOS_ENV = {"SLUICE_HEARTBEAT_TTL_S": "5", "SLUICE_QUEUE_POLICY": "fcfs",
             "SLUICE_ADMISSION_LIMIT": "16", "SLUICE_MAX_ADMISSION_LIMIT": "32"}
RETRY_AFTER_CAP_S = 2.0  # the client honours Retry-After, but no longer than this (a bench wants data)
SUBMIT_GIVE_UP_S = 90.0  # a request not accepted within this long (every replica down or 503) is an error


@dataclass
class ChaosOptions:
    rate: float = 2.0  # requests per second, all kinds and lanes together
    # Long enough that requests are in flight on the worker that is killed and streams on the replica.
    max_tokens: int = 256
    baseline_s: float = 10.0  # load before the first fault
    gap_s: float = 10.0  # load after a fault has recovered, before the next
    outage_s: float = 3.0  # how long Redis stays down
    drain_s: float = 90.0  # after the load stops, how long requests may take to finish
    window_s: float = 5.0  # success-rate window for "recovered"
    worker_start_s: float = 600.0  # how long a (replacement) worker may take to serve (minutes on a loaded host)
    appendfsync: str = "always"
    faults: tuple[str, ...] = ALL_FAULTS
    # vLLM workers of the standalone stack at the start (each ~3 GB). Two by default: the worker fault kills
    # one and the survivor takes its requests (redelivered by heartbeat), which is the recovery a fleet has;
    # with one, recovery waits for a new engine to start (a minute or more here).
    workers: int = 2
    replace_killed: bool = False  # also start a replacement for the SIGKILLed worker (supervision's job)


@dataclass
class Outcome:
    """One request as its client saw it."""
    index: int
    kind: str
    lane: str
    sent_at: float
    api: str = ""
    request_id: str | None = None
    accepted_at: float | None = None
    answered_at: float | None = None  # the client has the whole answer (reply, stream end, or polled result)
    text: str | None = None
    stream_ends: int = 0  # [DONE] lines plus chunks with a finish_reason, over 2 per answer means twice
    resumed: bool = False  # the stream broke and the answer was read through another replica
    http_503: int = 0
    http_5xx: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.answered_at is not None and not self.errors


class Replicas:
    """The load balancer: round-robin over the API replicas, skipping one that refused a connection."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)
        self.down_until: dict[str, float] = {}
        self._next = 0

    def pick(self, avoid: str | None = None) -> str:
        now = time.monotonic()
        for _ in range(len(self.urls)):
            url = self.urls[self._next % len(self.urls)]
            self._next += 1
            if url != avoid and self.down_until.get(url, 0) <= now:
                return url
        return self.urls[self._next % len(self.urls)]

    def mark_down(self, url: str, seconds: float = 2.0) -> None:
        self.down_until[url] = time.monotonic() + seconds


class LoadGenerator:
    def __init__(self, replicas: Replicas, options: ChaosOptions, t0: float):
        self.replicas = replicas
        self.options = options
        self.t0 = t0
        self.outcomes: list[Outcome] = []
        self.tasks: list[asyncio.Task] = []
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(900, connect=3),
                                        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=50))
        self.stop_polling_at = math.inf

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            kind = KINDS[index % len(KINDS)]
            lane = LANES[(index // len(KINDS)) % len(LANES)]
            outcome = Outcome(index=index, kind=kind, lane=lane, sent_at=self.now())
            self.outcomes.append(outcome)
            self.tasks.append(asyncio.create_task(self.one(outcome)))
            index += 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0 / self.options.rate)
            except asyncio.TimeoutError:
                pass

    def body(self, outcome: Outcome) -> dict:
        return {"model": MODEL, "prompt": f"chaos request {outcome.index}: tell me a story",
                "max_tokens": self.options.max_tokens, "ignore_eos": True, "temperature": 0,
                "stream": outcome.kind == "stream"}

    async def one(self, outcome: Outcome) -> None:
        headers = {"X-Sluice-SLO": outcome.lane}
        if outcome.kind == "async":
            headers["Prefer"] = "respond-async"
        give_up = time.monotonic() + SUBMIT_GIVE_UP_S
        while True:
            base = self.replicas.pick()
            outcome.api = base
            try:
                if outcome.kind == "stream":
                    retry = await self._stream(base, headers, outcome)
                else:
                    retry = await self._post(base, headers, outcome)
            except httpx.ConnectError:  # nothing was sent: safe to send to the other replica
                self.replicas.mark_down(base)
                retry = 0.2
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                # Sent, and the replica died before answering.  A request with a known id is followed through another.
                if outcome.request_id is not None:
                    outcome.resumed = True
                    await self._poll(outcome, avoid=base)
                else:
                    outcome.errors.append(f"connection_lost_{outcome.kind}:{type(exc).__name__}")
                return
            except httpx.TimeoutException as exc:
                outcome.errors.append(f"timeout:{type(exc).__name__}")
                return
            if retry is None:
                return
            if time.monotonic() + retry > give_up:
                outcome.errors.append("not_accepted_in_time")
                return
            await asyncio.sleep(retry)

    def _status_error(self, outcome: Outcome, reply: httpx.Response) -> float | None:
        """A retry delay for a refusal the client should retry (503, 429), else None (recorded)."""
        if reply.status_code in (503, 429):
            if reply.status_code == 503:
                outcome.http_503 += 1
            try:
                after = float(reply.headers.get("retry-after", "1"))
            except ValueError:
                after = 1.0
            return min(max(after, 0.1), RETRY_AFTER_CAP_S)
        if reply.status_code >= 500:
            outcome.http_5xx += 1
        outcome.errors.append(f"http_{reply.status_code}")
        return None

    async def _post(self, base: str, headers: dict, outcome: Outcome) -> float | None:
        reply = await self.client.post(base + "/v1/completions", json=self.body(outcome), headers=headers)
        if reply.status_code == 202:
            outcome.request_id = reply.json()["id"]
            outcome.accepted_at = self.now()
            await self._poll(outcome)
            return None
        if reply.status_code == 200:
            answer = reply.json()
            outcome.request_id = answer.get("id")
            outcome.accepted_at = outcome.answered_at = self.now()
            outcome.text = answer["choices"][0]["text"]
            return None
        return self._status_error(outcome, reply)

    async def _stream(self, base: str, headers: dict, outcome: Outcome) -> float | None:
        async with self.client.stream("POST", base + "/v1/completions", json=self.body(outcome),
                                      headers=headers) as reply:
            if reply.status_code != 200:
                await reply.aread()
                return self._status_error(outcome, reply)
            outcome.request_id = reply.headers.get("x-sluice-request-id")
            outcome.accepted_at = self.now()
            parts: list[str] = []
            async for line in reply.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    outcome.stream_ends += 1
                    continue
                chunk = json.loads(data)
                if "error" in chunk:  # counted; a client with the request's id then reads its result
                    outcome.errors.append(f"stream_error:{chunk['error'].get('code') or chunk['error'].get('type')}")
                    outcome.resumed = True
                    await self._poll(outcome)
                    return None
                for choice in chunk.get("choices", []):
                    parts.append(choice.get("text") or "")
                    if choice.get("finish_reason"):
                        outcome.stream_ends += 1
            outcome.text = "".join(parts)
            if outcome.stream_ends == 0:  # the body ended without the stream's end: follow it elsewhere
                outcome.resumed = True
                await self._poll(outcome, avoid=base)
            else:
                outcome.answered_at = self.now()
        return None

    async def _poll(self, outcome: Outcome, avoid: str | None = None) -> None:
        """Read the request's state through any replica (another than ``avoid`` first) until it has ended."""
        while self.now() < self.stop_polling_at:
            base = self.replicas.pick(avoid=avoid)
            try:
                reply = await self.client.get(f"{base}/v1/sluice/requests/{outcome.request_id}", timeout=10)
            except httpx.TransportError:
                self.replicas.mark_down(base)
                await asyncio.sleep(0.2)
                continue
            if reply.status_code == 200:
                state = reply.json()
                if state["status"] == "done":
                    outcome.answered_at = self.now()
                    if not outcome.resumed:
                        outcome.text = (state.get("result") or {}).get("text")
                    return
                if state["status"] in ("failed", "cancelled", "expired"):
                    outcome.errors.append(f"request_{state['status']}")
                    return
            elif reply.status_code == 503:
                outcome.http_503 += 1
            elif reply.status_code >= 500:  # counted, and polled again (what a client does)
                outcome.http_5xx += 1
                if f"poll_http_{reply.status_code}" not in outcome.errors:
                    outcome.errors.append(f"poll_http_{reply.status_code}")
            await asyncio.sleep(1.0)


# --- Redis servers ----------------------------------------------------------------------------------

def redis_binary() -> str:
    """redis-server where installed, else the embedded Valkey (same flags, same append-only file)."""
    return shutil.which("redis-server") or str(_valkey_binary())


class StandaloneRedis:
    """A redis-server of the bench's own, append-only, restartable on its files."""

    def __init__(self, data_dir: Path, appendfsync: str, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.child = Child("redis", [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                                     "--dir", str(self.data_dir), "--appendonly", "yes",
                                     "--appendfsync", self.appendfsync, "--save", ""],
                           log_path=self.data_dir / "redis.log", append_log=True, cwd=self.data_dir)
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        wait_for(lambda: _answers(client), 30, "redis-server", interval=0.1, child=self.child)

    def kill(self) -> None:
        self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def sentinel_supported() -> bool:
    try:
        from core import redis_urls  # noqa: F401  (the sentinel work: redis+sentinel:// URLs everywhere)
    except ImportError:
        return False
    return True


# --- one round ------------------------------------------------------------------------------------

class Round:
    """One stack under load, its faults and its requests."""

    def __init__(self, name: str, redis_url: str, options: ChaosOptions, log_dir: Path, echo):
        self.name = name
        self.options = options
        self.echo = echo
        env = {**CHAOS_ENV, **{k: v for k, v in os.environ.items() if k in CHAOS_ENV}}
        self.cluster = BenchCluster(redis_url=redis_url, log_dir=log_dir, extra_env=env)
        self.t0 = time.monotonic()
        self.faults: list[dict] = []
        self.workers: list[Child] = []
        self.apis: dict[str, Child] = {}
        self.load: LoadGenerator | None = None
        self.extra: dict = {}
        self.killed: set[int] = set()  # pids the faults killed (the others died by themselves)
        self.warm_up_ids: set[str] = set()  # the requests that checked the stack serves, not the load's

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start_stack(self) -> None:
        """Both API replicas and the worker start together (each takes a minute or more on a loaded machine)."""
        for name in ("api-a", "api-b"):
            port = free_port()
            self.apis[f"http://127.0.0.1:{port}"] = self.cluster.start(name, ["api", "--port", str(port)])
        for number in range(1, self.options.workers + 1):
            self.start_worker(f"w{number}@chaos")
        for url, child in self.apis.items():
            wait_for(lambda: http_ok(url + "/healthz"), self.options.worker_start_s, f"API {child.name}", child=child)

    def start_worker(self, worker_id: str) -> Child:
        child = self.cluster.start(worker_id.split("@")[0], ["worker", "--worker-id", worker_id])
        self.workers.append(child)
        return child

    def wait_serving(self, timeout: float, child: Child | None = None) -> float:
        """One asynchronous request, polled until it is done (the stack serves); returns how long that took.
        Its id is kept apart, so that the load's figures count the load only."""
        started = time.monotonic()
        url = next(iter(self.apis))

        def served() -> bool:
            try:
                if not self.warm_up_ids:
                    reply = httpx.post(url + "/v1/completions", timeout=30, headers={"Prefer": "respond-async"},
                                       json={"model": MODEL, "prompt": "warm up", "max_tokens": 2, "ignore_eos": True})
                    if reply.status_code != 202:
                        return False
                    self.warm_up_ids.add(reply.json()["id"])
                [request_id] = self.warm_up_ids
                state = httpx.get(f"{url}/v1/sluice/requests/{request_id}", timeout=30)
            except httpx.HTTPError:
                return False
            return state.status_code == 200 and state.json()["status"] == "done"

        wait_for(served, timeout, "the stack to serve a request", interval=1.0, child=child)
        # Every worker ready, not only the one that served: a fault must not hit a worker still loading.
        wait_for(lambda: len(read_heartbeats(self.cluster.redis)) >= len(self.workers),
                 max(1.0, timeout - (time.monotonic() - started)), "every worker ready", interval=1.0, child=child)
        return time.monotonic() - started

    async def drive(self, fault_plan) -> None:
        self.load = LoadGenerator(Replicas(list(self.apis)), self.options, self.t0)
        stop = asyncio.Event()
        generator = asyncio.create_task(self.load.run(stop))
        supervisor = asyncio.create_task(self.supervise(stop))
        try:
            await asyncio.sleep(self.options.baseline_s)
            for fault in fault_plan:
                await fault()
                await asyncio.sleep(self.options.gap_s)
        finally:
            stop.set()
            await generator
            await supervisor
        self.echo(f"[{self.name}] load stopped at {self.now():.0f} s; draining up to {self.options.drain_s:.0f} s")
        self.load.stop_polling_at = self.now() + self.options.drain_s
        pending = [task for task in self.load.tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.options.drain_s)
        for task in self.load.tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self.load.tasks, return_exceptions=True)
        await self.load.client.aclose()

    async def supervise(self, stop: asyncio.Event) -> None:
        """`sluice run`'s supervision: a worker that dies by itself (not by a fault) is counted and replaced;
        an API replica that dies by itself is counted."""
        while not stop.is_set():
            for child in list(self.workers):
                if not child.alive() and child.pid not in self.killed:
                    self.killed.add(child.pid)
                    self.extra["worker_crashes"] = self.extra.get("worker_crashes", 0) + 1
                    self.echo(f"[{self.name}] t={self.now():.0f}s worker {child.name} exited by itself "
                              f"(status {child.returncode}); starting a replacement")
                    child.reap()
                    self.start_worker(f"w{len(self.workers) + 1}@chaos")
            for child in self.apis.values():
                if not child.alive() and child.pid not in self.killed:
                    self.killed.add(child.pid)
                    self.extra["api_crashes"] = self.extra.get("api_crashes", 0) + 1
                    self.echo(f"[{self.name}] t={self.now():.0f}s API {child.name} exited by itself")
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    def record(self, kind: str, **details) -> dict:
        fault = {"fault": kind, "at_s": round(self.now(), 2), **details}
        self.faults.append(fault)
        self.echo(f"[{self.name}] t={fault['at_s']:.0f}s fault: {kind} {details or ''}")
        return fault

    async def wait_recovered(self, fault: dict, timeout: float) -> None:
        """Load goes on until a request sent after the fault has been answered (or ``timeout``)."""
        at = fault["at_s"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(o.sent_at >= at and o.answered_at is not None and not o.errors for o in self.load.outcomes):
                return
            await asyncio.sleep(0.5)
        fault["not_recovered_within_s"] = timeout

    # The faults -----------------------------------------------------------------------------------

    async def kill_worker(self) -> None:
        # The busiest live worker (by its heartbeat's requests in flight): the kill is meant to catch work.
        inflight = {worker_id.split("@")[0]: beat.inflight
                    for worker_id, beat in (await asyncio.to_thread(read_heartbeats, self.cluster.redis)).items()}
        victim = max((child for child in reversed(self.workers) if child.alive()),
                     key=lambda child: inflight.get(child.name, -1))
        engines = victim.descendants()
        fault = self.record("worker", pid=victim.pid, worker_id=f"{victim.name}@chaos")
        fault["killed_at_epoch"] = time.time()
        self.killed.add(victim.pid)
        victim.send_signal(signal.SIGKILL)  # the main process only: its engine must go by itself
        await asyncio.to_thread(victim.wait, 10)
        replacement = self.start_worker(f"w{len(self.workers) + 1}@chaos") if self.options.replace_killed else None
        await asyncio.sleep(10)
        left = [p for p in engines if _alive(p)]
        fault["engine_processes_left_10s"] = len(left)
        for process in left:  # freed for the replacement (a build without PR_SET_PDEATHSIG leaves them)
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        victim.reap()
        await self.wait_recovered(fault, self.options.worker_start_s)
        if replacement is not None:
            fault["replacement_alive"] = replacement.alive()

    async def restart_redis(self, server: StandaloneRedis) -> None:
        fault = self.record("redis", outage_s=self.options.outage_s, appendfsync=server.appendfsync)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(self.options.outage_s)
        await asyncio.to_thread(server.start)
        fault["restarted_at_s"] = round(self.now(), 2)
        await self.wait_recovered(fault, 120)

    async def kill_api(self) -> None:
        url = list(self.apis)[-1]
        victim = self.apis[url]
        in_flight = sum(1 for o in self.load.outcomes if o.api == url and o.answered_at is None and not o.errors)
        fault = self.record("api", replica=url, requests_in_flight_there=in_flight)
        self.killed.add(victim.pid)
        await asyncio.to_thread(victim.kill)
        self.load.replicas.mark_down(url, math.inf)  # the balancer's health check takes it out
        await self.wait_recovered(fault, 60)

    async def failover(self, group) -> None:
        fault = self.record("failover", old_master_port=group.master_port)
        old = await asyncio.to_thread(group.kill_master)
        new = await asyncio.to_thread(group.wait_for_failover, 60)
        fault["promoted_at_s"] = round(self.now(), 2)
        fault["new_master_port"] = new
        await asyncio.to_thread(group.restart, old)
        await self.wait_recovered(fault, 120)

    # The figures ----------------------------------------------------------------------------------

    def sweep(self, redis_url: str) -> dict:
        """Every request the ledger knows, and the clients' records, in one account."""
        client = sync_client(redis_url)
        ledger = Ledger(client)
        ids = {key.decode()[len("sluice:req:"):] for key in client.scan_iter("sluice:req:*", count=1000)
               if key.count(b":") == 2} - self.warm_up_ids
        outcomes = [o for o in self.load.outcomes]
        by_id = {o.request_id: o for o in outcomes if o.request_id}
        accepted_ids = ids | {o.request_id for o in outcomes if o.accepted_at is not None and o.request_id}
        completions = Counter()
        for raw in client.lrange(keys.COMPLETIONS, 0, -1):
            try:
                completions[json.loads(raw).get("request_id")] += 1
            except (ValueError, AttributeError):
                continue
        completed = lost = twice = redelivered = 0
        lost_ids, twice_ids = [], []
        records = {}
        started_by: dict[str, list[tuple[str, int]]] = {}  # request id -> (worker, attempt) of each start
        for request_id in sorted(accepted_ids):
            record = records[request_id] = ledger.read(request_id)
            events = [json.loads(fields[b"event"]) for _, fields in client.xrange(keys.request_events_key(request_id))]
            started_by[request_id] = [(e.get("worker"), e.get("attempt")) for e in events if e.get("type") == "start"]
            done_events = sum(1 for e in events if e.get("type") == "done")
            outcome = by_id.get(request_id)
            if record is not None and record.attempt > 1:
                redelivered += 1
            duplicate = done_events > 1 or completions[request_id] > 1
            if outcome is not None and outcome.kind == "stream" and not outcome.resumed:
                answer = (record.result or {}).get("text") if record is not None else None
                if outcome.stream_ends > 2 or (answer is not None and outcome.text is not None
                                               and len(outcome.text) > len(answer)):
                    duplicate = True
                elif answer is not None and outcome.text is not None and outcome.text != answer:
                    outcome.errors.append("stream_text_differs")
            if duplicate:
                twice += 1
                twice_ids.append(request_id)
            ok = record is not None and record.status.value == "done"
            if ok and outcome is not None and outcome.answered_at is None:
                ok = False  # done in the ledger, but its client never read it: not completed for the client
            if ok:
                completed += 1
            else:
                lost += 1
                lost_ids.append(request_id)
        # A client that saw its request accepted but has no id (should not happen) is lost too.
        anonymous_lost = sum(1 for o in outcomes if o.accepted_at is not None and not o.request_id
                             and o.answered_at is None)
        errors = Counter(error.split(":")[0] for o in outcomes for error in o.errors)
        for fault in self.faults:
            if fault["fault"] == "worker":
                fault.update(victim_recovery(fault["worker_id"], fault["killed_at_epoch"], records, started_by))
        return {
            "requests_sent": len(outcomes),
            "accepted": len(accepted_ids) + anonymous_lost,
            "completed": completed,
            "lost": lost + anonymous_lost,
            "answered_twice": twice,
            "http_5xx": sum(o.http_5xx for o in outcomes),
            "http_503": sum(o.http_503 for o in outcomes),
            "redelivered": redelivered,
            "resumed_through_other_replica": sum(1 for o in outcomes if o.resumed),
            "client_errors": dict(errors),
            "by_kind": {kind: {"sent": sum(1 for o in outcomes if o.kind == kind),
                               "answered": sum(1 for o in outcomes if o.kind == kind and o.succeeded)}
                        for kind in KINDS},
            "lost_ids": lost_ids[:20],
            "answered_twice_ids": twice_ids[:20],
        }

    def recovery(self) -> list[dict]:
        return recovery_figures(self.load.outcomes, self.faults, self.options.window_s)

    def stop(self) -> None:
        # An API holding a client's open stream can take a minute to stop gracefully; the bench need not wait.
        for process in reversed(self.cluster.processes):
            process.stop(timeout=15 if process in self.apis.values() else 30)
        self.cluster.processes.clear()


def victim_recovery(worker_id: str, killed_at: float, records: dict, started_by: dict) -> dict:
    """The requests the killed worker was running (started there, then run again on another attempt) and how
    long after the kill the last of them was done: the recovery the issue bounds by twice the heartbeat TTL."""
    victims = [request_id for request_id, starts in started_by.items()
               if any(worker == worker_id and records[request_id] is not None and records[request_id].attempt > attempt
                      for worker, attempt in starts)]
    finished = [records[request_id].finished_at for request_id in victims
                if records[request_id].status.value == "done" and records[request_id].finished_at]
    # Restarted: the newest attempt's start, which the redelivery controls (the finish adds the rerun itself).
    restarted = [records[request_id].started_at for request_id in victims if records[request_id].started_at]
    return {"victim_requests": len(victims), "victim_requests_done": len(finished),
            "victim_requests_restarted_after_s": round(max(restarted) - killed_at, 2) if restarted else None,
            "victim_requests_done_after_s": round(max(finished) - killed_at, 2) if finished else None}


def recovery_figures(outcomes: list[Outcome], faults: list[dict], window_s: float) -> list[dict]:
    """Per fault (pure): from the fault (``at_s``) to the first accepted request sent after it, to the first
    answer after it, and to the first ``window_s`` window of requests (by send time) whose success rate is
    back at the rate before the first fault; and the slowest answer among requests sent within a window."""
    first_fault = faults[0]["at_s"] if faults else math.inf
    baseline = [o for o in outcomes if o.sent_at < first_fault]
    baseline_rate = (sum(o.succeeded for o in baseline) / len(baseline)) if baseline else 1.0
    figures = []
    for fault in faults:
        at = fault["at_s"]
        after = [o for o in outcomes if o.sent_at >= at]
        accepted = [o.accepted_at - at for o in after if o.accepted_at is not None]
        answered = [o.answered_at - at for o in outcomes if o.answered_at is not None and o.answered_at > at
                    and not o.errors]
        back = None
        for start in [o.sent_at for o in after]:
            sample = [o for o in after if start <= o.sent_at < start + window_s]
            if sum(o.succeeded for o in sample) / len(sample) >= baseline_rate:
                back = start - at
                break
        latencies = [o.answered_at - o.sent_at for o in outcomes
                     if o.answered_at is not None and at - window_s <= o.sent_at < at + window_s]
        figures.append({**fault,
                        "first_accepted_after_s": round(min(accepted), 2) if accepted else None,
                        "first_completed_after_s": round(min(answered), 2) if answered else None,
                        "success_rate_back_after_s": round(back, 2) if back is not None else None,
                        "max_latency_around_s": round(max(latencies), 2) if latencies else None})
    return figures


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the bench ------------------------------------------------------------------------------------

def _round_report(round_: Round, redis_url: str, started: float) -> dict:
    report = round_.sweep(redis_url)
    report["faults"] = round_.recovery()
    report["duration_s"] = round(time.monotonic() - started, 1)
    report.update(round_.extra)
    return report


def run_standalone_round(options: ChaosOptions, root: Path, echo) -> dict:
    faults = [fault for fault in options.faults if fault in STANDALONE_FAULTS]
    server = StandaloneRedis(root / "redis", options.appendfsync)
    server.start()
    round_ = None
    started = time.monotonic()
    try:
        round_ = Round("standalone", server.url, options, root / "standalone", echo)
        round_.start_stack()
        round_.extra["stack_ready_s"] = round(round_.wait_serving(options.worker_start_s, round_.workers[0]), 1)
        echo(f"[standalone] serving after {round_.extra['stack_ready_s']:.0f} s; load {options.rate}/s")
        plan = {"worker": round_.kill_worker, "redis": lambda: round_.restart_redis(server),
                "api": round_.kill_api}
        round_.t0 = time.monotonic()
        asyncio.run(round_.drive([plan[fault] for fault in faults]))
        return _round_report(round_, server.url, started)
    finally:
        if round_ is not None:
            round_.stop()
        server.stop()


def run_failover_round(options: ChaosOptions, root: Path, echo) -> dict:
    from bench.sentinel_group import SentinelGroup  # one master, one replica, three sentinels (embedded Valkey)

    group = SentinelGroup(root / "sentinel").start()
    round_ = None
    started = time.monotonic()
    try:
        url = group.url(0)
        # One worker: no worker is killed in this round.
        round_ = Round("sentinel", url, replace(options, workers=1), root / "sentinel-stack", echo)
        round_.start_stack()
        round_.extra["stack_ready_s"] = round(round_.wait_serving(options.worker_start_s, round_.workers[0]), 1)
        echo(f"[sentinel] serving after {round_.extra['stack_ready_s']:.0f} s; load {options.rate}/s")
        round_.t0 = time.monotonic()
        asyncio.run(round_.drive([lambda: round_.failover(group)]))
        return _round_report(round_, url, started)
    finally:
        if round_ is not None:
            round_.stop()
        group.stop()


TOTALS = ("requests_sent", "accepted", "completed", "lost", "answered_twice", "http_5xx", "http_503",
          "redelivered", "resumed_through_other_replica")


def run_chaos(options: ChaosOptions, json_out: str | None = None, echo=print) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
    started = time.monotonic()
    rounds: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    if any(fault in STANDALONE_FAULTS for fault in options.faults):
        rounds["standalone"] = run_standalone_round(options, root, echo)
    if "failover" in options.faults:
        if sentinel_supported():
            rounds["sentinel"] = run_failover_round(options, root, echo)
        else:
            skipped["failover"] = "this build has no redis+sentinel:// URLs (core.redis_urls)"
    report: dict = {name: sum(r[name] for r in rounds.values()) for name in TOTALS}
    errors = Counter()
    for r in rounds.values():
        errors.update(r["client_errors"])
    report["client_errors"] = dict(errors)
    report["faults"] = [fault for r in rounds.values() for fault in r["faults"]]
    report["rounds"] = rounds
    report["skipped"] = skipped
    report["options"] = {**asdict(options), "faults": list(options.faults)}
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["logs"] = str(root)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    return report


@click.command("chaos")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--faults", default=",".join(ALL_FAULTS), show_default=True,
              help="Which faults, in order: worker, redis, api (one stack), failover (a Sentinel stack).")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Requests per second (all kinds).")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--baseline-s", type=float, default=10.0, show_default=True, help="Load before the first fault.")
@click.option("--gap-s", type=float, default=10.0, show_default=True, help="Load between recovered faults.")
@click.option("--outage-s", type=float, default=3.0, show_default=True, help="How long Redis stays down.")
@click.option("--drain-s", type=float, default=90.0, show_default=True,
              help="After the load stops, how long accepted requests may take before they count as lost.")
@click.option("--appendfsync", type=click.Choice(["always", "everysec"]), default="always", show_default=True)
@click.option("--workers", type=int, default=2, show_default=True,
              help="vLLM workers of the standalone stack (~3 GB each); the Sentinel stack runs one.")
@click.option("--replace-killed/--no-replace-killed", default=False, show_default=True,
              help="Start a replacement for the killed worker (else the other workers take its requests).")
def chaos_command(json_out, faults, rate, max_tokens, baseline_s, gap_s, outage_s, drain_s, appendfsync, workers,
                  replace_killed):
    """Kill workers, Redis and an API replica under mixed load; count lost and twice-answered requests."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request and poll otherwise
    chosen = tuple(fault.strip() for fault in faults.split(",") if fault.strip())
    unknown = set(chosen) - set(ALL_FAULTS)
    if unknown:
        raise click.BadParameter(f"unknown faults {sorted(unknown)}; choose from {list(ALL_FAULTS)}")
    options = ChaosOptions(rate=rate, max_tokens=max_tokens, baseline_s=baseline_s, gap_s=gap_s, outage_s=outage_s,
                           drain_s=drain_s, appendfsync=appendfsync, faults=chosen, workers=workers,
                           replace_killed=replace_killed)
    report = run_chaos(options, json_out, echo=lambda line: click.echo(line, err=True))
    click.echo(f"sent {report['requests_sent']}, accepted {report['accepted']}, completed {report['completed']}, "
               f"lost {report['lost']}, answered twice {report['answered_twice']}, 5xx {report['http_5xx']}, "
               f"503 {report['http_503']}, redelivered {report['redelivered']}, client errors {report['client_errors']}")
    for fault in report["faults"]:
        click.echo(f"  {fault['fault']:>8} at {fault['at_s']:6.1f} s: first accepted +{fault['first_accepted_after_s']} s, "
                   f"first completed +{fault['first_completed_after_s']} s, success rate back "
                   f"+{fault['success_rate_back_after_s']} s")
        if fault["fault"] == "worker":
            click.echo(f"           its {fault['victim_requests']} running requests restarted elsewhere within "
                       f"+{fault['victim_requests_restarted_after_s']} s of the kill, done within "
                       f"+{fault['victim_requests_done_after_s']} s")
    for fault, why in report["skipped"].items():
        click.echo(f"  {fault}: skipped ({why})")
    click.echo(f"logs in {report['logs']}")
