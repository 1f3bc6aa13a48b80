"""The SDK's pure pieces: a deadline as a completion_window, prompts as Batch input lines, result order."""

from __future__ import annotations

import datetime
import io
import json
import math

import pytest

from api.batch_input import parse_completion_window
from sluice.sdk import (BatchFailed, batch_input_lines, completion_window, custom_id_key, first_line_url,
                        write_jsonl)


@pytest.mark.parametrize("deadline, window", [
    (3600, "1h"), (5400, "1h30m"), (90, "1m30s"), (3661, "1h1m1s"), (86400, "24h"), (59.2, "1m"), (0.1, "1s"),
    (datetime.timedelta(hours=2), "2h"), ("2h", "2h"), (" 1h30m ", "1h30m"), ("24h", "24h"),
])
def test_a_deadline_becomes_a_completion_window(deadline, window):
    assert completion_window(deadline) == window


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 599.5, 3599, 3600, 3601, 7322, 86399, 86400])
def test_the_server_reads_the_window_as_the_deadline_rounded_up(seconds):
    assert parse_completion_window(completion_window(seconds)) == math.ceil(seconds)


@pytest.mark.parametrize("deadline", [0, -5, 86400.5, 90000, float("nan"), True, None, [3600]])
def test_a_deadline_outside_the_window_is_refused_before_anything_is_sent(deadline):
    with pytest.raises(ValueError):
        completion_window(deadline)


def test_prompts_become_chat_lines_with_numbered_custom_ids():
    lines = list(batch_input_lines(["hello", "world"], model="tiny", max_tokens=8, ignore_eos=True))
    assert lines == [
        {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny", "max_tokens": 8, "ignore_eos": True,
                  "messages": [{"role": "user", "content": "hello"}]}},
        {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny", "max_tokens": 8, "ignore_eos": True,
                  "messages": [{"role": "user", "content": "world"}]}},
    ]


def test_a_mapping_gives_the_custom_ids_and_completions_lines_carry_a_prompt():
    lines = list(batch_input_lines({"doc-7": "a", "doc-3": "b"}, model="tiny", chat=False))
    assert [(line["custom_id"], line["url"], line["body"]) for line in lines] == [
        ("doc-7", "/v1/completions", {"model": "tiny", "prompt": "a"}),  # no max_tokens: the server's default
        ("doc-3", "/v1/completions", {"model": "tiny", "prompt": "b"}),
    ]


def test_one_string_or_a_non_string_prompt_is_refused():
    with pytest.raises(TypeError):
        list(batch_input_lines("one prompt", model="tiny"))
    with pytest.raises(TypeError):
        list(batch_input_lines(["ok", 3], model="tiny"))


def test_jsonl_round_trips_one_object_a_line(tmp_path):
    out = io.BytesIO()
    lines = list(batch_input_lines(["naïve\nprompt", "b"], model="tiny"))
    assert write_jsonl(lines, out) == 2
    text = out.getvalue().decode()
    assert text.count("\n") == 2 and [json.loads(line) for line in text.splitlines()] == lines
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n  \n" + out.getvalue().replace(b"/v1/chat/completions", b"/v1/completions"))
    assert first_line_url(path) == "/v1/completions"
    path.write_bytes(b"not json\n")
    assert first_line_url(path) is None


def test_custom_id_order_is_numeric_for_numbers_then_text():
    ids = ["10", "b", "2", "0", "a", "1"]
    assert [line["custom_id"] for line in sorted(({"custom_id": i} for i in ids), key=custom_id_key)] == \
        ["0", "1", "2", "10", "a", "b"]


def test_a_failed_batch_names_its_lines():
    error = BatchFailed({"id": "batch_1", "status": "failed", "errors": {"object": "list", "data": [
        {"code": "duplicate_custom_id", "message": "custom_id 'a' is used twice", "param": "custom_id", "line": 3},
        {"code": "too_many_errors", "message": "2 more errors not listed", "param": None, "line": None}]}})
    assert str(error) == ("batch batch_1 failed: line 3: duplicate_custom_id: custom_id 'a' is used twice; "
                          "too_many_errors: 2 more errors not listed")
    assert error.status is None and error.batch["id"] == "batch_1"


@pytest.mark.parametrize("host, port, url", [(None, None, "http://127.0.0.1:8000"),
                                             ("0.0.0.0", "9000", "http://127.0.0.1:9000"),
                                             ("10.1.2.3", None, "http://10.1.2.3:8000")])
def test_the_cli_finds_the_api_where_the_settings_put_it(monkeypatch, host, port, url):
    from sluice.cli import default_api_url

    for name, value in (("SLUICE_API_HOST", host), ("SLUICE_API_PORT", port)):
        monkeypatch.delenv(name, raising=False)
        if value is not None:
            monkeypatch.setenv(name, value)
    assert default_api_url() == url


def test_the_cli_shows_a_batch_with_its_counts_and_line_errors():
    from sluice.cli import describe_batch

    shown = describe_batch({
        "id": "batch_1", "status": "failed", "endpoint": "/v1/chat/completions", "completion_window": "2h",
        "created_at": 0, "expires_at": 7200, "input_file_id": "file-in", "output_file_id": None,
        "error_file_id": None, "metadata": {"job": "x"}, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "errors": {"data": [{"code": "duplicate_custom_id", "message": "twice", "param": "custom_id", "line": 2}]}})
    assert shown[0] == "batch_1  failed"
    assert "  requests     0 total, 0 completed, 0 failed" in shown and "  metadata     job=x" in shown
    assert shown[-1] == "  error        line 2: duplicate_custom_id: twice"
