"""OpenAI completion objects built from a finished request's record (pure).

The one encoder of a ``chat.completion`` / ``text_completion`` object: the API's non-streamed answer
(api/app.py) and a batch's output lines (api/batch_input.py) both use it.  ``record`` is what the worker
records when a request finishes (workers/generation.py; the ``done`` event, and the request ledger's
``result``): it carries ``finish_reason``, ``prompt_tokens`` and ``output_tokens``.
"""

from __future__ import annotations

from typing import Literal

OBJECT_TYPES = {"chat": "chat.completion", "completion": "text_completion"}


def finish_reason(reason: str | None) -> str:
    """vLLM's finish reason as OpenAI's (vLLM's ``abort`` and others read as ``stop``)."""
    return reason if reason in ("stop", "length") else "stop"


def usage(record: dict) -> dict:
    return {"prompt_tokens": record["prompt_tokens"], "completion_tokens": record["output_tokens"],
            "total_tokens": record["prompt_tokens"] + record["output_tokens"]}


def completion_object(*, request_id: str, kind: Literal["chat", "completion"], model: str, created: int,
                      text: str, record: dict, sluice: dict | None = None) -> dict:
    """The OpenAI object answering a request; ``sluice`` (Sluice's extension block) is left out when None."""
    reason = finish_reason(record["finish_reason"])
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
    body = {"id": request_id, "object": OBJECT_TYPES[kind], "created": created, "model": model,
            "choices": [choice], "usage": usage(record)}
    if sluice is not None:
        body["sluice"] = sluice
    return body
