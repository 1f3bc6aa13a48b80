"""OpenAI request bodies, plus Sluice's `sluice` extension field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SluiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slo: str | None = Field(None, description="interactive or batch")
    deadline: float | None = Field(None, description="Unix time, or seconds from now if below 1e9.")
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
    seed: int | None = None
    stop: str | list[str] | None = None
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
