"""Hostile clients against a real stack: oversized and malformed input, slow heads, and clients that leave.

Every refusal is an OpenAI-style 4xx with nothing enqueued (the lanes and the request records unchanged);
a client that disconnects from a stream, or from a request it waits for, frees its slot on the worker.
"""

from __future__ import annotations


import contextlib
import json
import socket
import time

import httpx
import pytest

from broker.heartbeat import read_heartbeats
from broker.ledger import Ledger, RequestStatus
from core import keys
from tests.conftest import engine_processes, suspended, wait_until
from tests.integration.conftest import lane_snapshot, wait_for_idle

pytestmark = pytest.mark.integration

MODEL = "sluice-tiny-llama"
WORKER = "main@test"


def _refused(http, stack, status: int, **request) -> dict:
    before = lane_snapshot(stack.redis)
    reply = http.post("/v1/chat/completions", **request)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert lane_snapshot(stack.redis) == before
    return error


def test_oversized_body_is_413(stack, http):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    error = _refused(http, stack, 413, content=body, headers={"content-type": "application/json"})
    assert error["code"] == "request_too_large"


def test_oversized_body_without_content_length_is_413(stack, http):
    def chunks():
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 65536
        yield b'"}]}'

    _refused(http, stack, 413, content=chunks(), headers={"content-type": "application/json"})


def test_deep_nesting_is_400(stack, http):
    body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "extra": %s}' % (
        MODEL, "[" * 50_000 + "]" * 50_000)
    error = _refused(http, stack, 400, content=body, headers={"content-type": "application/json"})
    assert "nests" in error["message"]


def test_too_many_messages_is_400(stack, http):
    messages = [{"role": "user", "content": "hi"}] * 1025
    error = _refused(http, stack, 400, json={"model": MODEL, "messages": messages})
    assert error["code"] == "too_many_messages"


def test_oversized_headers_get_431(stack):
    before = lane_snapshot(stack.redis)
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=10) as sock:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"x-padding: " + b"p" * 32768 + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431")
    assert lane_snapshot(stack.redis) == before


def test_slow_body_is_cut_off(stack):
    """A client trickling its body gets 408 after body_read_timeout_s; nothing is enqueued."""
    before = lane_snapshot(stack.redis)
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=120) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 100000\r\n\r\n{")
        sock.settimeout(0.5)
        reply = b""
        deadline = time.time() + 90  # well past the stack's body_read_timeout_s (5 s)
        while time.time() < deadline and not reply:
            try:
                sock.sendall(b" ")
                reply = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert lane_snapshot(stack.redis) == before


def _worker_inflight(stack) -> int:
    return read_heartbeats(stack.redis, [WORKER])[WORKER].inflight


def engine_paused(stack):
    """The session worker's engine processes stopped: generation halts while the worker process itself (its
    heartbeat, its abort watch) runs on. The tiny model can write 1,900 tokens in under 3 s on a quiet host,
    so without this a client could not be sure to leave while its request still runs."""
    engines = engine_processes(stack.process("main").pid)
    assert engines
    return suspended(engines)


def _cancelled(stack, request_id: str) -> bool:
    record = Ledger(stack.redis).read(request_id)
    return record is not None and record.status is RequestStatus.cancelled


def test_stream_disconnect_frees_the_worker_slot(stack):
    wait_for_idle(stack)
    assert _worker_inflight(stack) == 0
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1900,
            "ignore_eos": True, "stream": True}
    hold = engine_paused(stack)  # the engine processes looked up now, so that holding them later is instant
    with contextlib.ExitStack() as held:
        with httpx.Client(base_url=stack.base_url, timeout=120) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200
                request_id = reply.headers["x-sluice-request-id"]
                deltas = 0
                lines = reply.iter_lines()  # kept: an abandoned iterator closes the connection when collected
                for line in lines:
                    if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                        deltas += 1
                        if deltas >= 3:
                            break
                # Held at once: the tiny model writes 1,900 tokens in under 3 s, and waiting for the heartbeat
                # before holding it let the request finish first in a CI run.
                held.enter_context(hold)
                assert Ledger(stack.redis).read(request_id).status is RequestStatus.running, "it ended first"
                wait_until(lambda: _worker_inflight(stack) == 1, 10, "the request to count in flight")
            # leaving the block closes the connection mid-stream, while the engine is held
        wait_until(lambda: _cancelled(stack, request_id), 15, "the API to end the abandoned request")
    left_at = time.time()
    wait_until(lambda: _worker_inflight(stack) == 0, 15, "the worker to free the abandoned request's slot")
    freed_after = time.time() - left_at
    record = Ledger(stack.redis).read(request_id)
    assert record.status is RequestStatus.cancelled
    assert record.result is None  # it never finished its 1,900 tokens
    print(f"slot freed {freed_after:.2f} s after the client left")


def test_non_streaming_disconnect_frees_the_worker_slot(stack):
    wait_for_idle(stack)
    before = {key for key in stack.redis.scan_iter(keys.request_key("*"))}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1900,
            "ignore_eos": True}
    with engine_paused(stack):
        with httpx.Client(base_url=stack.base_url, timeout=httpx.Timeout(120, read=3)) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/chat/completions", json=body)  # gives up waiting: the connection closes
        [key] = {key for key in stack.redis.scan_iter(keys.request_key("*"))} - before
        request_id = key.decode().split(":", 2)[2]
        wait_until(lambda: _cancelled(stack, request_id), 15, "the API to end the abandoned request")
    wait_until(lambda: _worker_inflight(stack) == 0, 15, "the worker to free the abandoned request's slot")
    record = Ledger(stack.redis).read(request_id)
    assert record.status is RequestStatus.cancelled and record.result is None
