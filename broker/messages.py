"""What travels through the lanes: one generation request, one Celery task."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SamplingOptions(BaseModel):
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False


class GenerationRequest(BaseModel):
    request_id: str
    model: str
    kind: Literal["chat", "completion"]
    prompt_token_ids: list[int]
    # Kept only for the predictor's traffic log, and only when configured.
    prompt_text: str | None = None
    sampling: SamplingOptions
    slo: Literal["interactive", "batch"] = "interactive"
    deadline: float | None = Field(None, description="Unix time by which a batch request must finish.")
    enqueued_at: float
    score: float
    predicted_output_tokens: float | None = None
    # The client reads tokens as they come; a stream cannot be rewound, so it is never preempted.
    stream: bool = False
    # Set for a request of a Batch API batch (request id "<batch_id>-<line>"): nobody follows its events,
    # its answer goes to the batch's output file, and the ledger counts it in the batch's counters.
    batch_id: str | None = None
    # Benchmarks only (sluice.bench_output_tokens): generate exactly this many tokens.  The queue policy
    # never reads it; it scores by the prediction capped at sampling.max_tokens, the client's cap.
    forced_output_tokens: int | None = None
    # Who submitted it: the tenant of the API key (None when authentication is off).  Owns the request,
    # its answer and its events; the lane's fair share is kept per tenant, weighted by the key's weight.
    tenant: str | None = None
    tenant_weight: float = Field(1.0, gt=0)

    @property
    def followed(self) -> bool:
        """Whether a client may be reading this request's token events (every request but a batch's)."""
        return self.batch_id is None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


class RequestTimings(BaseModel):
    """Per-request latency record; the worker writes it, the API and scaler read it."""

    queue_wait_s: float
    ttft_s: float | None
    itl_s: float | None = Field(None, description="Mean inter-token latency after the first token.")
    e2e_s: float = Field(description="Enqueue to last token.")
    prompt_tokens: int
    output_tokens: int
