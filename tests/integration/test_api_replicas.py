"""Several API replicas on one Redis (docs/operations.md, "Several API replicas"): a request accepted by
one is polled, streamed and answered through another, a batch created on one is cancelled through
another; SIGKILL of a replica loses no accepted request,
and its batches go on under the others."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from core import keys
from core.processes import http_ok
from tests.conftest import engine_processes, free_port, suspended, wait_until
from tests.integration.test_batches import chat_line, client_for, upload, wait_for_status

pytestmark = pytest.mark.integration


class Replica:
    def __init__(self, stack, name: str):
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # A short batch lease: a killed replica's batches are taken over within seconds.
        self.process = stack.start(name, ["api", "--port", str(self.port)], SLUICE_BATCH_LEASE_S="3")
        self.http = httpx.Client(base_url=self.base_url, timeout=60)

    def wait_ready(self) -> None:
        wait_until(lambda: http_ok(self.base_url + "/healthz"), 120, self.name, interval=0.5, process=self.process)


@pytest.fixture(scope="module")
def replicas(stack):
    a, b = Replica(stack, "api-a"), Replica(stack, "api-b")  # both start at once
    for replica in (a, b):
        replica.wait_ready()
    yield a, b
    for replica in (a, b):
        replica.http.close()
        replica.process.stop()


def model_of(replica: Replica) -> str:
    return replica.http.get("/v1/models").json()["data"][0]["id"]


def submit_async(replica: Replica, model: str, prompt: str, max_tokens: int = 8) -> str:
    response = replica.http.post("/v1/completions", headers={"Prefer": "respond-async"}, json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status_via(replica: Replica, request_id: str) -> dict:
    response = replica.http.get(f"/v1/sluice/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(replica: Replica, request_id: str, timeout: float = 120) -> dict:
    return wait_until(lambda: (lambda s: s if s["status"] == "done" else None)(status_via(replica, request_id)),
                      timeout, f"{request_id} to finish (read via {replica.base_url})", interval=0.25)


def test_a_request_submitted_to_one_replica_is_polled_and_streamed_through_another(replicas):
    a, b = replicas
    model = model_of(a)
    request_id = submit_async(a, model, "Tell me about rivers.", max_tokens=12)
    # Streamed via B from its first event, whether B starts following before, during or after the generation.
    events = []
    with b.http.stream("GET", f"/v1/sluice/requests/{request_id}/events") as response:
        assert response.status_code == 200 and response.headers["x-sluice-request-id"] == request_id
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                events.append(json.loads(data))
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds, kinds
    streamed = "".join(event["text"] for event in events if event["type"] == "delta")
    # Polled via B: the same answer.
    record = wait_done(b, request_id)
    assert record["result"]["text"] == streamed
    assert sum(event["tokens"] for event in events if event["type"] == "delta") == 12
    # Unknown ids: 404 on every replica, with an OpenAI-style error.
    missing = b.http.get("/v1/sluice/requests/no-such-request/events")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


def test_a_batch_created_on_one_replica_is_cancelled_through_another(replicas):
    a, b = replicas
    model = model_of(a)
    openai_a, openai_b = client_for(a.base_url), client_for(b.base_url)
    lines = [chat_line(f"c-{index}", model, max_tokens=16) for index in range(200)]
    batch = openai_a.batches.create(input_file_id=upload(openai_a, lines).id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert openai_b.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    ended = wait_for_status(openai_a, batch.id, ("cancelled",), 120)
    assert ended.request_counts.completed < len(lines)


def test_killing_a_replica_loses_no_accepted_request_and_its_batch_goes_on(stack, replicas):
    a, b = replicas
    model = model_of(a)
    openai_a, openai_b = client_for(a.base_url), client_for(b.base_url)
    lines = [chat_line(f"line-{index}", model, max_tokens=48) for index in range(120)]
    engines = engine_processes(stack.process("main").pid)  # looked up now, so that holding them is instant
    # The engine is held until the batch is seen in progress: the tiny model can answer all its lines in
    # seconds, and a stall of this process let the batch end before it was ever seen running (CI).
    with suspended(engines):
        batch = openai_a.batches.create(input_file_id=upload(openai_a, lines).id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        accepted = [submit_async(a, model, f"Question {index}: what is a lake?", max_tokens=8) for index in range(12)]
        wait_for_status(openai_a, batch.id, ("in_progress",), 60)
    wait_until(lambda: openai_a.batches.retrieve(batch.id).request_counts.completed >= 1, 120,
               "the batch's first answers", interval=0.05)
    # The engine is held while A dies, so that the batch is still running then: the tiny model answers
    # 120 lines of 48 tokens in seconds, and a stall of this process could let it finish first.
    with suspended(engines):
        # SIGKILL: no shutdown hook runs, leases are left to expire, streams its clients followed are cut.
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait(10)
        assert not a.process.alive()
        at_kill = openai_b.batches.retrieve(batch.id)
    assert at_kill.status == "in_progress" and at_kill.request_counts.completed < len(lines), at_kill
    # Every request A accepted finishes, readable through B.
    for request_id in accepted:
        wait_done(b, request_id, timeout=240)
    # The batch A created (and worked on) ends, through B, with every line answered once.
    ended = wait_for_status(openai_b, batch.id, ("completed",), 300)
    output = [json.loads(line) for line in openai_b.files.content(ended.output_file_id).text.splitlines() if line]
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    assert ended.request_counts.completed == len(lines) and ended.request_counts.failed == 0
    assert stack.redis.exists(keys.batch_lease_key(batch.id)) == 0  # released by whoever ended it
