"""Turn an OpenAI request into a queued GenerationRequest, or refuse it with a 4xx (pure: no I/O)."""

from __future__ import annotations

import time
import uuid

from pydantic import ValidationError

from api.errors import APIError, bad_request
from api.schemas import ChatCompletionRequest, CompletionRequest
from broker.messages import GenerationRequest, SamplingOptions
from core.names import SLO_CLASSES

SLO_HEADER = "x-sluice-slo"
# Deadlines below this are read as "seconds from now" rather than Unix time.
RELATIVE_DEADLINE_LIMIT = 1e9


def resolve_slo(body_slo: str | None, header_slo: str | None) -> str:
    slo = body_slo or header_slo or "interactive"
    slo = slo.strip().lower()
    if slo not in SLO_CLASSES:
        raise bad_request(f"unknown SLO class {slo!r}; use one of {list(SLO_CLASSES)}", param="sluice.slo",
                          code="unknown_slo")
    return slo


def resolve_deadline(deadline: float | None, now: float) -> float | None:
    if deadline is None:
        return None
    absolute = now + deadline if deadline < RELATIVE_DEADLINE_LIMIT else deadline
    if absolute <= now:
        raise bad_request("the deadline is in the past", param="sluice.deadline", code="deadline_passed")
    return absolute


def resolve_max_tokens(body, prompt_tokens: int, max_model_len: int, default_max_tokens: int) -> int:
    room = max_model_len - prompt_tokens
    if room < 1:
        raise bad_request(
            f"the prompt is {prompt_tokens} tokens; this model's context is {max_model_len} tokens",
            param="messages" if isinstance(body, ChatCompletionRequest) else "prompt", code="context_length_exceeded",
        )
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if requested is None:
        return min(default_max_tokens, room)
    if requested < 1 or requested > room:
        raise bad_request(
            f"max_tokens must be between 1 and {room} (context {max_model_len} minus {prompt_tokens} prompt tokens); "
            f"got {requested}", param="max_tokens", code="max_tokens_out_of_range",
        )
    return requested


def validate_body(model_cls, data: object):
    """A decoded JSON request body as ``model_cls``, or the 400 its endpoint answers (batch lines too)."""
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise bad_request(f"{param}: {first['msg']}", param=param, code="invalid_value") from None


def true_length(body, queue_policy) -> int | None:
    """The body's true output length (benchmarks only), or the 400 when the queue policy needs it and it is absent."""
    true_output_tokens = body.sluice.oracle_output_tokens if body.sluice else None
    if queue_policy.needs_true_length and true_output_tokens is None:
        raise bad_request(f"the {queue_policy.name} queue policy needs sluice.oracle_output_tokens", param="sluice")
    return true_output_tokens


def check_model(requested: str, served: str) -> None:
    if requested != served:
        raise APIError(404, f"the model {requested!r} does not exist; this server serves {served!r}",
                       param="model", code="model_not_found")


def build_request(body: ChatCompletionRequest | CompletionRequest, *, prompt_token_ids: list[int], prompt_text: str,
                  header_slo: str | None, served_model: str, max_model_len: int, default_max_tokens: int,
                  now: float | None = None, batch_default_deadline_s: float | None = None,
                  bench_fields: bool = False) -> GenerationRequest:
    now = time.time() if now is None else now
    check_model(body.model, served_model)
    options = body.sluice
    forced = options.bench_output_tokens if options else None
    if forced is not None and not bench_fields:
        raise bad_request("sluice.bench_output_tokens is for benchmarks: this API refuses it (SLUICE_BENCH_FIELDS "
                          "is off)", param="sluice.bench_output_tokens", code="invalid_value")
    slo = resolve_slo(options.slo if options else None, header_slo)
    deadline = resolve_deadline(options.deadline if options else None, now)
    if deadline is None and slo == "batch" and batch_default_deadline_s:
        deadline = now + batch_default_deadline_s
    max_tokens = resolve_max_tokens(body, len(prompt_token_ids), max_model_len, default_max_tokens)
    return GenerationRequest(
        request_id=("chatcmpl-" if isinstance(body, ChatCompletionRequest) else "cmpl-") + uuid.uuid4().hex,
        model=served_model,
        kind="chat" if isinstance(body, ChatCompletionRequest) else "completion",
        prompt_token_ids=prompt_token_ids,
        prompt_text=prompt_text,
        sampling=SamplingOptions(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=body.stop_list(), ignore_eos=body.ignore_eos,
        ),
        slo=slo,
        deadline=deadline,
        enqueued_at=now,
        score=now,
        stream=body.stream,
        forced_output_tokens=forced,
    )
