"""OpenAI request bodies, plus Sluice's `sluice` extension field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


MAX_STOP_STRINGS = 16
StopString = Annotated[str, Field(min_length=1, max_length=1024)]


class SluiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slo: str | None = Field(None, description="interactive or batch")
    deadline: float | None = Field(None, allow_inf_nan=False, description="Unix time, or seconds from now if below 1e9.")
    # Benchmarks only: the true output length, for the oracle policy.
    oracle_output_tokens: int | None = None
    # Benchmarks only, refused unless the API runs with SLUICE_BENCH_FIELDS: the worker generates exactly
    # this many tokens (ignoring EOS) while the queue policy sees only max_tokens, as for a real client.
    bench_output_tokens: int | None = Field(None, ge=1)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # The engine's seed is a 64-bit integer (vLLM fails a larger one on the worker, after it was queued).
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    # vLLM refuses an empty stop string; more than a few stop strings is not a real request.
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False
    sluice: SluiceOptions | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str | list[int]


def _inline(node, defs: dict):
    if isinstance(node, dict):
        if "$ref" in node and node["$ref"].startswith("#/$defs/"):
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def openapi_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` declaring ``model`` as a route's JSON request body.

    The completion routes read their bodies themselves (api/limits.py, then ``validate_body``: OpenAI's
    400s, not FastAPI's 422s), so FastAPI cannot see their schema; this puts it in ``/openapi.json`` for
    clients and for the schema fuzz (``sluice bench fuzz``, docs/security.md).  Self-contained: the model's
    ``$defs`` are inlined."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}}}
