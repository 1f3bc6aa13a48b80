"""SSJF through the real stack: the predictor scores requests, the worker serves predicted-shortest first,
a newly published predictor version is picked up without a restart, SSJF is what an API serves unless
told otherwise, and predict_lengths=true makes an FCFS API predict too."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from core.processes import http_ok
from core import keys
from predictor.predictor import DEFAULT_ARTIFACT_DIR
from predictor.registry import ModelRegistry
from tests.conftest import free_port, wait_until
from tests.integration.conftest import wait_for_idle

pytestmark = pytest.mark.integration
MODEL = "sluice-tiny-llama"
SHORT_PROMPT = "What is 2 + 2? Reply with just the number."
LONG_PROMPT = ("Write a detailed, multi-chapter essay on the history of the Roman Empire, from its founding to "
               "the fall of Constantinople, covering politics, economy, military campaigns and culture.")


@pytest.fixture(scope="module")
def ssjf_api(stack, tmp_path_factory):
    registry_root = tmp_path_factory.mktemp("registry")
    port = free_port()
    api = stack.start("api-ssjf", ["api", "--port", str(port)], SLUICE_QUEUE_POLICY="ssjf",
                      SLUICE_PREDICTOR_REGISTRY=str(registry_root), SLUICE_PREDICTOR_RELOAD_INTERVAL_S="1",
                      SLUICE_SSJF_AGING_TOKENS_PER_S="1", SLUICE_BENCH_FIELDS="true")
    base = f"http://127.0.0.1:{port}"

    wait_until(lambda: http_ok(base + "/healthz"), 180, "the SSJF API", interval=0.5, process=api)
    yield base, registry_root
    api.stop()


@pytest.fixture(scope="module")
def fcfs_apis(stack):
    """Two FCFS APIs: one with predict_lengths=true, one with it unset (the policy decides: no predictor)."""
    apis, bases = [], {}
    for name, extra_env in (("predicting", {"SLUICE_PREDICT_LENGTHS": "true"}), ("plain", {})):
        port = free_port()
        apis.append(stack.start(f"api-fcfs-{name}", ["api", "--port", str(port)], SLUICE_QUEUE_POLICY="fcfs",
                                SLUICE_PREDICTOR_FEEDBACK="false", **extra_env))
        bases[name] = f"http://127.0.0.1:{port}"
    for (name, base), api in zip(bases.items(), apis):
        wait_until(lambda: http_ok(base + "/healthz"), 180, f"the {name} FCFS API", interval=0.5, process=api)
    yield bases
    for api in apis:
        api.stop()


def test_an_api_serves_ssjf_when_no_policy_is_configured(stack):
    """The session's API is started without SLUICE_QUEUE_POLICY (conftest drops every SLUICE_* variable)."""
    health = httpx.get(stack.base_url + "/healthz", timeout=10).json()
    assert health["queue_policy"] == "ssjf"
    assert health["predicts_lengths"] and health["predictor_version"]


def test_fcfs_with_predict_lengths_attaches_predictions_and_still_scores_by_arrival(fcfs_apis):
    base = fcfs_apis["predicting"]
    health = httpx.get(base + "/healthz", timeout=10).json()
    assert (health["queue_policy"], health["predicts_lengths"]) == ("fcfs", True) and health["predictor_version"]
    sent_from = time.time()
    with httpx.Client(base_url=base, timeout=120) as http:
        short = http.post("/v1/completions", json={"model": MODEL, "prompt": SHORT_PROMPT, "max_tokens": 2}).json()
        long = http.post("/v1/completions", json={"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2}).json()
    sent_until = time.time()
    # Real predictions from the proxy (they tell the two prompts apart), as the scaler's estimates need ...
    assert 0 < short["sluice"]["predicted_output_tokens"] < long["sluice"]["predicted_output_tokens"]
    # ... while the score stays the arrival time: no prediction / aging term in it.
    assert sent_from <= short["sluice"]["score"] <= long["sluice"]["score"] <= sent_until


def test_fcfs_without_predict_lengths_loads_no_predictor(fcfs_apis):
    base = fcfs_apis["plain"]
    health = httpx.get(base + "/healthz", timeout=10).json()
    assert (health["queue_policy"], health["predicts_lengths"], health["predictor_version"]) == ("fcfs", False, None)
    reply = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": SHORT_PROMPT, "max_tokens": 2},
                       timeout=120).json()
    assert reply["sluice"]["predicted_output_tokens"] is None


def test_ssjf_scores_by_predicted_length(ssjf_api):
    base, _ = ssjf_api
    with httpx.Client(base_url=base, timeout=120) as http:
        # max_tokens above both predictions (the score is capped at it); 2 tokens generated (bench field).
        body = {"model": MODEL, "max_tokens": 1500, "sluice": {"bench_output_tokens": 2}}
        short = http.post("/v1/completions", json={**body, "prompt": SHORT_PROMPT}).json()
        long = http.post("/v1/completions", json={**body, "prompt": LONG_PROMPT}).json()
    assert short["sluice"]["predicted_output_tokens"] < long["sluice"]["predicted_output_tokens"]
    queued_gap = long["sluice"]["score"] - short["sluice"]["score"]
    predicted_gap = long["sluice"]["predicted_output_tokens"] - short["sluice"]["predicted_output_tokens"]
    assert queued_gap > predicted_gap * 0.5  # aging rate 1 token/s: the prediction dominates the score


def test_ssjf_serves_predicted_shortest_first_when_the_worker_is_full(stack, ssjf_api):
    """The worker is parked while a long-predicted and then a short-predicted request queue up;
    once it consumes again (one at a time), the later, shorter one goes first."""
    base, _ = ssjf_api
    wait_for_idle(stack)
    stack.redis.delete(keys.COMPLETIONS)
    app = stack.celery()
    replies = {}

    def send(name, prompt):
        with httpx.Client(base_url=base, timeout=300) as http:
            # A client cap well above both predictions (the score is capped at max_tokens); three tokens
            # generated, through the benchmark field the scorer does not see.
            replies[name] = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1500,
                                                               "sluice": {"bench_output_tokens": 3}}).json()

    stack.set_admission_limit("main@test", 1)
    app.control.cancel_consumer("interactive", destination=["main@test"], reply=True, timeout=5)
    threads = []
    try:
        for count, (name, prompt) in enumerate([("long", LONG_PROMPT), ("short", SHORT_PROMPT)], start=1):
            threads.append(threading.Thread(target=send, args=(name, prompt)))
            threads[-1].start()
            wait_until(lambda: stack.redis.zcard(keys.lane_key("interactive")) == count, 30, f"{name} queued")
    finally:
        app.control.add_consumer("interactive", destination=["main@test"], reply=True, timeout=5)
    for thread in threads:
        thread.join(300)
    stack.set_admission_limit("main@test", 32)
    finished = [json.loads(raw)["request_id"] for raw in reversed(stack.redis.lrange(keys.COMPLETIONS, 0, -1))]
    assert finished.index(replies["short"]["id"]) < finished.index(replies["long"]["id"])


def test_new_predictor_version_is_hot_reloaded(ssjf_api):
    base, registry_root = ssjf_api
    before = httpx.get(base + "/healthz", timeout=10).json()["predictor_version"]
    ModelRegistry(registry_root).publish(DEFAULT_ARTIFACT_DIR, "v-hot-reload-test")
    wait_until(lambda: httpx.get(base + "/healthz", timeout=10).json()["predictor_version"] == "v-hot-reload-test",
               60, "the API to load the new version")
    assert before != "v-hot-reload-test"
    reply = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": SHORT_PROMPT, "max_tokens": 2},
                       timeout=60).json()
    assert reply["sluice"]["predicted_output_tokens"] > 0


def test_the_score_is_capped_at_max_tokens_and_blind_to_the_bench_length(stack, ssjf_api):
    base, _ = ssjf_api
    with httpx.Client(base_url=base, timeout=120) as http:
        def ask(max_tokens, bench_tokens=None):
            sluice = {"bench_output_tokens": bench_tokens} if bench_tokens else {}
            reply = http.post("/v1/completions", json={"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": max_tokens,
                                                       "sluice": sluice})
            assert reply.status_code == 200, reply.text
            return reply.json()

        started = time.time()
        uncapped, capped = ask(1000), ask(3)
        forced_short, forced_long = ask(1000, bench_tokens=2), ask(1000, bench_tokens=6)
        elapsed = time.time() - started
    predicted = uncapped["sluice"]["predicted_output_tokens"]
    assert predicted > 3
    # Aging 1 token/s: score = arrival + min(predicted, max_tokens); arrivals are within `elapsed` of each other.
    assert uncapped["sluice"]["score"] - capped["sluice"]["score"] == pytest.approx(predicted - 3, abs=elapsed + 1)
    # The forced length is generated, and the scorer never saw it.
    assert (forced_short["usage"]["completion_tokens"], forced_long["usage"]["completion_tokens"]) == (2, 6)
    assert forced_short["sluice"]["predicted_output_tokens"] == forced_long["sluice"]["predicted_output_tokens"]
    assert abs(forced_long["sluice"]["score"] - forced_short["sluice"]["score"]) <= elapsed + 1


def test_the_bench_length_field_is_refused_by_an_api_without_bench_fields(http):
    reply = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4,
                                               "sluice": {"bench_output_tokens": 2}})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "sluice.bench_output_tokens"
