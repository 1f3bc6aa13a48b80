"""FastAPI application: OpenAI-compatible endpoints in front of the Sluice lanes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
import time

import anyio
import kombu.exceptions
import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import Auth, Caller, owns
from api.admission import SLO_HEADER, build_request, true_length, validate_body
from api.enqueue import Enqueuer
from api.errors import APIError, bad_request, redis_unavailable, validation_error
from api.limits import BodyLimits, check_messages, decode_json, read_body
from api.events import EventHub, EventsUnavailable, RequestFailed, RequestTimedOut, WorkerLost, follow
from api.batch_runner import BatchRunner
from api.batches import batches_router
from api.files import files_router
from api.key_admin import key_admin_router
from api.metrics import Metrics
from api.prediction import attach_predictor, record_feedback
from api.responses import completion_object, finish_reason, usage
from api.schemas import ChatCompletionRequest, CompletionRequest, openapi_body
from broker.decisions import DECISIONS_KEPT, read_decisions
from broker.heartbeat import read_heartbeats_async
from broker.batches import BatchStore
from broker.files import FileCatalog, Files, LocalFileStore
from broker.ledger import AsyncLedger
from broker.messages import GenerationRequest
from broker.redelivery import redeliver_from_dead_workers
from broker.fair_share import FairShareConfig
from broker.queue_policies import ScoreInput, make_queue_policy, predicts_lengths
from core.settings import Settings
from core.redis_clients import async_client, sync_client
from broker.celery_app import create_app

log = logging.getLogger(__name__)

# How long a thread holding the GIL runs before the event loop may take it (CPython's default: 5 ms).
# Batch validation and enqueue run in threads of this process; at 5 ms, each of the several GIL handoffs
# a request needs could wait that long, which showed as 13 ms p50 for GET /v1/batches/{id} during an
# enqueue (`sluice bench batch`).  1 ms keeps the loop responsive at a small cost to the threads.
GIL_SWITCH_INTERVAL_S = 0.001
# What "Redis is unreachable" looks like from a route: redis-py's connection errors and timeouts (after the
# client's own retries), and kombu's error for a publish that failed after its retries.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)


class SluiceAPI:
    """The state behind the routes: tokenizer, queue, Redis, metrics, predictor."""

    def __init__(self, settings: Settings):
        from transformers import AutoTokenizer

        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        self.redis = sync_client(settings.require_redis_url())
        self.aioredis = async_client(settings.redis_url)
        self.events = EventHub(self.aioredis, outage_s=settings.stream_outage_s)
        self.ledger = AsyncLedger(self.aioredis)  # reads request state (the transport and workers write it)
        self.files = Files(LocalFileStore(settings.files_dir), FileCatalog(self.aioredis))
        self.batches = BatchStore(self.aioredis)
        self.auth = Auth(settings.auth_enabled, self.aioredis)
        self.celery = create_app(settings)
        self.enqueuer = Enqueuer(self.celery, self.redis, settings.lane_queue_limits, settings.retry_after_s,
                                 keep_prompt_text=settings.keep_prompt_text, fair_share=FairShareConfig.from_settings(settings))
        self.metrics = Metrics(self.redis, settings.lanes)
        self.queue_policy = make_queue_policy(settings.queue_policy,
                                              aging_tokens_per_s=settings.ssjf_aging_tokens_per_s,
                                              max_predicted_tokens=settings.ssjf_max_predicted_tokens)
        self.predicts_lengths = predicts_lengths(self.queue_policy, settings.predict_lengths)
        self.predictor = None  # set by attach_predictor at start-up when self.predicts_lengths
        self._background: set[asyncio.Task] = set()

    # --- request preparation --------------------------------------------------
    def tokenize(self, body) -> tuple[list[int], str]:
        if isinstance(body, ChatCompletionRequest):
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in body.messages]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], messages[-1]["content"]
        if isinstance(body.prompt, list):
            vocab = len(self.tokenizer)
            if not body.prompt or any(not 0 <= token < vocab for token in body.prompt):
                raise bad_request(f"prompt token ids must be a non-empty list of ids below {vocab}", param="prompt")
            return list(body.prompt), self.tokenizer.decode(body.prompt)
        if not body.prompt:
            raise bad_request("the prompt is empty", param="prompt")
        return self.tokenizer(body.prompt)["input_ids"], body.prompt

    async def prepare(self, body, header_slo: str | None) -> GenerationRequest:
        prompt_token_ids, prompt_text = await anyio.to_thread.run_sync(self.tokenize, body)
        request = build_request(
            body, prompt_token_ids=prompt_token_ids, prompt_text=prompt_text, header_slo=header_slo,
            served_model=self.settings.model_name, max_model_len=self.settings.max_model_len,
            default_max_tokens=self.settings.default_max_tokens,
            batch_default_deadline_s=self.settings.scaler.slo.batch_deadline_s,
            bench_fields=self.settings.bench_fields,
        )
        true_output_tokens = true_length(body, self.queue_policy)
        if self.predicts_lengths:
            started = time.perf_counter()
            request.predicted_output_tokens = await self.predictor.predict(prompt_text, self.settings.model_name)
            self.metrics.predict_seconds.observe(time.perf_counter() - started)
        request.score = self.queue_policy.score(ScoreInput(
            arrival_time=request.enqueued_at, predicted_output_tokens=request.predicted_output_tokens,
            true_output_tokens=true_output_tokens, max_output_tokens=request.sampling.max_tokens))
        return request

    def on_done(self, request: GenerationRequest, record: dict) -> None:
        self.metrics.observe_done(request.slo, record)
        task = asyncio.get_running_loop().create_task(record_feedback(self, request, record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def abandon(self, request: GenerationRequest) -> None:
        """The client went away before its answer was complete: end the request (queued: never run; running:
        its worker aborts it), in the background, since the caller is being cancelled."""
        self.metrics.requests.labels(request.slo, "abandoned").inc()
        log.info("request %s: the client disconnected; cancelling it", request.request_id)

        async def end() -> None:
            try:
                await self.ledger.abandon(request.request_id)
            except redis.RedisError:
                log.exception("request %s: could not cancel the abandoned request", request.request_id)

        task = asyncio.get_running_loop().create_task(end())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def submit(self, request: GenerationRequest) -> None:
        await anyio.to_thread.run_sync(self.enqueuer.enqueue, request)

    async def sweep_dead_workers(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(redeliver_from_dead_workers, self.redis)
            except REDIS_UNAVAILABLE as exc:  # an outage: /healthz says so; one line, not a traceback a second
                log.warning("redelivery sweep skipped: Redis unreachable (%s)", exc)
            except redis.RedisError:
                log.exception("redelivery sweep failed")
            await asyncio.sleep(self.settings.heartbeat_interval_s)


def _sluice_info(request: GenerationRequest, record: dict) -> dict:
    return {"slo": request.slo, "score": request.score, "predicted_output_tokens": request.predicted_output_tokens,
            "worker": record.get("worker"), "attempt": record.get("attempt"),
            **{k: record.get(k) for k in ("queue_wait_s", "ttft_s", "itl_s", "e2e_s")}}


def create_api(settings: Settings) -> FastAPI:
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        sluice = SluiceAPI(settings)
        log.info("authentication %s (SLUICE_AUTH=%s, listening on %s)", "ON: API keys required"
                 if sluice.auth.enabled else "off", settings.auth, settings.api_host)
        if sluice.predicts_lengths:
            await attach_predictor(sluice)
        state["sluice"] = sluice
        runner = state["batch_runner"] = BatchRunner(sluice)
        gc.freeze()  # start-up objects (the predictor's model among them) out of full collections' reach
        background = [asyncio.create_task(sluice.sweep_dead_workers()), asyncio.create_task(sluice.events.run()),
                      asyncio.create_task(runner.run())]
        yield
        for task in background:
            task.cancel()
        await runner.close()
        if sluice.predictor is not None:
            await sluice.predictor.close()
        await sluice.events.close()
        await sluice.aioredis.aclose()

    app = FastAPI(title="Sluice", version="0.1.0", lifespan=lifespan)

    async def caller(request: Request) -> Caller:
        return await state["sluice"].auth.caller(request)

    async def admin(request: Request) -> Caller:
        return await state["sluice"].auth.admin(request)

    who = Depends(caller)
    app.include_router(files_router(settings, lambda: state["sluice"].files,
                                    lambda file_id: state["sluice"].batches.open_batch_reading(file_id), caller))
    app.include_router(batches_router(lambda: state["sluice"].batches, lambda: state["sluice"].files,
                                      lambda: state["batch_runner"].wake(), BodyLimits.from_settings(settings),
                                      caller))
    app.include_router(key_admin_router(lambda: state["sluice"].auth.keys, admin))

    @app.exception_handler(APIError)
    async def on_api_error(_request: Request, exc: APIError):
        if exc.status < 500 and "sluice" in state:
            state["sluice"].metrics.rejected.labels(str(exc.status)).inc()
        return exc.response()

    async def on_redis_unavailable(request: Request, exc: Exception):
        # An outage is an expected state: 503 + Retry-After, never 500 (docs/operations.md).
        log.warning("%s %s: Redis unreachable (%s: %s); answering 503", request.method, request.url.path,
                    type(exc).__name__, exc)
        if "sluice" in state:
            state["sluice"].metrics.rejected.labels("503").inc()
        return redis_unavailable(settings.retry_after_s).response()

    for error_class in REDIS_UNAVAILABLE:
        app.add_exception_handler(error_class, on_redis_unavailable)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_parameters(request: Request, exc: RequestValidationError):
        # FastAPI's own validation (query and path parameters) answers 422 with its own shape; OpenAI's is 400.
        return await on_api_error(request, validation_error(exc.errors()))

    limits = BodyLimits.from_settings(settings)

    async def parse(request: Request, model_cls):
        data = decode_json(await read_body(request, limits), limits.max_json_depth)
        check_messages(data, limits.max_messages)
        return validate_body(model_cls, data)

    @app.get("/healthz")
    async def healthz():
        sluice = state["sluice"]
        try:
            beats = await read_heartbeats_async(sluice.aioredis, starting=True)
        except REDIS_UNAVAILABLE as exc:
            # The API is up and answers (503 + Retry-After on the routes that need Redis) until Redis is back.
            return JSONResponse({"status": "degraded", "redis": "unreachable", "error": str(exc)}, status_code=503,
                                headers={"Retry-After": str(settings.retry_after_s)})
        starting = sum(1 for beat in beats.values() if beat.state == "starting")
        return {"status": "ok", "model": settings.model_name, "queue_policy": sluice.queue_policy.name,
                "predicts_lengths": sluice.predicts_lengths,
                "predictor_version": sluice.predictor.version if sluice.predictor else None,
                "registered_workers": len(beats) - starting, "starting_workers": starting}

    @app.get("/metrics", dependencies=[Depends(admin)])
    async def metrics():
        payload = await anyio.to_thread.run_sync(generate_latest, state["sluice"].metrics.registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/sluice/requests/{request_id}")
    async def request_status(request_id: str, me: Caller = who):
        record = await state["sluice"].ledger.read(request_id)
        if record is None or not owns(me, record.tenant):
            raise APIError(404, f"no request {request_id!r} (unknown, or finished more than a day ago)",
                           code="request_not_found")
        reply = {"id": request_id, "status": record.status.value, "slo": record.lane, "attempt": record.attempt}
        if record.result is not None:
            reply["result"] = record.result
        if record.error is not None:
            reply["error"] = record.error
        return reply

    @app.get("/v1/sluice/requests/{request_id}/events")
    async def request_events(request_id: str, me: Caller = who):
        """The request's events as server-sent events, from its first (``start``, ``delta``..., then
        ``done`` or ``error``; ``data: [DONE]`` at the end): any API replica can follow a request
        another accepted, and a client whose replica died follows it again here (docs/operations.md)."""
        sluice = state["sluice"]
        record = await sluice.ledger.read(request_id)
        if record is None or not owns(me, record.tenant):
            raise APIError(404, f"no request {request_id!r} (unknown, or finished more than a day ago)",
                           code="request_not_found")
        return StreamingResponse(replay_events(sluice, request_id), media_type="text/event-stream",
                                 headers={"X-Sluice-Request-Id": request_id})

    @app.get("/v1/scaler/decisions", dependencies=[Depends(admin)])
    async def scaler_decisions(limit: int = 50):
        if not 1 <= limit <= DECISIONS_KEPT:
            raise bad_request(f"limit must be between 1 and {DECISIONS_KEPT}", param="limit")
        return {"object": "list", "data": await anyio.to_thread.run_sync(read_decisions, state["sluice"].redis, limit)}

    @app.get("/v1/models", dependencies=[who])
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "sluice", "max_model_len": settings.max_model_len}]}

    async def handle(http_request: Request, model_cls, me: Caller):
        sluice = state["sluice"]
        body = await parse(http_request, model_cls)
        request = await sluice.prepare(body, http_request.headers.get(SLO_HEADER))
        await sluice.auth.admit(me, request)  # its tenant; 403 for a lane the key may not use; 429 over quota
        await sluice.submit(request)
        if "respond-async" in http_request.headers.get("prefer", "").lower():
            # RFC 7240: accepted now, answer fetched later (batch submitters; see sluice.sdk).
            location = f"/v1/sluice/requests/{request.request_id}"
            return JSONResponse({"id": request.request_id, "status": "queued", "slo": request.slo,
                                 "deadline": request.deadline, "location": location},
                                status_code=202, headers={"Location": location, "Preference-Applied": "respond-async"})
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(sluice, request, include_usage), media_type="text/event-stream",
                                     headers={"X-Sluice-Request-Id": request.request_id})
        return await collect_unless_disconnected(sluice, request, http_request)

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
    async def chat_completions(http_request: Request, me: Caller = who):
        return await handle(http_request, ChatCompletionRequest, me)

    @app.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(http_request: Request, me: Caller = who):
        return await handle(http_request, CompletionRequest, me)

    return app


async def collect(sluice: SluiceAPI, request: GenerationRequest) -> JSONResponse:
    parts: list[str] = []
    try:
        async for event in follow(sluice.events, request.request_id, timeout_s=sluice.settings.request_timeout_s):
            if event["type"] == "start":
                parts.clear()  # a redelivered request starts again from scratch
            elif event["type"] == "delta":
                parts.append(event["text"])
            elif event["type"] == "done":
                record = event
    except RequestFailed as exc:
        sluice.metrics.requests.labels(request.slo, "failed").inc()
        raise APIError(500, f"generation failed: {exc}", type="server_error") from None
    except RequestTimedOut as exc:
        sluice.metrics.requests.labels(request.slo, "timeout").inc()
        raise APIError(504, str(exc), type="timeout_error") from None
    except EventsUnavailable as exc:
        sluice.metrics.requests.labels(request.slo, "redis_unavailable").inc()
        raise redis_unavailable(sluice.settings.retry_after_s, str(exc)) from None
    sluice.on_done(request, record)
    return JSONResponse(completion_object(
        request_id=request.request_id, kind=request.kind, model=request.model, created=int(request.enqueued_at),
        text="".join(parts), record=record, sluice=_sluice_info(request, record)))


async def replay_events(sluice: SluiceAPI, request_id: str):
    try:
        async for event in follow(sluice.events, request_id, timeout_s=sluice.settings.request_timeout_s):
            yield _sse(event)
    except (RequestFailed, RequestTimedOut) as exc:
        code = "failed" if isinstance(exc, RequestFailed) else "timeout"
        yield _sse({"type": "error", "message": str(exc), "code": code})
    yield "data: [DONE]\n\n"
async def _until_disconnected(http_request: Request) -> None:
    """Returns when the client disconnects (its body was read already, so ``receive`` waits for that)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_disconnected(sluice: SluiceAPI, request: GenerationRequest, http_request: Request) -> Response:
    """``collect``, but a client that disconnects first abandons its request (nothing generated for nobody)."""
    collecting = asyncio.ensure_future(collect(sluice, request))
    watching = asyncio.ensure_future(_until_disconnected(http_request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()
            sluice.abandon(request)
    if collecting.cancelled():
        return Response(status_code=499)  # nginx's "client closed request": nobody receives it
    return collecting.result()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def stream_events(sluice: SluiceAPI, request: GenerationRequest, include_usage: bool):
    chat = request.kind == "chat"
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = int(request.enqueued_at)
    sent = {"tokens": 0}

    def chunk(delta_text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if delta_text is None else {"content": delta_text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        return {"id": request.request_id, "object": obj, "created": created, "model": request.model, "choices": [choice]}

    ended = False
    try:
        if chat:
            yield _sse(chunk(None, role=True))
        async for event in follow(sluice.events, request.request_id, timeout_s=sluice.settings.request_timeout_s,
                                  tokens_sent=lambda: sent["tokens"] > 0,
                                  worker_absent_grace_s=sluice.settings.heartbeat_ttl_s):
            if event["type"] == "delta":
                sent["tokens"] += event["tokens"]
                yield _sse(chunk(event["text"]))
            elif event["type"] == "done":
                sluice.on_done(request, event)
                yield _sse(chunk(None if chat else "", finish=finish_reason(event["finish_reason"])))
                if include_usage:
                    yield _sse({"id": request.request_id, "object": obj, "created": created, "model": request.model,
                                "choices": [], "usage": usage(event)})
                ended = True
                yield "data: [DONE]\n\n"
    except (WorkerLost, RequestFailed, RequestTimedOut, EventsUnavailable) as exc:
        ended = True
        outcome = {WorkerLost: "worker_lost", RequestFailed: "failed", RequestTimedOut: "timeout",
                   EventsUnavailable: "redis_unavailable"}[type(exc)]
        sluice.metrics.requests.labels(request.slo, outcome).inc()
        yield _sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": outcome}})
    finally:
        if not ended:  # the client disconnected (Starlette cancels the stream) before the answer ended
            sluice.abandon(request)
