"""Run one request on the engine and stream its tokens to Redis as they come."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind

from broker.messages import GenerationRequest, RequestTimings
from broker.request_events import publish

# vLLM's priority scheduler serves lower values first.
VLLM_PRIORITY = {"interactive": 0, "batch": 1}


def sampling_params(request: GenerationRequest) -> SamplingParams:
    options = request.sampling
    forced = request.forced_output_tokens  # a benchmark's true length (the scorer never saw it)
    return SamplingParams(
        max_tokens=min(options.max_tokens, forced) if forced else options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        stop=options.stop or None,
        ignore_eos=options.ignore_eos or forced is not None,
        output_kind=RequestOutputKind.DELTA,
    )


class DeltaCoalescer:
    """Gathers a request's deltas into events at most every ``interval_s``: the first token goes out at once
    (the client's TTFT), later ones together. One Redis write per engine step and request cost the worker's
    process enough CPU, beside its engine, to starve its Celery loop on a small host (an interactive arrival
    was not read for seconds while a streamed request generated); at GPU step times an event still carries
    one or two tokens.

    Each event carries its ``offset``, the tokens the attempt published before it: a publish that Redis
    applied but whose reply was lost (a restart between the two) is retried by the client and lands twice,
    and the follower drops the second copy by its offset (api/events.py)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.parts: list[str] = []
        self.tokens = 0
        self.published_tokens = 0
        self.last_sent_at: float | None = None

    def add(self, text: str, tokens: int, now: float) -> dict | None:
        """Add a delta; returns the event to publish now, if one is due."""
        self.parts.append(text)
        self.tokens += tokens
        if self.last_sent_at is None or now - self.last_sent_at >= self.interval_s:
            return self.take(now)
        return None

    def take(self, now: float) -> dict | None:
        """What is gathered, as one event (None when nothing is)."""
        if not self.tokens:
            return None
        event = {"text": "".join(self.parts), "tokens": self.tokens, "offset": self.published_tokens}
        self.published_tokens += self.tokens
        self.parts, self.tokens, self.last_sent_at = [], 0, now
        return event


async def generate_and_stream(engine, client: aioredis.Redis, request: GenerationRequest, *, attempt: int,
                              worker_id: str, started_at: float, stream_interval_s: float = 0.0) -> dict:
    """Generate, publishing start and delta events (for a request someone follows: not a Batch API
    request's), deltas at most every ``stream_interval_s``; return the completion record (the caller
    publishes done)."""
    if request.followed:
        await publish(client, request.request_id, {
            "type": "start", "attempt": attempt, "worker": worker_id,
            "queue_wait_s": started_at - request.enqueued_at,
        })
    first_token_at = last_token_at = None
    text_parts: list[str] = []
    output_tokens = 0
    finish_reason = None
    engine_request_id = f"{request.request_id}-{attempt}"
    deltas = DeltaCoalescer(stream_interval_s)
    async for output in engine.generate(
        TokensPrompt(prompt_token_ids=request.prompt_token_ids),
        sampling_params(request),
        request_id=engine_request_id,
        priority=VLLM_PRIORITY[request.slo],
    ):
        completion = output.outputs[0]
        now = time.time()
        if completion.token_ids:
            if first_token_at is None:
                first_token_at = now
            last_token_at = now
            output_tokens += len(completion.token_ids)
            text_parts.append(completion.text)
            if request.followed and (delta := deltas.add(completion.text, len(completion.token_ids), now)):
                await publish(client, request.request_id, {"type": "delta", "attempt": attempt, **delta})
        if output.finished:
            finish_reason = completion.finish_reason
    if request.followed and (delta := deltas.take(time.time())):
        await publish(client, request.request_id, {"type": "delta", "attempt": attempt, **delta})
    finished_at = time.time()
    timings = RequestTimings(
        queue_wait_s=started_at - request.enqueued_at,
        ttft_s=(first_token_at - request.enqueued_at) if first_token_at else None,
        itl_s=((last_token_at - first_token_at) / (output_tokens - 1)) if output_tokens > 1 else None,
        e2e_s=finished_at - request.enqueued_at,
        prompt_tokens=request.prompt_tokens,
        output_tokens=output_tokens,
    )
    record = {
        "text": "".join(text_parts),
        "request_id": request.request_id, "slo": request.slo, "worker": worker_id, "attempt": attempt,
        "finish_reason": finish_reason or "length", "finished_at": finished_at,
        "deadline": request.deadline, "predicted_output_tokens": request.predicted_output_tokens,
        **timings.model_dump(),
    }
    return record
