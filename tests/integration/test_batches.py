"""The OpenAI Batch API against the real stack: Redis, a vLLM worker, the API (and the `openai` client).

Each test reads a batch's outcome from where a user reads it (the batch object, the output and error
files) and checks the lane and the ledger for what must not be there.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time

import openai
import pytest
import redis

from broker.batches import request_id_of
from core import keys
from core.processes import http_ok
from tests.conftest import Process, free_port, wait_until
from tests.integration.conftest import lane_snapshot, wait_for_idle

pytestmark = pytest.mark.integration

ENDED = ("completed", "failed", "expired", "cancelled")


def client_for(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def chat_line(custom_id: str, model: str, *, max_tokens: int = 4, ignore_eos: bool = True, **extra) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": max_tokens, "ignore_eos": ignore_eos,
                     "messages": [{"role": "user", "content": f"Say something about {custom_id}."}], **extra}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: openai.OpenAI, lines: list[dict]):
    return client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")


def wait_for_status(client: openai.OpenAI, batch_id: str, statuses, timeout: float):
    found = {}

    def reached():
        found["batch"] = client.batches.retrieve(batch_id)
        return found["batch"].status in statuses

    wait_until(reached, timeout, f"batch {batch_id} to be one of {statuses}", interval=0.25)
    return found["batch"]


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).read().splitlines()]


def batch_members(client: redis.Redis, batch_id: str) -> int:
    """Messages of this batch in the batch lane."""
    return sum(1 for member in client.zrange(keys.lane_key("batch"), 0, -1)
               if json.loads(member)["headers"]["id"].startswith(batch_id + "-"))


def counts(client: redis.Redis, batch_id: str) -> dict:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.batch_counts_key(batch_id)).items()}


@pytest.fixture
def model(stack, http) -> str:
    return http.get("/v1/models").json()["data"][0]["id"]


def test_the_openai_client_runs_a_batch_from_upload_to_output(stack, model):
    client = client_for(stack.base_url)
    lines = [chat_line(f"req-{i}", model, max_tokens=3 + i % 3) for i in range(12)]
    uploaded = upload(client, lines)
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="1h", metadata={"job": "nightly"})
    assert (created.object, created.status, created.input_file_id) == ("batch", "validating", uploaded.id)
    assert created.expires_at - created.created_at == 3600 and created.metadata == {"job": "nightly"}

    batch = wait_for_status(client, created.id, ENDED, 180)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 12, 0)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.error_file_id is None
    output = read_jsonl(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]  # file order
    for line, sent in zip(output, lines):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == model
        assert body["usage"]["completion_tokens"] == sent["body"]["max_tokens"]
        assert body["choices"][0]["message"]["role"] == "assistant"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert created.id in [b.id for b in client.batches.list(limit=100)]
    # Progress is counted by the ledger, not by scanning: every request ended done, none left anywhere.
    assert counts(stack.redis, created.id) == {"queued": "0", "running": "0", "done": "12"}
    metrics = client._client.get(stack.base_url + "/metrics").text
    assert 'sluice_batches{status="completed"}' in metrics
    assert 'sluice_batch_requests_total{status="done"}' in metrics


def test_a_bad_line_fails_the_batch_naming_the_line_and_enqueues_nothing(stack, model):
    client = client_for(stack.base_url)
    wait_for_idle(stack)
    before = lane_snapshot(stack.redis)
    lines = [chat_line("a", model), {"method": "POST", "url": "/v1/chat/completions", "body": {}},
             chat_line("a", model), chat_line("c", model, max_tokens=10**6), chat_line("d", "no-such-model")]
    uploaded = upload(client, lines)
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    batch = wait_for_status(client, created.id, ENDED, 60)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    errors = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert errors == [(2, "missing_required_parameter", "custom_id"), (3, "duplicate_custom_id", "custom_id"),
                      (4, "max_tokens_out_of_range", "body.max_tokens"), (5, "model_not_found", "body.model")]
    assert lane_snapshot(stack.redis) == before  # nothing enqueued, no request recorded
    assert counts(stack.redis, created.id) == {}


def test_bad_batch_requests_get_4xx_and_create_nothing(stack, model):
    client = client_for(stack.base_url)
    uploaded = upload(client, [chat_line("a", model)])
    batches_before = stack.redis.zcard(keys.BATCHES)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    for endpoint, window in (("/v1/embeddings", "24h"), ("/v1/chat/completions", "25h"),
                             ("/v1/chat/completions", "soon"), ("/v1/chat/completions", "0m")):
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window=window)
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h",
                              metadata={"k": "v" * 600})
    response = client._client.post(stack.base_url + "/v1/batches", json={"endpoint": "/v1/chat/completions"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input_file_id"
    assert stack.redis.zcard(keys.BATCHES) == batches_before
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    with pytest.raises(openai.BadRequestError):
        client.batches.list(after="batch_nope")


def test_cancel_empties_the_lane_at_once_and_ends_running_requests_within_seconds(stack, model):
    client = client_for(stack.base_url)
    wait_for_idle(stack)
    stack.set_admission_limit("main@test", 2)
    try:
        lines = [chat_line(f"long-{i}", model, max_tokens=400) for i in range(60)]
        created = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                        completion_window="1h")
        wait_until(lambda: int(counts(stack.redis, created.id).get("running", 0)) >= 1
                   and batch_members(stack.redis, created.id) > 0, 120, "requests running and queued")
        input_file = created.input_file_id
        with pytest.raises(openai.ConflictError):  # the batch's output is written from it
            client.files.delete(input_file)
        cancelled = client.batches.cancel(created.id)
        cancel_returned = time.monotonic()
        assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
        # At once: the runner empties the lane's part of the batch in a few slices, not as workers meet them.
        wait_until(lambda: batch_members(stack.redis, created.id) == 0, 5, "the batch's lane part to empty",
                   interval=0.05)
        emptied_s = time.monotonic() - cancel_returned
        wait_until(lambda: int(counts(stack.redis, created.id).get("running", 0)) == 0, 15,
                   "running requests to be aborted", interval=0.1)
        batch = wait_for_status(client, created.id, ("cancelled",), 30)
    finally:
        stack.set_admission_limit("main@test", 32)
    output, errors = read_jsonl(client, batch.output_file_id), read_jsonl(client, batch.error_file_id)
    answered = [line["custom_id"] for line in output + errors]
    assert sorted(answered) == sorted(line["custom_id"] for line in lines)  # each exactly once
    assert errors and all(line["error"]["code"] == "batch_cancelled" for line in errors)
    assert batch.request_counts.completed == len(output) < len(lines)
    assert emptied_s < 5
    assert client.files.delete(input_file).deleted  # the batch ended: its input may go
    wait_for_idle(stack, timeout=60)


def test_a_short_window_expires_the_batch_with_its_partial_output(stack, model):
    client = client_for(stack.base_url)
    wait_for_idle(stack)
    stack.set_admission_limit("main@test", 2)
    try:
        lines = [chat_line(f"r-{i}", model, max_tokens=24) for i in range(300)]
        created = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                        completion_window="20s")
        batch = wait_for_status(client, created.id, ENDED, 120)
    finally:
        stack.set_admission_limit("main@test", 32)
    assert batch.status == "expired" and batch.expired_at >= created.expires_at, batch
    output, errors = read_jsonl(client, batch.output_file_id), read_jsonl(client, batch.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(line["custom_id"] for line in lines)
    assert output and all(line["response"]["status_code"] == 200 for line in output)  # the partial output
    assert errors and {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert batch_members(stack.redis, created.id) == 0
    # The deadline accounting the scaler reads holds none of its work any more.
    assert counts(stack.redis, created.id)["queued"] == "0" and counts(stack.redis, created.id)["running"] == "0"
    wait_for_idle(stack, timeout=60)


RESTART_DB = 12


def test_a_batch_survives_an_api_killed_in_the_middle_of_its_enqueue(machine_redis_url, model_dir, log_dir,
                                                                     tmp_path):
    """No worker here: what is checked is the lane after the restart (each request exactly once), and then
    a cancel of the 20,000 queued requests (every custom_id answered exactly once, in the error file)."""
    url = machine_redis_url.rsplit("/", 1)[0] + f"/{RESTART_DB}"
    client_redis = redis.Redis.from_url(url)
    client_redis.flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_REDIS_URL=url, SLUICE_MODEL=str(model_dir), SLUICE_DATA_DIR=str(tmp_path / "data"),
               SLUICE_QUEUE_POLICY="fcfs", SLUICE_BATCH_LEASE_S="3")
    base_url = f"http://127.0.0.1:{port}"

    def start_api(name):
        api = Process(name, ["api", "--port", str(port)], env, log_dir)
        wait_until(lambda: http_ok(base_url + "/healthz"), 120, "the API", interval=0.5, process=api)
        return api

    api = start_api("api-restart-1")
    try:
        client = client_for(base_url)
        model = client.models.list().data[0].id
        lines = [chat_line(f"q-{i}", model) for i in range(20_000)]
        created = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        wait_until(lambda: int(counts(client_redis, created.id).get("queued", 0)) >= 1000, 120,
                   "the enqueue to be under way", interval=0.02)
        os.kill(api.pid, signal.SIGKILL)
        api.wait()
        killed_at = int(counts(client_redis, created.id).get("queued", 0))
        assert client_redis.hget(keys.batch_key(created.id), "enqueued") == b"0", "killed after the enqueue ended"
        assert 0 < killed_at < len(lines)

        api = start_api("api-restart-2")
        wait_until(lambda: client_redis.hget(keys.batch_key(created.id), "enqueued") == b"1", 180,
                   "the resumed enqueue to finish", interval=0.25)
        members = [json.loads(m)["headers"]["id"] for m in client_redis.zrange(keys.lane_key("batch"), 0, -1)]
        assert sorted(members) == sorted(request_id_of(created.id, n) for n in range(1, len(lines) + 1))
        assert counts(client_redis, created.id) == {"queued": str(len(lines))}
        assert client_redis.hget(keys.request_key(request_id_of(created.id, 1)), "attempt") is None

        client.batches.cancel(created.id)
        batch = wait_for_status(client, created.id, ("cancelled",), 120)
        errors = read_jsonl(client, batch.error_file_id)
        assert sorted(line["custom_id"] for line in errors) == sorted(line["custom_id"] for line in lines)
        assert batch.output_file_id is None and client_redis.zcard(keys.lane_key("batch")) == 0
    finally:
        api.stop()
        client_redis.flushdb()
