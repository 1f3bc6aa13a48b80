"""The worker's engine: one vLLM AsyncLLM on its own event-loop thread.

Celery runs each request as a task on a pool thread; the task hands the
request to this runtime's event loop, where the engine batches it
continuously with every other admitted request, and blocks until it is done.
The number of tasks admitted at once is the consumer's prefetch (QoS) limit,
which the local autoscaler moves at run time (:mod:`workers.control`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import redis

from broker import deadlines, keys
from broker.messages import GenerationRequest
from sluice.config import Settings
from sluice.redis_clients import async_client, sync_client
from workers.batching import make_gate
from workers.engine_stats import EngineState, stat_logger_factory
from workers.generation import EVENTS_TTL_S, generate_and_stream, publish
from workers.preemption import Preempted, RunningRequest, batch_requests_to_preempt, worker_preempts

log = logging.getLogger(__name__)

COMPLETIONS_KEPT = 10_000
REQUEST_STATE_TTL_S = 24 * 3600


@dataclass
class _Attempt:
    """A request on the engine loop, as preemption sees it."""

    info: RunningRequest
    task: asyncio.Task
    admitted: bool = False  # past the batching gate, i.e. on the engine
    preempted: str | None = None  # why, once it has been told to yield


class _PreemptibleEngine:
    """The engine as one attempt sees it: its output stream ends at the first output after preemption.

    Cancelling the attempt's task alone is not enough: Python 3.11's ``asyncio.wait_for`` (which
    redis-py's connection pool awaits on every publish) can swallow a cancellation, and the request
    would then run to completion.  Checking between outputs makes preemption take effect within one
    engine step; closing the stream makes vLLM abort the request.
    """

    def __init__(self, engine, attempt: _Attempt):
        self._engine = engine
        self._attempt = attempt

    async def generate(self, *args, **kwargs):
        stream = self._engine.generate(*args, **kwargs)
        try:
            async for output in stream:
                if self._attempt.preempted is not None:
                    raise Preempted(self._attempt.info.request_id, self._attempt.preempted)
                yield output
        finally:
            await stream.aclose()  # vLLM aborts an unfinished request when its stream is closed


class EngineRuntime:
    def __init__(self, settings: Settings, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        self.engine_state = EngineState()
        self.admission_limit = 1 if settings.batching_mode == "none" else settings.batch_size
        self.inflight = 0
        self.inflight_by_lane = {"interactive": 0, "batch": 0}
        self.inflight_lock = threading.Lock()
        # Preemption: requests on the engine loop, the preempted ones whose serve() has not returned yet
        # (they still hold a Celery slot), and how many batch requests yielded so far.
        self._running: dict[str, _Attempt] = {}
        self._yielding: dict[str, str] = {}  # request id -> lane; guarded by inflight_lock
        # Interactive requests taken through the headroom slot of a full worker, each owed one batch
        # request's place (guarded by inflight_lock); and the attempt each request id is running here.
        self._displacements_owed = 0
        self._serving: dict[str, concurrent.futures.Future] = {}
        self.preempted_batch_requests = 0
        self._preemption_watch = None
        self._over_limit_arrival = asyncio.Event()  # wakes the preemption watch at once
        self.consumer = None
        self.started_at = time.time()
        self.redis = sync_client(settings.require_redis_url())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sluice-engine-loop", daemon=True)
        self.engine = None
        self._aioredis = None
        self._gate = None

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_engine(), self._loop).result()

    async def _start_engine(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.kv_cache_gib))
        os.environ.setdefault("OMP_NUM_THREADS", str(self.settings.engine_threads))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.time()
        args = AsyncEngineArgs(
            model=str(self.settings.model_dir),
            served_model_name=[self.settings.model_name],
            scheduling_policy="priority",
            max_num_seqs=self.settings.max_batch_size,
            max_model_len=self.settings.max_model_len,
            enforce_eager=True,
            disable_log_stats=False,
            seed=0,
        )
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[stat_logger_factory(self.engine_state)])
        self._aioredis = async_client(self.settings.require_redis_url())
        self._gate = make_gate(self.settings.batching_mode, self.admission_limit, self.settings.dynamic_batch_timeout_s)
        await self._warm_up()
        if self.preempts():
            self._preemption_watch = asyncio.get_running_loop().create_task(self._watch_for_interactive_arrivals())
        log.info("engine for %s ready in %.1fs", self.settings.model_name, time.time() - started)

    async def _warm_up(self) -> None:
        """One short generation before taking traffic: the first request pays vLLM's lazy set-up.

        Without it the first admitted batch stalls the process for seconds, long enough to
        miss heartbeats and be declared dead while alive.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        started = time.time()
        async for _ in self.engine.generate(TokensPrompt(prompt_token_ids=[1, 2, 3, 4]),
                                            SamplingParams(max_tokens=4, ignore_eos=True), request_id="sluice-warmup"):
            pass
        log.info("engine warm-up took %.2fs", time.time() - started)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)

    # --- admission -------------------------------------------------------------
    def attach_consumer(self, consumer) -> None:
        self.consumer = consumer
        self.set_admission_limit(self.admission_limit)

    def set_admission_limit(self, limit: int) -> int:
        if self.settings.batching_mode == "none":
            limit = 1
        limit = max(1, min(int(limit), self.settings.max_batch_size))
        if limit != self.admission_limit:
            log.info("admission limit %d -> %d", self.admission_limit, limit)
        self.admission_limit = limit
        if self._gate is not None and hasattr(self._gate, "batch_size") and self.settings.batching_mode == "dynamic":
            self._gate.batch_size = limit
        if self.consumer is not None and getattr(self.consumer, "qos", None) is not None:
            self.consumer.qos.value = limit
            self.consumer.qos.update()
        return limit

    # --- serving ---------------------------------------------------------------
    def serve(self, payload: dict, redelivered_at: float | None = None) -> dict | None:
        """Run one request (called on a Celery pool thread); None if it was already answered.

        ``redelivered_at``: when a dead worker's copy of this message went back to its lane, if it did."""
        request = GenerationRequest.model_validate(payload)
        state_key = keys.request_key(request.request_id)
        running_here = self._serving.get(request.request_id)
        if running_here is not None:
            # Redelivered while this worker still runs it: its heartbeat was late, not gone.  Running
            # it twice would waste a slot on work already under way; instead this delivery waits for
            # the running attempt, so its message is acknowledged when the work is really done.
            log.warning("request %s is already running on this worker: its redelivery was spurious "
                        "(a late heartbeat); waiting for the running attempt instead of starting another",
                        request.request_id)
            with contextlib.suppress(Exception):
                running_here.result()
            return None
        if self.redis.hget(state_key, "status") == b"done":
            # Redelivered after its worker finished it but died before the ack: answer once only.
            log.warning("request %s already done; dropping duplicate delivery", request.request_id)
            return None
        started_at = time.time()
        with self.redis.pipeline() as pipe:
            pipe.hincrby(state_key, "attempt", 1)
            pipe.hset(state_key, mapping={"status": "running", "worker": self.worker_id, "started_at": started_at})
            pipe.expire(state_key, REQUEST_STATE_TTL_S)
            attempt = pipe.execute()[0]
        if redelivered_at is not None:
            log.info("request %s: attempt %d, redelivered %.2f s ago after its worker died", request.request_id,
                     attempt, started_at - redelivered_at)
        with self.inflight_lock:
            occupied = self.inflight - len(self._yielding)
            over_limit = request.slo == "interactive" and occupied >= self.admission_limit and self.preempts()
            if over_limit:
                self._displacements_owed += 1
            self.inflight += 1
            self.inflight_by_lane[request.slo] += 1
        try:
            future = asyncio.run_coroutine_threadsafe(self._serve(request, attempt, started_at, redelivered_at),
                                                      self._loop)
            self._serving[request.request_id] = future
            if over_limit:
                # It came in through the headroom slot: a batch request gives its place back now,
                # not at the next periodic check.
                self._loop.call_soon_threadsafe(self._over_limit_arrival.set)
            record = future.result()
        finally:
            self._serving.pop(request.request_id, None)
            with self.inflight_lock:
                self.inflight -= 1
                self.inflight_by_lane[request.slo] -= 1
                self._yielding.pop(request.request_id, None)
        return record

    async def _serve(self, request: GenerationRequest, attempt: int, started_at: float,
                     redelivered_at: float | None = None) -> dict:
        state_key = keys.request_key(request.request_id)
        current = _Attempt(RunningRequest(request.request_id, request.slo, started_at, attempt,
                                          preemptible=not request.stream), asyncio.current_task())
        self._running[request.request_id] = current
        try:
            try:
                async with self._gate.admit():
                    current.admitted = True
                    record = await generate_and_stream(
                        _PreemptibleEngine(self.engine, current), self._aioredis, request,
                        attempt=attempt, worker_id=self.worker_id, started_at=started_at,
                    )
                    record["redelivered_at"] = redelivered_at
            finally:
                # Generated (or failed): from here on this attempt cannot be preempted.
                if self._running.get(request.request_id) is current:
                    del self._running[request.request_id]
        except asyncio.CancelledError:
            if current.preempted is None:
                raise
            await self._yield_place(request, attempt, current.preempted)
        except Exception as exc:  # the client must hear about it, not hang
            if current.preempted is not None:  # the cancellation surfaced as another error
                await self._yield_place(request, attempt, current.preempted)
            log.exception("request %s failed", request.request_id)
            async with self._aioredis.pipeline(transaction=True) as pipe:
                pipe.hset(state_key, mapping={"status": "failed", "error": str(exc)})
                deadlines.track(pipe, request, -1)
                await pipe.execute()
            await publish(self._aioredis, request.request_id, {"type": "error", "attempt": attempt, "message": str(exc)})
            raise
        text = record.pop("text")  # streamed already as deltas; kept once, with the request state
        completion = {**record, "model": request.model}
        if self.settings.keep_prompt_text and request.prompt_text is not None:
            completion["prompt_text"] = request.prompt_text
        events_key = keys.request_events_key(request.request_id)
        # One transaction: a request is marked done exactly when its answer is published, and only
        # by its newest attempt (WATCH): a worker that was declared dead while alive finishes its
        # stale attempt without answering twice or logging the completion twice.
        async with self._aioredis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(state_key)
                    newest = int(await pipe.hget(state_key, "attempt") or 0)
                    if newest != attempt:
                        log.warning("request %s: attempt %d finished after attempt %d had started elsewhere "
                                    "(this worker was presumed dead); the newest attempt answers",
                                    request.request_id, attempt, newest)
                        return {**record, "superseded_by_attempt": newest}
                    pipe.multi()
                    # The answer stays with the request state (24 h) for clients that poll instead of waiting.
                    pipe.hset(state_key, mapping={"status": "done", "finished_at": record["finished_at"],
                                                  "result": json.dumps({**record, "text": text})})
                    pipe.xadd(events_key, {"event": json.dumps({"type": "done", **record})})
                    pipe.expire(events_key, EVENTS_TTL_S)
                    pipe.lpush(keys.COMPLETIONS, json.dumps(completion))
                    pipe.ltrim(keys.COMPLETIONS, 0, COMPLETIONS_KEPT - 1)
                    deadlines.track(pipe, request, -1)
                    await pipe.execute()
                    return record
                except redis.WatchError:
                    continue  # the state changed under us (a new attempt started): look again

    # --- preemption ------------------------------------------------------------
    def preempts(self) -> bool:
        """Whether this worker yields batch work to interactive arrivals (mixed pool, both lanes)."""
        return worker_preempts(self.settings.preemption, self.settings.worker_pool, self.settings.worker_lanes)

    async def _watch_for_interactive_arrivals(self) -> None:
        interval = self.settings.preemption_check_interval_s
        log.info("preemption on: checking for interactive arrivals every %.2fs", interval)
        while True:
            try:
                # An interactive request taken over the limit wakes the check at once; it is the one
                # waiting, so the lane need not be read for that decision.
                await asyncio.wait_for(self._over_limit_arrival.wait(), interval)
                arrived = True
            except asyncio.TimeoutError:
                arrived = False
            self._over_limit_arrival.clear()
            try:
                await self._preempt_for_interactive(look_at_lane=not arrived)
            except Exception:  # a Redis hiccup must not end the watch
                log.exception("preemption check failed")

    async def _preempt_for_interactive(self, look_at_lane: bool = True) -> list[str]:
        for yielding in self._running.values():
            if yielding.preempted is not None and not yielding.task.done():
                yielding.task.cancel()  # again: a cancellation can be swallowed (see _PreemptibleEngine)
        candidates = [a.info for a in self._running.values()
                      if a.admitted and a.preempted is None and a.info.slo == "batch"]
        with self.inflight_lock:
            # Requests already yielding still hold their slot until their message is requeued: not again.
            inflight = dict(self.inflight_by_lane)
            for lane in self._yielding.values():
                inflight[lane] -= 1
            # Owed places are settled by this decision, or forgiven when no batch request can give one.
            owed, self._displacements_owed = self._displacements_owed, 0
        if not candidates:
            return []
        if owed == 0 and sum(inflight.values()) < self.admission_limit:
            return []  # not full: no Redis round trip
        queued = await self._aioredis.zcard(keys.lane_key("interactive")) if look_at_lane else 0
        victims = batch_requests_to_preempt(self.settings.worker_pool, self.admission_limit, inflight, queued,
                                            candidates, interactive_over_limit=owed,
                                            max_attempts=self.settings.preemption_max_attempts)
        preempted = []
        for request_id in victims:
            current = self._running.get(request_id)
            if current is None or current.preempted is not None or current.task.done():
                continue  # finished meanwhile
            reason = (f"{owed} interactive request(s) taken over the limit and {queued} queued, "
                      f"the worker is full ({sum(inflight.values())}/{self.admission_limit} in flight)")
            current.preempted = reason
            with self.inflight_lock:
                self._yielding[request_id] = current.info.slo
            current.task.cancel()  # vLLM aborts the engine request when its generator is cancelled
            self.preempted_batch_requests += 1
            preempted.append(request_id)
            log.info("preempting batch request %s (attempt %d, running %.1fs): %s", request_id,
                     current.info.attempt, time.time() - current.info.started_at, reason)
        return preempted

    async def _yield_place(self, request: GenerationRequest, attempt: int, reason: str):
        """Mark a preempted request queued again and raise Preempted: the task requeues its message."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        state_key = keys.request_key(request.request_id)
        async with self._aioredis.pipeline(transaction=True) as pipe:
            pipe.hset(state_key, mapping={"status": "queued", "preempted_at": time.time()})
            pipe.hincrby(state_key, "preemptions", 1)
            # For whoever reads the stream: this attempt ends here, unanswered; a later one starts over.
            pipe.xadd(keys.request_events_key(request.request_id),
                      {"event": json.dumps({"type": "preempted", "attempt": attempt, "worker": self.worker_id})})
            await pipe.execute()
        raise Preempted(request.request_id, reason)

    # --- observation -----------------------------------------------------------
    def heartbeat_fields(self) -> dict:
        return {
            "worker_id": self.worker_id,
            "pool": self.settings.worker_pool,
            "lanes": ",".join(self.settings.worker_lanes),
            "batching_mode": self.settings.batching_mode,
            "admission_limit": self.admission_limit,
            "max_batch_size": self.settings.max_batch_size,
            "inflight": self.inflight,
            "preempted_batch_requests": self.preempted_batch_requests,
            "inflight_interactive": self.inflight_by_lane["interactive"],
            "inflight_batch": self.inflight_by_lane["batch"],
            "itl_s": "" if (itl := self.engine_state.mean_itl()) is None else round(itl, 5),
            "tokens_per_s": round(self.engine_state.tokens_per_second(), 2),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "model": self.settings.model_name,
            **self.engine_state.snapshot(),
        }
