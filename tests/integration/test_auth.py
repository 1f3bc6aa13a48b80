"""API keys, tenant isolation, admin scope and quotas against the real stack (docs/security.md).

The shared stack's API listens on 127.0.0.1 with authentication off (``auto``); these tests start a
second `sluice api --auth required` on the same Redis and worker, and make keys with `sluice keys`.
"""

from __future__ import annotations

import io
import json
import subprocess
import time

import httpx
import openai
import pytest

from core import keys
from core.processes import http_ok, sluice_argv
from tests.conftest import ROOT, free_port, wait_until
from tests.integration.conftest import lane_snapshot

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def body(max_tokens: int = 2, slo: str | None = None, **extra) -> dict:
    out = {"model": "sluice-tiny-llama", "messages": [{"role": "user", "content": "hello there"}],
           "max_tokens": max_tokens, **extra}
    if slo:
        out["sluice"] = {"slo": slo}
    return out


class AuthAPI:
    def __init__(self, stack, port: int):
        self.stack = stack
        self.base_url = f"http://127.0.0.1:{port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(sluice_argv(*args), env=self.stack.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    def new_key(self, tenant: str, *options: str) -> str:
        done = self.cli("keys", "create", "--tenant", tenant, *options)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, timeout=120, headers=headers)


@pytest.fixture(scope="module")
def auth_api(stack):
    port = free_port()
    # fcfs: this API loads no length predictor (the stack's API already spends that memory).
    api = stack.start("api-auth", ["api", "--port", str(port), "--auth", "required"], SLUICE_QUEUE_POLICY="fcfs")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 120, "the API with auth", interval=0.5,
               process=api)
    yield AuthAPI(stack, port)
    api.stop()


def assert_error(response: httpx.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["code"] == code, error
    return error


def test_keys_401_and_revoke(auth_api):
    key = auth_api.new_key("keys-tenant")
    assert key.startswith("sk-sluice-")
    # Only the hash is stored: the key appears nowhere in Redis.
    client = auth_api.stack.redis
    for name in client.scan_iter("sluice:apikey*"):
        stored = client.hgetall(name) if client.type(name) == b"hash" else {}
        assert key.encode() not in b"".join([*stored.keys(), *stored.values()])
    listed = json.loads(auth_api.cli("keys", "list", "--json").stdout)
    mine = [item for item in listed if item["tenant"] == "keys-tenant"]
    assert len(mine) == 1 and key not in json.dumps(listed)

    with auth_api.http() as anonymous:
        missing = anonymous.get("/v1/models")
        assert_error(missing, 401, None)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(anonymous.get("/v1/models", headers={"Authorization": "Basic a2V5"}), 401, "invalid_api_key")
        assert_error(anonymous.get("/v1/models", headers={"Authorization": "Bearer not-a-key"}), 401,
                     "invalid_api_key")
        assert anonymous.get("/healthz").status_code == 200  # health stays open (probes)
        before = lane_snapshot(client)
        assert_error(anonymous.post(CHAT, json=body()), 401, None)
        assert lane_snapshot(client) == before  # nothing enqueued
    with auth_api.http(key) as http:
        assert http.get("/v1/models").status_code == 200
        revoked = auth_api.cli("keys", "revoke", mine[0]["id"])
        assert revoked.returncode == 0, revoked.stderr
        assert_error(http.get("/v1/models"), 401, "invalid_api_key")


def test_openai_client_with_a_key_and_the_tenant_on_the_request(auth_api):
    key = auth_api.new_key("openai-tenant", "--weight", "3")
    client = openai.OpenAI(base_url=auth_api.base_url + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="sluice-tiny-llama", max_tokens=3,
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content is not None
    state = auth_api.stack.redis.hgetall(keys.request_key(answer.id))
    assert state[b"tenant"] == b"openai-tenant" and state[b"status"] == b"done"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auth_api.base_url + "/v1", api_key="sk-sluice-" + "x" * 43,
                      max_retries=0).models.list()


def test_a_lane_the_key_may_not_use_is_403(auth_api):
    key = auth_api.new_key("batch-only", "--lanes", "batch")
    before = lane_snapshot(auth_api.stack.redis)
    with auth_api.http(key) as http:
        assert_error(http.post(CHAT, json=body(slo="interactive")), 403, "lane_not_allowed")
        assert_error(http.post(CHAT, json=body(), headers={"X-Sluice-SLO": "interactive"}), 403, "lane_not_allowed")
    assert lane_snapshot(auth_api.stack.redis) == before
    with auth_api.http(auth_api.new_key("interactive-only", "--lanes", "interactive")) as http:
        upload = http.post("/v1/files", data={"purpose": "batch"},
                           files={"file": ("in.jsonl", io.BytesIO(b"{}\n"), "application/jsonl")})
        assert upload.status_code == 200, upload.text
        refused = http.post("/v1/batches", json={"input_file_id": upload.json()["id"], "endpoint": CHAT,
                                                 "completion_window": "24h"})
        assert_error(refused, 403, "lane_not_allowed")


def test_another_tenants_requests_files_and_batches_are_404(auth_api):
    alice, bob = auth_api.new_key("alice"), auth_api.new_key("bob")
    line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": body()}
    with auth_api.http(alice) as a, auth_api.http(bob) as b:
        queued = a.post(CHAT, json=body(slo="batch"), headers={"Prefer": "respond-async"})
        assert queued.status_code == 202, queued.text
        request_id = queued.json()["id"]
        assert a.get(f"/v1/sluice/requests/{request_id}").status_code == 200
        assert_error(b.get(f"/v1/sluice/requests/{request_id}"), 404, "request_not_found")

        upload = a.post("/v1/files", data={"purpose": "batch"},
                        files={"file": ("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n"), "application/jsonl")})
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]
        assert a.get(f"/v1/files/{file_id}").status_code == 200
        for response in (b.get(f"/v1/files/{file_id}"), b.get(f"/v1/files/{file_id}/content"),
                         b.delete(f"/v1/files/{file_id}")):
            assert_error(response, 404, "file_not_found")
        assert file_id in [f["id"] for f in a.get("/v1/files").json()["data"]]
        assert file_id not in [f["id"] for f in b.get("/v1/files").json()["data"]]
        assert file_id not in [f["id"] for f in b.get("/v1/files", params={"purpose": "batch"}).json()["data"]]

        stolen = b.post("/v1/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
        assert_error(stolen, 404, "file_not_found")
        created = a.post("/v1/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        assert auth_api.stack.redis.hget(keys.batch_key(batch_id), "tenant") == b"alice"
        assert_error(b.get(f"/v1/batches/{batch_id}"), 404, "batch_not_found")
        assert_error(b.post(f"/v1/batches/{batch_id}/cancel"), 404, "batch_not_found")
        assert [x["id"] for x in a.get("/v1/batches").json()["data"]] == [batch_id]
        assert b.get("/v1/batches").json()["data"] == []

        # The batch's requests and its output file are alice's too.
        wait_until(lambda: a.get(f"/v1/batches/{batch_id}").json()["status"] in ("completed", "failed"), 240,
                   "the batch to end", interval=0.5)
        ended = a.get(f"/v1/batches/{batch_id}").json()
        assert ended["status"] == "completed", ended
        assert auth_api.stack.redis.hget(keys.request_key(f"{batch_id}-1"), "tenant") == b"alice"
        output = ended["output_file_id"]
        assert a.get(f"/v1/files/{output}/content").status_code == 200
        assert_error(b.get(f"/v1/files/{output}/content"), 404, "file_not_found")
        assert_error(b.get(f"/v1/sluice/requests/{batch_id}-0"), 404, "request_not_found")


def test_admin_scope(auth_api):
    user, admin = auth_api.new_key("plain"), auth_api.new_key("ops", "--admin")
    admin_paths = [("GET", "/metrics"), ("GET", "/v1/scaler/decisions"), ("GET", "/v1/sluice/keys")]
    with auth_api.http() as anonymous, auth_api.http(user) as u, auth_api.http(admin) as a:
        for method, path in admin_paths:
            assert_error(anonymous.request(method, path), 401, None)
            assert_error(u.request(method, path), 403, "admin_required")
            assert a.request(method, path).status_code == 200, path
        assert_error(u.post("/v1/sluice/keys", json={"tenant": "x"}), 403, "admin_required")
        made = a.post("/v1/sluice/keys", json={"tenant": "made-by-api", "lanes": ["batch"], "rpm": 10})
        assert made.status_code == 200, made.text
        new_key, key_id = made.json()["key"], made.json()["id"]
        assert key_id in [item["id"] for item in a.get("/v1/sluice/keys").json()["data"]]
        assert new_key not in a.get("/v1/sluice/keys").text
        with auth_api.http(new_key) as n:
            assert n.get("/v1/models").status_code == 200
            assert a.delete(f"/v1/sluice/keys/{key_id}").status_code == 200
            assert_error(n.get("/v1/models"), 401, "invalid_api_key")
        assert_error(a.post("/v1/sluice/keys", json={"tenant": "x", "rpm": 0}), 400, "invalid_value")


def test_quotas_answer_429_with_the_time_to_the_next_token(auth_api):
    key = auth_api.new_key("quota", "--rpm", "2", "--lanes", "batch")
    redis_client = auth_api.stack.redis
    with auth_api.http(key) as http:
        started = time.time()
        for _ in range(2):  # the bucket holds a minute's worth: two
            assert http.post(CHAT, json=body(1, slo="batch"), headers={"Prefer": "respond-async"}).status_code == 202
        before = lane_snapshot(redis_client)
        refused = http.post(CHAT, json=body(1, slo="batch"), headers={"Prefer": "respond-async"})
        elapsed = time.time() - started
        assert_error(refused, 429, "rate_limit_exceeded")
        # One request every 30 s, the first taken when the bucket was full: the next token is 30 s after it.
        retry_after = int(refused.headers["retry-after"])
        assert 30 - elapsed - 1 <= retry_after <= 30
        after = lane_snapshot(redis_client)
        assert after["requests"] == before["requests"]  # the refused request left no record

    big = auth_api.new_key("tokens", "--tpm", "40")
    with auth_api.http(big) as http:
        assert_error(http.post(CHAT, json=body(100)), 429, "request_too_large_for_quota")
        assert http.post(CHAT, json=body(1, slo="batch"), headers={"Prefer": "respond-async"}).status_code == 202
