"""Request execution: serve one request, from its delivery to its answer.

A Celery pool thread calls :meth:`RequestExecutor.serve` and blocks; the attempt itself runs on the
engine loop.  Every change of the request's state goes through the request ledger
(:mod:`broker.ledger`): ``start`` when the attempt begins, then exactly one of ``finish`` (fenced on the
attempt: a stale attempt of a worker presumed dead does not answer twice), ``fail`` or ``requeue``
(preempted: the message goes back to its lane and a later attempt starts over).
"""

from __future__ import annotations

import asyncio
import logging
import time

from broker.ledger import AsyncLedger, Ledger, RequestStatus
from broker.messages import GenerationRequest
from workers.generation import generate_and_stream
from workers.inflight import HeldRequest, InflightRequests
from workers.preemption import Preempted

log = logging.getLogger(__name__)


class Aborted(Exception):
    """Raised inside an attempt whose batch was cancelled or expired, or whose client left (workers.batch_watch)."""

    def __init__(self, request_id: str, status: str):
        super().__init__(f"request {request_id}: {status}")
        self.status = status


class PreemptibleEngine:
    """The engine as one attempt sees it: its output stream ends at the first output after preemption.

    Cancelling the attempt's task alone is not enough: Python 3.11's ``asyncio.wait_for`` (which
    redis-py's connection pool awaits on every publish) can swallow a cancellation, and the request
    would then run to completion.  Checking between outputs makes preemption take effect within one
    engine step; closing the stream makes vLLM abort the request.
    """

    def __init__(self, llm, inflight: InflightRequests, held: HeldRequest):
        self._llm = llm
        self._inflight = inflight
        self._held = held

    async def generate(self, *args, **kwargs):
        stream = self._llm.generate(*args, **kwargs)
        try:
            async for output in stream:
                reason = self._inflight.preempted_reason(self._held)
                if reason is not None:
                    raise Preempted(self._held.request_id, reason)
                status = self._inflight.aborted_as(self._held)
                if status is not None:
                    raise Aborted(self._held.request_id, status)
                yield output
        finally:
            await stream.aclose()  # vLLM aborts an unfinished request when its stream is closed


class RequestExecutor:
    def __init__(self, settings, worker_id: str, engine, admission, inflight: InflightRequests, ledger: Ledger,
                 preempts: bool, preemption_watch=None):
        self.settings = settings
        self.worker_id = worker_id
        self.engine = engine  # workers.engine.EngineLoop
        self.admission = admission  # workers.admission.Admission
        self.inflight = inflight
        self.ledger = ledger
        self.preempts = preempts
        self.preemption_watch = preemption_watch
        self.client = None  # the engine loop's asyncio Redis client, from start()
        self.async_ledger: AsyncLedger | None = None

    def start(self, client) -> None:
        """On the engine loop: the asyncio Redis client this executor's attempts use."""
        self.client = client
        self.async_ledger = AsyncLedger(client)

    # --- a Celery pool thread ----------------------------------------------------------------
    def serve(self, payload: dict, redelivered_at: float | None = None) -> dict | None:
        """Run one request (called on a Celery pool thread); None if it was already answered.

        ``redelivered_at``: when a dead worker's copy of this message went back to its lane, if it did."""
        request = GenerationRequest.model_validate(payload)
        held, running_here = self.inflight.hold(request.request_id, request.slo, preemptible=not request.stream,
                                                batch_id=request.batch_id)
        if held is None:
            # Redelivered while this worker still runs it: its heartbeat was late, not gone.  Running
            # it twice would waste a slot on work already under way; instead this delivery waits for
            # the running attempt, so its message is acknowledged when the work is really done.
            log.warning("request %s is already running on this worker: its redelivery was spurious "
                        "(a late heartbeat); waiting for the running attempt instead of starting another",
                        request.request_id)
            running_here.finished.wait()
            return None
        try:
            started_at = time.time()
            attempt = self.ledger.start(request.request_id, self.worker_id, started_at, batch_id=request.batch_id)
            if attempt is None:
                # The request ended already: e.g. redelivered after its worker finished it but died before
                # the ack, or cancelled while queued (or its batch was: start ended it).  Answer once only:
                # acknowledge without running.
                # (One line per request of a cancelled batch: not a warning.)
                (log.info if request.batch_id else log.warning)("request %s already ended; dropping this delivery",
                                                                request.request_id)
                return None
            if redelivered_at is not None:
                log.info("request %s: attempt %d, redelivered %.2f s ago after its worker died", request.request_id,
                         attempt, started_at - redelivered_at)
            over_limit = self.inflight.count(held, attempt, started_at, admission_limit=self.admission.limit,
                                             preempts=self.preempts)
            future = self.engine.submit(self._run(request, held, attempt, started_at, redelivered_at))
            if over_limit:
                # It came in through the headroom slot: a batch request gives its place back now,
                # not at the next periodic check.
                self.engine.call_soon(self.preemption_watch.interactive_over_limit)
            return future.result()
        finally:
            self.inflight.release(held)

    # --- the engine loop ---------------------------------------------------------------------
    async def _run(self, request: GenerationRequest, held: HeldRequest, attempt: int, started_at: float,
                   redelivered_at: float | None) -> dict:
        self.inflight.on_loop(held, asyncio.current_task())
        try:
            try:
                async with self.admission.gate.admit():
                    self.inflight.admitted(held)
                    record = await generate_and_stream(
                        PreemptibleEngine(self.engine.llm, self.inflight, held), self.client, request,
                        attempt=attempt, worker_id=self.worker_id, started_at=started_at,
                        stream_interval_s=self.settings.stream_interval_s,
                    )
                    record["redelivered_at"] = redelivered_at
            finally:
                self.inflight.generation_ended(held)
        except Aborted as exc:
            return await self._abort(request, attempt, exc.status)
        except asyncio.CancelledError:
            status = self.inflight.aborted_as(held)
            if status is not None:
                return await self._abort(request, attempt, status)
            reason = self.inflight.preempted_reason(held)
            if reason is None:
                raise
            await self._yield_place(request, attempt, reason)
        except Exception as exc:  # the client must hear about it, not hang
            reason = self.inflight.preempted_reason(held)
            if reason is not None:  # the cancellation surfaced as another error
                await self._yield_place(request, attempt, reason)
            log.exception("request %s failed", request.request_id)
            await self.async_ledger.fail(request, attempt, str(exc))
            raise
        text = record.pop("text")  # streamed already as deltas; kept once, with the request state
        completion = {**record, "model": request.model}
        if self.settings.keep_prompt_text and request.prompt_text is not None:
            completion["prompt_text"] = request.prompt_text
        # Only the newest attempt answers: a worker that was declared dead while alive finishes its
        # stale attempt without answering twice or logging the completion twice.
        newest = await self.async_ledger.finish(request, attempt, record, text=text, completion=completion)
        if newest is not None:
            log.warning("request %s: attempt %d finished, but attempt %d is the newest or the request ended "
                        "(this worker was presumed dead); it does not answer again",
                        request.request_id, attempt, newest)
            return {**record, "superseded_by_attempt": newest}
        return record

    async def _abort(self, request: GenerationRequest, attempt: int, status: str) -> dict:
        """End an attempt of a closed batch's request, or of one its client abandoned (the ledger ended it
        already; this abort is fenced out), unanswered (its message is acknowledged)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        await self.async_ledger.abort(request, attempt, RequestStatus(status))
        if request.batch_id is not None:
            log.info("request %s aborted: its batch %s was %s", request.request_id, request.batch_id, status)
        else:
            log.info("request %s aborted: its client disconnected", request.request_id)
        return {"request_id": request.request_id, "aborted": status}

    async def _yield_place(self, request: GenerationRequest, attempt: int, reason: str):
        """Mark a preempted request queued again and raise Preempted: the task requeues its message."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        await self.async_ledger.requeue(request, attempt, self.worker_id)
        raise Preempted(request.request_id, reason)
