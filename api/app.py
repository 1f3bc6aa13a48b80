"""FastAPI application: OpenAI-compatible endpoints in front of the Sluice lanes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time

import anyio
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from api.admission import SLO_HEADER, build_request
from api.enqueue import Enqueuer
from api.errors import APIError, bad_request
from api.events import EventHub, RequestFailed, RequestTimedOut, WorkerLost, follow
from api.metrics import Metrics
from api.prediction import attach_predictor, record_feedback
from api.schemas import ChatCompletionRequest, CompletionRequest
from broker import keys
from broker.messages import GenerationRequest
from broker.redelivery import redeliver_from_dead_workers
from broker.scoring import ScoringPolicy
from sluice.config import Settings
from sluice.redis_clients import async_client, sync_client
from workers.celery_app import create_app

log = logging.getLogger(__name__)


class SluiceAPI:
    """The state behind the routes: tokenizer, queue, Redis, metrics, predictor."""

    def __init__(self, settings: Settings):
        from transformers import AutoTokenizer

        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        self.redis = sync_client(settings.require_redis_url())
        self.aioredis = async_client(settings.redis_url)
        self.events = EventHub(self.aioredis)
        self.celery = create_app(settings)
        self.enqueuer = Enqueuer(self.celery, self.redis, settings.lane_admission_limits, settings.retry_after_s,
                                 keep_prompt_text=settings.keep_prompt_text)
        self.metrics = Metrics(self.redis, settings.lanes)
        self.scoring = ScoringPolicy(settings.queue_policy, settings.ssjf_aging_tokens_per_s,
                                     settings.ssjf_max_predicted_tokens)
        self.predictor = None  # set by attach_predictor when lengths are predicted (settings.predicts_lengths)
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
        )
        oracle = body.sluice.oracle_output_tokens if body.sluice else None
        if self.scoring.name == "ssjf":
            started = time.perf_counter()
            request.predicted_output_tokens = await self.predictor.predict(prompt_text, self.settings.model_name)
            self.metrics.predict_seconds.observe(time.perf_counter() - started)
        elif self.scoring.name == "oracle":
            if oracle is None:
                raise bad_request("the oracle policy needs sluice.oracle_output_tokens", param="sluice")
            request.predicted_output_tokens = float(oracle)
        request.score = self.scoring.score(request.enqueued_at, request.predicted_output_tokens,
                                           true_output_tokens=oracle)
        return request

    def on_done(self, request: GenerationRequest, record: dict) -> None:
        self.metrics.observe_done(request.slo, record)
        task = asyncio.get_running_loop().create_task(record_feedback(self, request, record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def submit(self, request: GenerationRequest) -> None:
        await anyio.to_thread.run_sync(self.enqueuer.enqueue, request)

    async def sweep_dead_workers(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(redeliver_from_dead_workers, self.redis)
            except redis.RedisError:
                log.exception("redelivery sweep failed")
            await asyncio.sleep(self.settings.heartbeat_interval_s)


def _openai_finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _usage(record: dict) -> dict:
    return {"prompt_tokens": record["prompt_tokens"], "completion_tokens": record["output_tokens"],
            "total_tokens": record["prompt_tokens"] + record["output_tokens"]}


def _sluice_info(request: GenerationRequest, record: dict) -> dict:
    return {"slo": request.slo, "score": request.score, "predicted_output_tokens": request.predicted_output_tokens,
            "worker": record.get("worker"), "attempt": record.get("attempt"),
            **{k: record.get(k) for k in ("queue_wait_s", "ttft_s", "itl_s", "e2e_s")}}


def create_api(settings: Settings) -> FastAPI:
    state: dict[str, SluiceAPI] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sluice = SluiceAPI(settings)
        if settings.predicts_lengths:
            await attach_predictor(sluice)
        state["sluice"] = sluice
        gc.freeze()  # start-up objects (the predictor's model among them) out of full collections' reach
        background = [asyncio.create_task(sluice.sweep_dead_workers()), asyncio.create_task(sluice.events.run())]
        yield
        for task in background:
            task.cancel()
        if sluice.predictor is not None:
            await sluice.predictor.close()
        await sluice.events.close()
        await sluice.aioredis.aclose()

    app = FastAPI(title="Sluice", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def on_api_error(_request: Request, exc: APIError):
        if exc.status < 500 and "sluice" in state:
            state["sluice"].metrics.rejected.labels(str(exc.status)).inc()
        return exc.response()

    async def parse(request: Request, model_cls):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"])
            raise bad_request(f"{param}: {first['msg']}", param=param, code="invalid_value") from None

    @app.get("/healthz")
    async def healthz():
        sluice = state["sluice"]
        try:
            await sluice.aioredis.ping()
        except redis.RedisError as exc:
            return JSONResponse({"status": "unhealthy", "redis": str(exc)}, status_code=503)
        workers = await sluice.aioredis.zcard("sluice:workers")
        return {"status": "ok", "model": settings.model_name, "queue_policy": settings.queue_policy,
                "predictor_version": sluice.predictor.version if sluice.predictor else None,
                "registered_workers": workers}

    @app.get("/metrics")
    async def metrics():
        payload = await anyio.to_thread.run_sync(generate_latest, state["sluice"].metrics.registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/sluice/requests/{request_id}")
    async def request_status(request_id: str):
        fields = await state["sluice"].aioredis.hgetall(keys.request_key(request_id))
        if not fields:
            raise APIError(404, f"no request {request_id!r} (unknown, or finished more than a day ago)",
                           code="request_not_found")
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        reply = {"id": request_id, "status": fields.get("status"), "slo": fields.get("lane"),
                 "attempt": int(fields.get("attempt", 0))}
        if fields.get("result"):
            reply["result"] = json.loads(fields["result"])
        if fields.get("error"):
            reply["error"] = fields["error"]
        return reply

    @app.get("/v1/scaler/decisions")
    async def scaler_decisions(limit: int = 50):
        from scaler.service import read_decisions

        if not 1 <= limit <= 1000:
            raise bad_request("limit must be between 1 and 1000", param="limit")
        return {"object": "list", "data": await anyio.to_thread.run_sync(read_decisions, state["sluice"].redis, limit)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "sluice", "max_model_len": settings.max_model_len}]}

    async def handle(http_request: Request, model_cls):
        sluice = state["sluice"]
        body = await parse(http_request, model_cls)
        request = await sluice.prepare(body, http_request.headers.get(SLO_HEADER))
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
        return await collect(sluice, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request):
        return await handle(http_request, ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(http_request: Request):
        return await handle(http_request, CompletionRequest)

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
    sluice.on_done(request, record)
    text = "".join(parts)
    created = int(request.enqueued_at)
    finish = _openai_finish_reason(record["finish_reason"])
    if request.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                  "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return JSONResponse({"id": request.request_id, "object": obj, "created": created, "model": request.model,
                         "choices": [choice], "usage": _usage(record), "sluice": _sluice_info(request, record)})


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

    if chat:
        yield _sse(chunk(None, role=True))
    try:
        async for event in follow(sluice.events, request.request_id, timeout_s=sluice.settings.request_timeout_s,
                                  tokens_sent=lambda: sent["tokens"] > 0,
                                  worker_absent_grace_s=sluice.settings.heartbeat_ttl_s):
            if event["type"] == "delta":
                sent["tokens"] += event["tokens"]
                yield _sse(chunk(event["text"]))
            elif event["type"] == "done":
                sluice.on_done(request, event)
                yield _sse(chunk(None if chat else "", finish=_openai_finish_reason(event["finish_reason"])))
                if include_usage:
                    yield _sse({"id": request.request_id, "object": obj, "created": created, "model": request.model,
                                "choices": [], "usage": _usage(event)})
                yield "data: [DONE]\n\n"
    except (WorkerLost, RequestFailed, RequestTimedOut) as exc:
        outcome = {WorkerLost: "worker_lost", RequestFailed: "failed", RequestTimedOut: "timeout"}[type(exc)]
        sluice.metrics.requests.labels(request.slo, outcome).inc()
        yield _sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": outcome}})
