"""Limits on what a client may send: body size, body read time, JSON nesting, message count.

The checks are pure (``json_depth``, ``decode_json``, ``check_messages``); ``read_body`` is the one read of
a JSON request body (the completion endpoints and ``POST /v1/batches``): it refuses a declared or actual size
over ``max_body_bytes`` with 413 and a body that takes longer than ``body_read_timeout_s`` to arrive with 408
(a slow client trickling its body), before anything is parsed or enqueued.  Header size and header read time
are bounded below the application, in the HTTP protocol (``api/server.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from starlette.requests import ClientDisconnect

from api.errors import APIError, bad_request

# A JSON string literal (escapes included): its brackets are text, not nesting.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    max_json_depth: int
    max_messages: int
    body_read_timeout_s: float

    @classmethod
    def from_settings(cls, settings) -> "BodyLimits":
        return cls(max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth,
                   max_messages=settings.max_messages, body_read_timeout_s=settings.body_read_timeout_s)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar), without decoding it.

    Python's decoder recurses once per level and raises RecursionError (a 500) near 1,000 levels, so the
    depth is measured first: string literals are dropped, then the brackets left are counted."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode_json(raw: bytes, max_depth: int) -> object:
    """The decoded body, or the 400 for a body that is not JSON or nests deeper than ``max_depth``."""
    depth = json_depth(raw)
    if depth > max_depth:
        raise bad_request(f"the request body nests {depth} levels deep; at most {max_depth}", code="invalid_json")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError as exc:  # NaN, Infinity: Python's extension, not JSON (and not a number anything can use)
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # a nesting the bracket count missed (it cannot, but never a 500)
        raise bad_request("the request body nests too deep", code="invalid_json") from None
    if b"\\u" in raw and not _encodable(data):
        # A lone surrogate escape (\ud800 without its pair) decodes to a str no tokenizer or encoder takes.
        raise bad_request("the request body has a lone UTF-16 surrogate escape: not a Unicode character",
                          code="invalid_json")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _encodable(data: object) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_messages(data: object, max_messages: int) -> None:
    """400 for a chat body with more than ``max_messages`` messages (before validating each one)."""
    if isinstance(data, dict) and isinstance(data.get("messages"), list) and len(data["messages"]) > max_messages:
        raise bad_request(f"the request has {len(data['messages'])} messages; at most {max_messages}",
                          param="messages", code="too_many_messages")


def too_large(size: int | None, limit: int) -> APIError:
    said = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return APIError(413, f"the request body is {said}; at most {limit} bytes are accepted",
                    code="request_too_large")


def declared_length(headers) -> int | None:
    """Content-Length as an int; None when absent; 400 when it is not a non-negative integer."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise bad_request("the Content-Length header is not a non-negative integer", code="invalid_header")
    return int(value)


async def read_body(request, limits: BodyLimits) -> bytes:
    """The request body, at most ``limits.max_body_bytes`` (413) and read within ``body_read_timeout_s`` (408)."""
    declared = declared_length(request.headers)
    if declared is not None and declared > limits.max_body_bytes:
        raise too_large(declared, limits.max_body_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise too_large(None, limits.max_body_bytes)
                chunks.append(chunk)
    except ClientDisconnect:
        # Nobody reads the answer; a 4xx (not a 500 traceback) and nothing enqueued.
        raise APIError(400, "the client disconnected while sending the body", code="client_disconnected") from None
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {limits.body_read_timeout_s:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    return b"".join(chunks)
