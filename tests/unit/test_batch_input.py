"""Batch input files (pure): every bad line is named before anything runs; output lines are OpenAI's."""

from __future__ import annotations

import json
import time

import pytest

from api.admission import build_request, validate_body
from api.batch_input import (
    BATCH_CANCELLED, BATCH_EXPIRED, MAX_COMPLETION_WINDOW_S, BatchError, ServedModel, encode_line, error_line,
    http_error_line, line_id, output_line, parse_batch_input, parse_completion_window,
)
from api.errors import APIError, bad_request
from api.schemas import ChatCompletionRequest, CompletionRequest
from broker.queue_policies import make_queue_policy

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SERVED = ServedModel(name="m", max_model_len=100, default_max_tokens=30)
TEMPLATE_TOKENS = 3  # what the fake chat template adds around the messages


def tokenize(body) -> tuple[list[int], str]:
    """A stand-in for SluiceAPI.tokenize: one token a word, and the same refusals of a prompt."""
    if isinstance(body, ChatCompletionRequest):
        words = " ".join(message.text() for message in body.messages).split()
        return list(range(TEMPLATE_TOKENS + len(words))), body.messages[-1].text()
    if isinstance(body.prompt, list):
        if not body.prompt:
            raise bad_request("prompt token ids must be a non-empty list of ids below 1000", param="prompt")
        return list(body.prompt), "decoded"
    if not body.prompt:
        raise bad_request("the prompt is empty", param="prompt")
    return list(range(len(body.prompt.split()))), body.prompt


def chat_line(custom_id="r1", content="hello there", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": content}], **body}}


def jsonl(*items) -> list[bytes]:
    """File lines as a binary file iterates them; a str item is written as it is (a raw or blank line)."""
    return [(item if isinstance(item, str) else json.dumps(item)).encode() + b"\n" for item in items]


def parse(lines, endpoint=CHAT, **kwargs):
    return parse_batch_input(lines, endpoint=endpoint, tokenize=tokenize, served=SERVED, **kwargs)


# --- valid files ---------------------------------------------------------------------------------
def test_a_valid_chat_file_parses_with_line_numbers_counting_blank_lines():
    parsed = parse(jsonl(chat_line("a"), "", "   ", chat_line("b", "one two three four", max_tokens=5)))
    assert parsed.ok and parsed.errors == [] and parsed.errors_object() is None
    assert [(line.line, line.custom_id) for line in parsed.lines] == [(1, "a"), (4, "b")]
    second = parsed.lines[1]
    assert isinstance(second.body, ChatCompletionRequest) and second.body.max_tokens == 5
    assert second.prompt_token_ids.tolist() == list(range(TEMPLATE_TOKENS + 4))
    assert second.prompt_text == "one two three four"


def test_a_valid_completions_file_parses():
    line = {"custom_id": "c", "method": "POST", "url": COMPLETIONS, "body": {"model": "m", "prompt": [5, 6, 7]}}
    parsed = parse(jsonl(line), endpoint=COMPLETIONS)
    assert parsed.ok
    assert isinstance(parsed.lines[0].body, CompletionRequest)
    assert parsed.lines[0].prompt_token_ids.tolist() == [5, 6, 7]


def test_lines_without_a_final_newline_and_with_crlf_parse():
    raw = (json.dumps(chat_line("a")) + "\r\n" + json.dumps(chat_line("b"))).encode()
    assert [line.custom_id for line in parse(raw.splitlines(keepends=True)).lines] == ["a", "b"]


def test_a_validated_line_becomes_a_batch_lane_request_with_the_batch_deadline():
    line = parse(jsonl(chat_line("a", "one two", sluice={"slo": "batch", "oracle_output_tokens": 7}))).lines[0]
    request = line.to_request(SERVED, deadline=1_800_003_600.0, now=1_800_000_000.0, request_id="batch_x-1")
    assert (request.request_id, request.slo, request.deadline) == ("batch_x-1", "batch", 1_800_003_600.0)
    assert request.kind == "chat" and request.model == "m" and request.enqueued_at == 1_800_000_000.0
    assert request.prompt_token_ids == list(range(TEMPLATE_TOKENS + 2)) and request.prompt_text == "one two"
    assert request.sampling.max_tokens == SERVED.default_max_tokens and not request.stream


# --- every kind of bad line names its line --------------------------------------------------------
def chat(custom_id="bad", **body):
    return chat_line(custom_id, **body)


BAD_LINES = [
    pytest.param('{"custom_id": "bad", "method": ', "invalid_json_line", None, id="bad-json"),
    pytest.param(b'{"custom_id": "\xff"}', "invalid_json_line", None, id="not-utf8"),
    pytest.param([chat()], "invalid_json_line", None, id="not-an-object"),
    pytest.param({k: v for k, v in chat().items() if k != "custom_id"}, "missing_required_parameter", "custom_id",
                 id="no-custom-id"),
    pytest.param({**chat(), "custom_id": ""}, "invalid_value", "custom_id", id="empty-custom-id"),
    pytest.param({**chat(), "custom_id": 7}, "invalid_value", "custom_id", id="number-custom-id"),
    pytest.param({k: v for k, v in chat().items() if k != "method"}, "missing_required_parameter", "method",
                 id="no-method"),
    pytest.param({**chat(), "method": "GET"}, "invalid_value", "method", id="wrong-method"),
    pytest.param({k: v for k, v in chat().items() if k != "url"}, "missing_required_parameter", "url", id="no-url"),
    pytest.param({**chat(), "url": COMPLETIONS}, "url_mismatch", "url", id="other-endpoint"),
    pytest.param({k: v for k, v in chat().items() if k != "body"}, "missing_required_parameter", "body",
                 id="no-body"),
    pytest.param({**chat(), "body": "hi"}, "invalid_value", "body", id="body-not-object"),
    pytest.param(chat(model="other"), "model_not_found", "body.model", id="unknown-model"),
    pytest.param({**chat(), "body": {"model": "m"}}, "invalid_value", "body.messages", id="no-messages"),
    pytest.param(chat(temperature=3), "invalid_value", "body.temperature", id="temperature-out-of-range"),
    pytest.param(chat(stream=True), "invalid_value", "body.stream", id="stream"),
    pytest.param(chat(sluice={"slo": "interactive"}), "invalid_value", "body.sluice.slo", id="interactive-lane"),
    pytest.param(chat(sluice={"slo": "gold"}), "unknown_slo", "body.sluice.slo", id="unknown-slo"),
    pytest.param(chat(sluice={"deadline": 60}), "invalid_value", "body.sluice.deadline", id="own-deadline"),
    pytest.param(chat(content="word " * 97), "context_length_exceeded", "body.messages", id="prompt-over-context"),
    pytest.param(chat(max_tokens=0), "max_tokens_out_of_range", "body.max_tokens", id="max-tokens-zero"),
    pytest.param(chat(content="a b", max_tokens=96), "max_tokens_out_of_range", "body.max_tokens",
                 id="max-tokens-over-room"),
    pytest.param(chat(max_completion_tokens=1000), "max_tokens_out_of_range", "body.max_tokens",
                 id="max-completion-tokens-over-room"),
    pytest.param(chat(content=""), None, None, id="empty-chat-content-is-fine"),
]


@pytest.mark.parametrize("bad,code,param", BAD_LINES)
def test_each_bad_line_is_named_and_nothing_runs(bad, code, param):
    raw = bad if isinstance(bad, bytes) else (bad if isinstance(bad, str) else json.dumps(bad)).encode()
    parsed = parse([json.dumps(chat_line("good")).encode(), b"\n", raw, json.dumps(chat_line("after")).encode()])
    if code is None:
        assert parsed.ok and len(parsed.lines) == 3
        return
    assert not parsed.ok and parsed.lines == []  # a batch with a bad line enqueues nothing
    assert parsed.error_count == 1
    [error] = parsed.errors
    assert (error.code, error.param, error.line) == (code, param, 3)
    assert error.message
    assert parsed.errors_object() == {"object": "list", "data": [
        {"code": code, "message": error.message, "param": param, "line": 3}]}


def test_a_completions_body_gets_the_completions_refusals():
    base = {"custom_id": "c", "method": "POST", "url": COMPLETIONS}
    parsed = parse(jsonl({**base, "body": {"model": "m", "prompt": ""}},
                         {**base, "custom_id": "d", "body": {"model": "m", "prompt": []}},
                         {**base, "custom_id": "e", "body": {"model": "m", "messages": [{"role": "user"}]}},
                         {**base, "custom_id": "f", "url": CHAT, "body": {"model": "m", "prompt": "x"}}),
                   endpoint=COMPLETIONS)
    assert [(e.line, e.code, e.param) for e in parsed.errors] == [
        (1, "invalid_request", "body.prompt"), (2, "invalid_request", "body.prompt"),
        (3, "invalid_value", "body.prompt"), (4, "url_mismatch", "url")]


def endpoint_refusal(body: dict, body_cls) -> str | None:
    """What the endpoint answers a body with (api/app.py's parse, then prepare): the error code, or None."""
    try:
        request_body = validate_body(body_cls, body)
        token_ids, text = tokenize(request_body)
        build_request(request_body, prompt_token_ids=token_ids, prompt_text=text, header_slo=None,
                      served_model=SERVED.name, max_model_len=SERVED.max_model_len,
                      default_max_tokens=SERVED.default_max_tokens)
    except APIError as exc:
        return exc.code or "invalid_request"
    return None


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 97},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 96},
    {"model": "m", "messages": [{"role": "user", "content": "w " * 96}]},
    {"model": "m", "messages": [{"role": "user", "content": "w " * 97}]},
    {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "unknown_field": 1},
    {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}]},
])
def test_a_line_is_refused_exactly_when_the_endpoint_refuses_its_body(body):
    parsed = parse(jsonl({"custom_id": "a", "method": "POST", "url": CHAT, "body": body}))
    expected = endpoint_refusal(body, ChatCompletionRequest)
    assert (parsed.errors[0].code if parsed.errors else None) == expected


def test_the_oracle_policy_refuses_lines_without_the_true_length_as_its_endpoint_does():
    lines = jsonl(chat_line("a", sluice={"oracle_output_tokens": 5}), chat_line("b"))
    assert parse(lines, queue_policy=make_queue_policy("fcfs")).ok
    parsed = parse(lines, queue_policy=make_queue_policy("oracle"))
    assert [(e.line, e.param) for e in parsed.errors] == [(2, "body.sluice")]


def test_a_duplicate_custom_id_names_both_lines():
    parsed = parse(jsonl(chat_line("a"), chat_line("x"), chat_line("a"), "", chat_line("a")))
    assert [(e.code, e.line) for e in parsed.errors] == [("duplicate_custom_id", 3), ("duplicate_custom_id", 5)]
    assert "line 1 and on line 3" in parsed.errors[0].message
    assert "line 1 and on line 5" in parsed.errors[1].message


def test_a_custom_id_on_a_bad_line_still_counts_for_duplicates():
    parsed = parse(jsonl(chat_line("a", model="other"), chat_line("a")))
    assert [(e.code, e.line) for e in parsed.errors] == [("model_not_found", 1), ("duplicate_custom_id", 2)]


def test_every_bad_line_is_reported_not_only_the_first():
    parsed = parse(jsonl(chat_line("a"), "{", chat_line("b", max_tokens=0), [1], chat_line("c")))
    assert [(e.line, e.code) for e in parsed.errors] == [
        (2, "invalid_json_line"), (3, "max_tokens_out_of_range"), (4, "invalid_json_line")]


@pytest.mark.parametrize("lines", [[], [b"\n", b"   \r\n", b""]], ids=["no-lines", "blank-lines"])
def test_a_file_without_requests_is_an_error(lines):
    parsed = parse(lines)
    assert not parsed.ok
    assert parsed.errors_object() == {"object": "list", "data": [
        {"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}]}


def test_reported_errors_are_capped_and_counted():
    parsed = parse(jsonl(*[f"not json {i}" for i in range(250)]))
    assert parsed.error_count == 250 and len(parsed.errors) == 100
    assert [e.line for e in parsed.errors] == list(range(1, 101))
    data = parsed.errors_object()["data"]
    assert len(data) == 101
    assert data[-1]["code"] == "too_many_errors" and data[-1]["line"] is None
    assert "150 more errors" in data[-1]["message"]
    assert parse(jsonl(*["{"] * 5), max_reported_errors=2).errors_object()["data"][-1]["message"].startswith("3 more")


def test_an_unknown_endpoint_is_refused():
    with pytest.raises(APIError) as error:
        parse(jsonl(chat_line()), endpoint="/v1/embeddings")
    assert (error.value.status, error.value.param) == (400, "endpoint")


def test_parsing_50000_lines_is_fast():
    lines = jsonl(*[chat_line(f"request-{i}", f"prompt number {i} with some words", max_tokens=16)
                    for i in range(50_000)])
    started = time.perf_counter()
    parsed = parse(lines)
    elapsed = time.perf_counter() - started
    print(f"\nparsed 50,000 batch lines in {elapsed:.2f} s ({elapsed / 50_000 * 1e6:.1f} us a line)")
    assert parsed.ok and len(parsed.lines) == 50_000 and parsed.lines[-1].line == 50_000


# --- completion_window ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [
    ("24h", 86_400), ("2h", 7_200), ("30m", 1_800), ("90s", 90), ("1h30m", 5_400), ("1h0m5s", 3_605),
    ("23h59m59s", 86_399), ("1440m", 86_400), (" 2H ", 7_200),
])
def test_completion_windows(text, seconds):
    assert parse_completion_window(text) == seconds
    assert MAX_COMPLETION_WINDOW_S == 86_400


@pytest.mark.parametrize("text,reason", [
    ("0h", "longer than 0"), ("0m0s", "longer than 0"), ("25h", "at most 24h"), ("24h1s", "at most 24h"),
    ("86401s", "at most 24h"), ("-1h", "not a duration"), ("1.5h", "not a duration"), ("1m1h", "not a duration"),
    ("30", "not a duration"), ("", "not a duration"), ("tomorrow", "not a duration"), ("1d", "not a duration"),
    (None, "not a duration"), (24, "not a duration"),
])
def test_bad_completion_windows_are_refused_with_a_reason(text, reason):
    with pytest.raises(APIError) as error:
        parse_completion_window(text)
    assert error.value.status == 400 and error.value.param == "completion_window"
    assert reason in error.value.message


# --- output and error lines ----------------------------------------------------------------------
# OpenAI's documented output line (the Batch guide's example), the shape every client reads.
OPENAI_OUTPUT_LINE = {
    "id": "batch_req_123", "custom_id": "request-2",
    "response": {"status_code": 200, "request_id": "req_123", "body": {
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1711652795, "model": "gpt-3.5-turbo-0125",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24}}},
    "error": None,
}
RESULT = {"text": "Hello.", "request_id": "chatcmpl-abc", "slo": "batch", "worker": "w1", "attempt": 1,
          "finish_reason": "stop", "finished_at": 1711652800.0, "deadline": 1711660000.0,
          "predicted_output_tokens": None, "queue_wait_s": 0.5, "ttft_s": 0.6, "itl_s": 0.01, "e2e_s": 0.7,
          "prompt_tokens": 22, "output_tokens": 2}


def shape(value):
    """The keys and value types of a JSON value, all the way down (values themselves left out)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def test_an_output_line_has_openais_shape():
    line = output_line(custom_id="request-2", request_id="chatcmpl-abc", kind="chat", model="m", created=1711652795,
                       result=RESULT)
    body = line["response"]["body"]
    assert body.pop("sluice")["worker"] == "w1"  # Sluice's extension block, as in a direct answer
    assert shape(line) == shape(OPENAI_OUTPUT_LINE)
    assert line["id"].startswith("batch_req_") and line["id"] == line_id("chatcmpl-abc")
    assert line["response"]["request_id"] == body["id"] == "chatcmpl-abc"
    assert body["choices"][0]["message"]["content"] == "Hello."
    assert body["usage"] == OPENAI_OUTPUT_LINE["response"]["body"]["usage"]


def test_a_completions_output_line_holds_a_text_completion():
    line = output_line(custom_id="c", request_id="cmpl-1", kind="completion", model="m", created=1,
                       result={**RESULT, "text": "abc", "finish_reason": "length"})
    choice = line["response"]["body"]["choices"][0]
    assert line["response"]["body"]["object"] == "text_completion"
    assert choice == {"index": 0, "text": "abc", "finish_reason": "length", "logprobs": None}


@pytest.mark.parametrize("code,message", [BATCH_EXPIRED, BATCH_CANCELLED])
def test_an_error_line_has_openais_shape(code, message):
    line = error_line(custom_id="request-3", request_id="chatcmpl-x", code=code, message=message)
    # OpenAI's documented error-file line for a request the window ran out on.
    documented = {"id": "batch_req_456", "custom_id": "request-3", "response": None,
                  "error": {"code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired."}}
    assert shape(line) == shape(documented)
    assert line["error"] == {"code": code, "message": message} and line["response"] is None
    assert BATCH_EXPIRED == (documented["error"]["code"], documented["error"]["message"])


def test_a_request_answered_with_an_http_error_carries_it_in_the_response():
    line = http_error_line(custom_id="r", request_id="chatcmpl-y",
                           error=APIError(500, "generation failed: boom", type="server_error"))
    assert line["error"] is None
    assert line["response"] == {"status_code": 500, "request_id": "chatcmpl-y", "body": {"error": {
        "message": "generation failed: boom", "type": "server_error", "param": None, "code": None}}}


def test_line_ids_are_stable_and_distinct():
    assert line_id("chatcmpl-a") == line_id("chatcmpl-a") != line_id("chatcmpl-b")


def test_encoded_lines_are_one_json_line_each():
    line = error_line(custom_id="multi\nline", request_id="r", code="batch_cancelled", message="x")
    encoded = encode_line(line)
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    assert json.loads(encoded) == line


def test_batch_errors_have_openais_fields():
    assert BatchError("duplicate_custom_id", "m", "custom_id", 4).to_openai() == {
        "code": "duplicate_custom_id", "message": "m", "param": "custom_id", "line": 4}
