"""The OpenAI-compatible API against a real stack: Redis, a Celery worker on vLLM, HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from core.processes import http_ok
from core import keys
from tests.conftest import Process, free_port, wait_until
from tests.integration.conftest import lane_snapshot, wait_for_idle

pytestmark = pytest.mark.integration

MODEL = "sluice-tiny-llama"


def client_for(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")


def test_openai_client_chat_streaming_and_not(stack):
    client = client_for(stack)
    [model] = client.models.list().data
    assert model.id == MODEL

    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                           max_tokens=12, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 3
    assert reply.choices[0].message.content

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream please"}], max_tokens=9, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 9


def test_openai_client_completions(stack):
    client = client_for(stack)
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7,
                                      extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 7 and reply.choices[0].text
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed)
    assert streamed[-1].choices[0].finish_reason == "length"


def test_slo_from_header_and_body(stack, http):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    by_header = http.post("/v1/completions", json=body, headers={"X-Sluice-SLO": "batch"}).json()
    by_body = http.post("/v1/completions", json={**body, "sluice": {"slo": "batch", "deadline": 600}}).json()
    default = http.post("/v1/completions", json=body).json()
    assert [by_header["sluice"]["slo"], by_body["sluice"]["slo"], default["sluice"]["slo"]] == \
        ["batch", "batch", "interactive"]


BAD_INPUTS = [
    ("malformed json", "/v1/chat/completions", b'{"model": "sluice-tiny-llama", "messages": [', {}, 400, "invalid_json"),
    ("not an object", "/v1/completions", b"[1, 2]", {}, 400, "invalid_json"),
    ("unknown model", "/v1/chat/completions",
     {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, {}, 404, "model_not_found"),
    ("prompt longer than context", "/v1/completions",
     {"model": MODEL, "prompt": "word " * 5000, "max_tokens": 1}, {}, 400, "context_length_exceeded"),
    ("max_tokens zero", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, {}, 400,
     "max_tokens_out_of_range"),
    ("max_tokens beyond context", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100000}, {}, 400,
     "max_tokens_out_of_range"),
    ("unknown slo header", "/v1/completions", {"model": MODEL, "prompt": "hi"}, {"X-Sluice-SLO": "urgent"}, 400,
     "unknown_slo"),
    ("unknown slo body", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "sluice": {"slo": "gold"}}, {}, 400,
     "unknown_slo"),
    ("deadline in the past", "/v1/completions",
     {"model": MODEL, "prompt": "hi", "sluice": {"slo": "batch", "deadline": 1_600_000_000}}, {}, 400,
     "deadline_passed"),
    ("missing messages", "/v1/chat/completions", {"model": MODEL}, {}, 400, "invalid_value"),
    ("bad temperature", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": 7}, {}, 400,
     "invalid_value"),
]


@pytest.mark.parametrize("name,path,body,headers,status,code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_4xx_and_enqueues_nothing(stack, http, name, path, body, headers, status, code):
    wait_for_idle(stack)
    before = lane_snapshot(stack.redis)
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json", **headers})
    else:
        response = http.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert lane_snapshot(stack.redis) == before


def test_full_lane_answers_429_with_retry_after(stack, model_dir, log_dir):
    """An API over a Redis database no worker consumes: the lane fills, then 429."""
    url = stack.redis_url.rsplit("/", 1)[0] + "/12"
    import redis

    redis.Redis.from_url(url).flushdb()
    port = free_port()
    env = {**stack.env, "SLUICE_REDIS_URL": url, "SLUICE_LANE_QUEUE_LIMITS": json.dumps({"batch": 2})}
    api = Process("api-429", ["api", "--port", str(port)], env, log_dir)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 120, "the second API", interval=0.5, process=api)
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(2):
                with http.stream("POST", "/v1/completions", json=body, headers={"X-Sluice-SLO": "batch"}) as r:
                    assert r.status_code == 200
            refused = http.post("/v1/completions", json=body, headers={"X-Sluice-SLO": "batch"})
            assert refused.status_code == 429
            assert refused.headers["Retry-After"].isdigit()
            assert refused.json()["error"]["code"] == "lane_full"
            assert redis.Redis.from_url(url).zcard(keys.lane_key("batch")) == 2
            # The interactive lane has its own limit and still admits.
            with http.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
    finally:
        api.stop()
        redis.Redis.from_url(url).flushdb()


def test_metrics_in_prometheus_format(stack, http):
    http.post("/v1/completions", json={"model": MODEL, "prompt": "metrics", "max_tokens": 3})
    text = http.get("/metrics").text
    for name in ("sluice_queue_depth{lane=\"interactive\"}", "sluice_queue_depth{lane=\"batch\"}",
                 "sluice_time_to_first_token_seconds_bucket", "sluice_inter_token_latency_seconds_bucket",
                 "sluice_e2e_request_latency_seconds_count", "sluice_request_queue_time_seconds_count",
                 "sluice_worker_admission_limit{pool=\"mixed\",worker=\"main@test\"}", "sluice_workers{pool=\"mixed\"}",
                 "sluice_worker_draining{pool=\"mixed\",worker=\"main@test\"} 0.0"):
        assert name in text, name


def test_scaler_decisions_are_served_newest_first(stack, http):
    from broker.decisions import record_decision

    for target in (2, 3):
        record_decision(stack.redis, "instances", {"pool": "mixed", "action": "scale_out", "from": target - 1,
                                                   "to": target, "reason": f"test {target}"})
    reply = http.get("/v1/scaler/decisions", params={"limit": 2}).json()
    assert [(d["kind"], d["to"], d["reason"]) for d in reply["data"]] == [("instances", 3, "test 3"),
                                                                         ("instances", 2, "test 2")]
    assert http.get("/v1/scaler/decisions", params={"limit": 0}).status_code == 400
