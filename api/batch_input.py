"""OpenAI Batch files, pure: validate an input file before anything runs, and encode output lines.

Input: one JSON object a line, ``{"custom_id", "method": "POST", "url", "body"}``.  Every line is checked
before anything is enqueued, and a line is refused exactly when its body, sent to the batch's endpoint,
would be: the same body model (api/schemas.py), the same checks (api/admission.py) and the API's own
tokenizer, passed in as ``tokenize`` (``SluiceAPI.tokenize``).  A batch line also may not stream, and its
lane and deadline are the batch's (``sluice.slo`` may only say ``batch``; ``sluice.deadline`` is refused).
Errors follow the batch object's ``errors.data`` entries: ``{"code", "message", "param", "line"}``, line
numbers 1-based and counting blank lines (which are skipped).  Only the first ``max_reported_errors`` are
kept, plus one entry saying how many more there were, so a bad 50,000-line file gives a small object.

Output: the lines of a batch's output and error files, as OpenAI writes them: ``{"id": "batch_req_…",
"custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}``.
A request the API would have refused with an HTTP error has that status and error body in ``response``;
``error`` is for failures that are not HTTP answers (``batch_expired``, ``batch_cancelled``).
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

from api.admission import build_request, check_model, resolve_max_tokens, resolve_slo, true_length, validate_body
from api.errors import APIError, bad_request
from api.responses import completion_object
from api.schemas import ChatCompletionRequest, CompletionRequest
from broker.messages import GenerationRequest

ENDPOINT_BODIES: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
ENDPOINT_KINDS: dict[str, Literal["chat", "completion"]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
}
MAX_REPORTED_ERRORS = 100
MAX_COMPLETION_WINDOW_S = 24 * 3600  # OpenAI's only window, and the longest Sluice accepts

Body = ChatCompletionRequest | CompletionRequest
# The API's tokenizer: (prompt token ids, prompt text), or an APIError for a prompt it refuses.
Tokenize = Callable[[Body], tuple[list[int], str]]


@dataclass(frozen=True)
class ServedModel:
    """What the API serves: the limits a batch line is checked against (Settings: model_name, max_model_len,
    default_max_tokens)."""

    name: str
    max_model_len: int
    default_max_tokens: int


@dataclass(frozen=True)
class BatchError:
    """One entry of the batch object's ``errors.data``."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def to_openai(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A validated request of a batch: what the enqueue turns into a GenerationRequest (:meth:`to_request`)."""

    line: int
    custom_id: str
    body: Body
    # Kept compact (4 bytes a token, not a Python int each): a 100 MB file is tens of millions of tokens.
    prompt_token_ids: array
    prompt_text: str

    def to_request(self, served: ServedModel, *, deadline: float, now: float,
                   request_id: str | None = None) -> GenerationRequest:
        """The queued request: the batch lane, the batch's deadline; scored by the caller's queue policy."""
        request = build_request(self.body, prompt_token_ids=self.prompt_token_ids.tolist(),
                                prompt_text=self.prompt_text, header_slo="batch", served_model=served.name,
                                max_model_len=served.max_model_len, default_max_tokens=served.default_max_tokens,
                                now=now)
        request.deadline = deadline
        if request_id is not None:
            request.request_id = request_id
        return request


@dataclass
class ParsedBatch:
    """A parsed input file: its requests when every line is valid, else no requests and the errors."""

    lines: list[BatchLine] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)  # the first max_reported_errors of them
    error_count: int = 0  # all of them

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def errors_object(self) -> dict | None:
        """The batch object's ``errors`` field: None when the file is valid."""
        if self.ok:
            return None
        data = [error.to_openai() for error in self.errors]
        unlisted = self.error_count - len(self.errors)
        if unlisted:
            data.append(BatchError("too_many_errors", f"{unlisted} more errors not listed "
                                   f"({self.error_count} in all; the first {len(self.errors)} are)").to_openai())
        return {"object": "list", "data": data}


class _LineRefused(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = (code, message, param)


def _body_error(exc: APIError) -> _LineRefused:
    """An endpoint's refusal of a body, as a line's error (its param inside the line's ``body``)."""
    return _LineRefused(exc.code or "invalid_request", exc.message, f"body.{exc.param}" if exc.param else "body")


def parse_batch_input(lines: Iterable[bytes], *, endpoint: str, tokenize: Tokenize, served: ServedModel,
                      queue_policy=None, max_reported_errors: int = MAX_REPORTED_ERRORS) -> ParsedBatch:
    """Validate a batch input file (its lines as bytes) for ``endpoint``.

    ``queue_policy``: the API's (broker.queue_policies); the oracle policy refuses bodies without
    ``sluice.oracle_output_tokens``, as the endpoint does.  Raises an APIError for an unknown endpoint."""
    body_cls = ENDPOINT_BODIES.get(endpoint)
    if body_cls is None:
        raise bad_request(f"unknown endpoint {endpoint!r}; use one of {list(ENDPOINT_BODIES)}", param="endpoint",
                          code="invalid_value")
    parsed = ParsedBatch()
    first_line_of: dict[str, int] = {}
    requests = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        requests += 1
        try:
            parsed.lines.append(_parse_line(raw, number, endpoint, body_cls, tokenize, served, queue_policy,
                                            first_line_of))
        except _LineRefused as refused:
            parsed.error_count += 1
            if len(parsed.errors) < max_reported_errors:
                code, message, param = refused.error
                parsed.errors.append(BatchError(code, message, param, number))
    if requests == 0:
        parsed.error_count += 1
        parsed.errors.append(BatchError("empty_file", "the input file has no requests"))
    if not parsed.ok:
        parsed.lines = []  # a batch with a bad line runs nothing
    return parsed


def _parse_line(raw: bytes, number: int, endpoint: str, body_cls, tokenize: Tokenize, served: ServedModel,
                queue_policy, first_line_of: dict[str, int]) -> BatchLine:
    try:
        item = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _LineRefused("invalid_json_line", f"this line is not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise _LineRefused("invalid_json_line", "this line is not a JSON object")

    if "custom_id" not in item:
        raise _LineRefused("missing_required_parameter", "custom_id is missing", "custom_id")
    custom_id = item["custom_id"]
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise _LineRefused("invalid_value", "custom_id must be a non-empty string", "custom_id")
    first = first_line_of.setdefault(custom_id, number)
    if first != number:
        raise _LineRefused("duplicate_custom_id",
                           f"custom_id {custom_id!r} is on line {first} and on line {number}; each must be unique",
                           "custom_id")

    for name in ("method", "url", "body"):
        if name not in item:
            raise _LineRefused("missing_required_parameter", f"{name} is missing", name)
    if item["method"] != "POST":
        raise _LineRefused("invalid_value", f"method must be POST; got {item['method']!r}", "method")
    if item["url"] != endpoint:
        raise _LineRefused("url_mismatch", f"url is {item['url']!r}; this batch's endpoint is {endpoint!r}", "url")
    if not isinstance(item["body"], dict):
        raise _LineRefused("invalid_value", "body must be a JSON object", "body")

    try:
        body = validate_body(body_cls, item["body"])
        if body.stream:
            raise bad_request("a batch request cannot stream; remove stream or set it to false", param="stream",
                              code="invalid_value")
        check_model(body.model, served.name)
        options = body.sluice
        if options is not None:
            if resolve_slo(options.slo, "batch") != "batch":
                raise bad_request("every request of a batch runs in the batch lane; remove sluice.slo or set it "
                                  "to batch", param="sluice.slo", code="invalid_value")
            if options.deadline is not None:
                raise bad_request("a batch request's deadline is the batch's completion_window; remove "
                                  "sluice.deadline", param="sluice.deadline", code="invalid_value")
        if queue_policy is not None:
            true_length(body, queue_policy)
        prompt_token_ids, prompt_text = tokenize(body)
        resolve_max_tokens(body, len(prompt_token_ids), served.max_model_len, served.default_max_tokens)
    except APIError as exc:
        raise _body_error(exc) from None
    return BatchLine(line=number, custom_id=custom_id, body=body, prompt_token_ids=array("I", prompt_token_ids),
                     prompt_text=prompt_text)


# --- completion_window ---------------------------------------------------------------------------
_WINDOW = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_completion_window(text: object) -> int:
    """A batch's completion_window in seconds: ``24h`` (OpenAI's only value) or any shorter duration written
    in hours, minutes and seconds, in that order (``30m``, ``2h``, ``90s``, ``1h30m``)."""
    match = _WINDOW.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise bad_request(f"completion_window {text!r} is not a duration; write hours, minutes and seconds "
                          "such as 24h, 2h, 30m, 90s or 1h30m", param="completion_window", code="invalid_value")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    window_s = hours * 3600 + minutes * 60 + seconds
    if not 0 < window_s <= MAX_COMPLETION_WINDOW_S:
        raise bad_request(f"completion_window {text!r} must be longer than 0 and at most 24h",
                          param="completion_window", code="invalid_value")
    return window_s


# --- output and error files ----------------------------------------------------------------------
BATCH_EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")
BATCH_CANCELLED = ("batch_cancelled", "This request was not executed because the batch was cancelled.")


def line_id(request_id: str) -> str:
    """The output line's ``id``: derived from the request id, so writing a line again gives the same id."""
    return "batch_req_" + hashlib.blake2b(request_id.encode(), digest_size=12).hexdigest()


def output_line(*, custom_id: str, request_id: str, kind: Literal["chat", "completion"], model: str,
                created: int, result: dict) -> dict:
    """A finished request's line. ``result``: the worker's completion record with its ``text`` (the request
    ledger's ``result``); ``created``: when the request was enqueued (Unix seconds)."""
    sluice = {name: result.get(name) for name in ("slo", "worker", "attempt", "predicted_output_tokens",
                                                  "queue_wait_s", "ttft_s", "itl_s", "e2e_s")}
    body = completion_object(request_id=request_id, kind=kind, model=model, created=created,
                             text=result["text"], record=result, sluice=sluice)
    return {"id": line_id(request_id), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def http_error_line(*, custom_id: str, request_id: str, error: APIError) -> dict:
    """A request answered with an HTTP error (e.g. generation failed: 500): OpenAI puts it in ``response``."""
    return {"id": line_id(request_id), "custom_id": custom_id,
            "response": {"status_code": error.status, "request_id": request_id, "body": error.body()},
            "error": None}


def error_line(*, custom_id: str, request_id: str, code: str, message: str) -> dict:
    """A request that got no HTTP answer: ``code`` such as ``batch_expired`` or ``batch_cancelled``."""
    return {"id": line_id(request_id), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def encode_line(line: dict) -> bytes:
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"
