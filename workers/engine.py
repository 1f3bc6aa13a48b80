"""The worker's engine: one vLLM AsyncLLM on its own event-loop thread ("sluice-engine-loop").

Everything asynchronous in a worker runs on that one loop: the engine's output handling, every request's
attempt, the batching gate, the preemption watch and the worker's asyncio Redis client.  Other threads
only hand work to it (:meth:`EngineLoop.submit`, :meth:`EngineLoop.call_soon`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from typing import Awaitable, Callable

from core.settings import Settings
from workers import engine_guard
from workers.engine_stats import EngineState, stat_logger_factory

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = EngineState()  # written by vLLM's stat logger (on the loop), read by the heartbeat
        self.llm = None  # the AsyncLLM, once started; used on the loop only
        self.timings: dict[str, float] = {}  # load_s, warm_up_s: what start-up spent where (time to ready)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sluice-engine-loop", daemon=True)

    def start(self, then: Callable[[], Awaitable[None]]) -> None:
        """Start the loop, the engine and its warm-up, then run ``then()`` on the loop; blocks until done."""
        self._thread.start()

        async def start_all():
            await self._start_engine()
            await then()

        self.submit(start_all()).result()

    def submit(self, coroutine) -> concurrent.futures.Future:
        """Run a coroutine on the loop (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call_soon(self, callback, *args) -> None:
        """Call ``callback(*args)`` on the loop (from any other thread)."""
        self._loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        if self.llm is not None:
            # The engine's output handler first: vLLM's shutdown ends the engine process before it cancels
            # the handler, which then logs the dead engine as an error with a traceback on every clean stop.
            with contextlib.suppress(Exception):
                self.submit(self._stop_output_handler()).result(timeout=10)
            self.llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _stop_output_handler(self) -> None:
        handler = getattr(self.llm, "output_handler", None)  # the attribute vLLM's own shutdown cancels
        if handler is not None and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler

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
            max_num_seqs=self.settings.max_admission_limit,
            max_model_len=self.settings.max_model_len,
            enforce_eager=True,
            disable_log_stats=False,
            seed=0,
        )
        # The engine core runs in a process vLLM starts from this thread (which lives as long as the worker):
        # it must not outlive the worker (workers/engine_guard.py).
        engine_guard.install()
        self.llm = AsyncLLM.from_engine_args(args, stat_loggers=[stat_logger_factory(self.state)])
        self.timings["load_s"] = time.time() - started
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
        async for _ in self.llm.generate(TokensPrompt(prompt_token_ids=[1, 2, 3, 4]),
                                         SamplingParams(max_tokens=4, ignore_eos=True), request_id="sluice-warmup"):
            pass
        self.timings["warm_up_s"] = time.time() - started
        log.info("engine warm-up took %.2fs", self.timings["warm_up_s"])
