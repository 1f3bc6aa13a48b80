"""The worker's engine: one vLLM AsyncLLM on its own event-loop thread.

Celery runs each request as a task on a pool thread; the task hands the
request to this runtime's event loop, where the engine batches it
continuously with every other admitted request, and blocks until it is done.
The number of tasks admitted at once is the consumer's prefetch (QoS) limit,
which the local autoscaler moves at run time (:mod:`workers.control`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time

from broker import keys
from broker.messages import GenerationRequest
from sluice.config import Settings
from sluice.redis_clients import async_client, sync_client
from workers.batching import make_gate
from workers.engine_stats import EngineState, stat_logger_factory
from workers.generation import EVENTS_TTL_S, generate_and_stream, publish

log = logging.getLogger(__name__)

COMPLETIONS_KEPT = 10_000
REQUEST_STATE_TTL_S = 24 * 3600


class EngineRuntime:
    def __init__(self, settings: Settings, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        self.engine_state = EngineState()
        self.admission_limit = 1 if settings.batching_mode == "none" else settings.batch_size
        self.inflight = 0
        self.inflight_lock = threading.Lock()
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
    def serve(self, payload: dict) -> dict | None:
        """Run one request (called on a Celery pool thread); None if it was already answered."""
        request = GenerationRequest.model_validate(payload)
        state_key = keys.request_key(request.request_id)
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
        with self.inflight_lock:
            self.inflight += 1
        try:
            future = asyncio.run_coroutine_threadsafe(self._serve(request, attempt, started_at), self._loop)
            record = future.result()
        finally:
            with self.inflight_lock:
                self.inflight -= 1
        return record

    async def _serve(self, request: GenerationRequest, attempt: int, started_at: float) -> dict:
        state_key = keys.request_key(request.request_id)
        try:
            async with self._gate.admit():
                record = await generate_and_stream(
                    self.engine, self._aioredis, request,
                    attempt=attempt, worker_id=self.worker_id, started_at=started_at,
                )
        except Exception as exc:  # the client must hear about it, not hang
            log.exception("request %s failed", request.request_id)
            await self._aioredis.hset(state_key, mapping={"status": "failed", "error": str(exc)})
            await publish(self._aioredis, request.request_id, {"type": "error", "attempt": attempt, "message": str(exc)})
            raise
        completion = {**record, "model": request.model}
        if self.settings.keep_prompt_text and request.prompt_text is not None:
            completion["prompt_text"] = request.prompt_text
        events_key = keys.request_events_key(request.request_id)
        # One transaction: a request is marked done exactly when its answer is published.
        async with self._aioredis.pipeline(transaction=True) as pipe:
            pipe.hset(state_key, mapping={"status": "done", "finished_at": record["finished_at"]})
            pipe.xadd(events_key, {"event": json.dumps({"type": "done", **record})})
            pipe.expire(events_key, EVENTS_TTL_S)
            pipe.lpush(keys.COMPLETIONS, json.dumps(completion))
            pipe.ltrim(keys.COMPLETIONS, 0, COMPLETIONS_KEPT - 1)
            await pipe.execute()
        return record

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
            "tokens_per_s": round(self.engine_state.tokens_per_second(), 2),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "model": self.settings.model_name,
            **self.engine_state.snapshot(),
        }
