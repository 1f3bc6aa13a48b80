"""The OpenAI Files API against a real `sluice api` process and Redis (no worker: files need none).

The official `openai` client, with only `base_url` changed, uploads, retrieves, lists, downloads and
deletes; every refusal is an OpenAI-shaped error and leaves no record, no index entry and no file.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis

from core import keys
from core.processes import http_ok
from tests.conftest import Process, free_port, wait_until

pytestmark = pytest.mark.integration

MAX_BYTES = 4 * 1024 * 1024
MAX_LINES = 1000


class FilesAPI:
    def __init__(self, base_url: str, redis_url: str, files_dir: Path):
        self.base_url = base_url
        self.redis = redis.Redis.from_url(redis_url)
        self.files_dir = files_dir

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120)

    def stored(self) -> dict:
        """Everything an upload could leave behind."""
        on_disk = sorted(path.name for path in self.files_dir.iterdir()) if self.files_dir.exists() else []
        return {"records": sorted(self.redis.scan_iter(keys.file_key("*"), count=1000)),
                "index": self.redis.zcard(keys.FILES), "on_disk": on_disk}


@pytest.fixture(scope="module")
def files_api(machine_redis_url, model_dir, log_dir, tmp_path_factory):
    redis.Redis.from_url(machine_redis_url).flushdb()
    data_dir = tmp_path_factory.mktemp("files-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # fcfs: no length predictor to load; the Files API does not touch the queue.
    env.update(SLUICE_REDIS_URL=machine_redis_url, SLUICE_MODEL=str(model_dir), SLUICE_DATA_DIR=str(data_dir),
               SLUICE_QUEUE_POLICY="fcfs", SLUICE_BATCH_FILE_MAX_BYTES=str(MAX_BYTES),
               SLUICE_BATCH_FILE_MAX_LINES=str(MAX_LINES))
    api = Process("api-files", ["api", "--port", str(port)], env, log_dir)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 120, "the files API", interval=0.5,
                   process=api)
        yield FilesAPI(f"http://127.0.0.1:{port}", machine_redis_url, data_dir / "files")
    finally:
        api.stop()


def jsonl(lines: int, line_bytes: int) -> bytes:
    """`lines` lines of exactly `line_bytes` bytes, newline included."""
    out = []
    for index in range(lines):
        head = f'{{"custom_id": "r{index}", "method": "POST", "url": "/v1/completions", "body": {{"prompt": "'
        tail = '"}}\n'
        out.append(head + "x" * (line_bytes - len(head) - len(tail)) + tail)
    return "".join(out).encode()


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None, code: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert (body["error"]["param"], body["error"]["code"]) == (param, code), body
    return body["error"]


def test_openai_client_uploads_reads_lists_and_deletes(files_api, tmp_path):
    data = jsonl(900, 3500)  # 3.2 MB: many chunks through the multipart reader and the store
    path = tmp_path / "requests.jsonl"
    path.write_bytes(data)
    client = files_api.client()

    before = time.time()
    with path.open("rb") as upload:
        created = client.files.create(file=upload, purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose, created.status) == (len(data), "requests.jsonl",
                                                                                  "batch", "processed")
    assert int(before) <= created.created_at <= time.time()
    assert (files_api.files_dir / created.id).read_bytes() == data  # streamed to the data directory
    assert files_api.redis.hget(keys.file_key(created.id), "lines") == b"900"

    assert client.files.retrieve(created.id) == created
    assert created.id in [f.id for f in client.files.list()]
    assert created.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.list(purpose="batch_output").data == []
    assert client.files.content(created.id).read() == data

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        assert_openai_error(caught.value.response, 404, param="file_id", code="file_not_found")
    assert not files_api.redis.exists(keys.file_key(created.id))
    assert files_api.redis.zscore(keys.FILES, created.id) is None
    assert not (files_api.files_dir / created.id).exists()


def test_listing_pages_in_creation_order(files_api):
    client = files_api.client()
    ids = [client.files.create(file=(f"part{n}.jsonl", jsonl(2, 100)), purpose="batch").id for n in range(3)]

    everything = [f.id for f in client.files.list(order="asc")]
    assert [file_id for file_id in everything if file_id in ids] == ids
    assert [f.id for f in client.files.list(order="asc", limit=1)] == everything  # the client follows `after`
    assert [f.id for f in client.files.list(order="desc")] == everything[::-1]

    with files_api.http() as http:
        page = http.get("/v1/files", params={"order": "asc", "limit": 2, "after": ids[0]}).json()
        assert page["object"] == "list" and page["has_more"] == (everything[-1] != ids[2])
        assert [f["id"] for f in page["data"]][:2] == ids[1:]
        assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][-1]["id"])
        last = http.get("/v1/files", params={"order": "asc", "after": everything[-1]}).json()
        assert last == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        assert_openai_error(http.get("/v1/files", params={"after": "file-gone"}), 400, param="after",
                            code="invalid_value")
        for bad in ({"limit": 0}, {"limit": 10_001}, {"limit": "ten"}):
            assert_openai_error(http.get("/v1/files", params=bad), 400, param="limit", code="invalid_value")
        assert_openai_error(http.get("/v1/files", params={"order": "up"}), 400, param="order", code="invalid_value")
    for file_id in ids:
        client.files.delete(file_id)


def test_purpose_may_follow_the_file(files_api):
    """curl -F puts fields in the order given: a purpose after the file is read after the file is stored."""
    with files_api.http() as http:
        reply = http.post("/v1/files", files=[("file", ("late.jsonl", b'{"a": 1}\n')), ("purpose", (None, "batch"))])
        assert reply.status_code == 200, reply.text
        assert reply.json()["purpose"] == "batch"
        before = files_api.stored()
        refused = http.post("/v1/files", files=[("file", ("late.jsonl", b'{"a": 1}\n')),
                                                ("purpose", (None, "fine-tune"))])
        assert_openai_error(refused, 400, param="purpose", code="invalid_value")
        assert files_api.stored() == before  # the staged content was removed
        assert http.delete(f"/v1/files/{reply.json()['id']}").json()["deleted"] is True


def upload_with_client(files_api, tmp_path, content: bytes, purpose: str) -> httpx.Response:
    path = tmp_path / "upload.jsonl"
    path.write_bytes(content)
    with path.open("rb") as upload, pytest.raises(openai.APIStatusError) as caught:
        files_api.client().files.create(file=upload, purpose=purpose)
    return caught.value.response


REFUSALS = [
    # name, content, purpose, status, param, code
    ("bad purpose", jsonl(2, 100), "fine-tune", 400, "purpose", "invalid_value"),
    ("batch_output is Sluice's to write", jsonl(2, 100), "batch_output", 400, "purpose", "invalid_value"),
    ("one line over the line limit", jsonl(MAX_LINES + 1, 50), "batch", 400, "file", "too_many_lines"),
    ("a last line without newline over the limit", jsonl(MAX_LINES, 50) + b"{}", "batch", 400, "file",
     "too_many_lines"),
    ("over the size limit, refused while streaming", jsonl(500, 9000), "batch", 413, "file", "file_too_large"),
    ("over the size limit by its Content-Length", jsonl(700, 9000), "batch", 413, "file", "file_too_large"),
]


@pytest.mark.parametrize("name,content,purpose,status,param,code", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_uploads_leave_nothing(files_api, tmp_path, name, content, purpose, status, param, code):
    before = files_api.stored()
    response = upload_with_client(files_api, tmp_path, content, purpose)
    assert_openai_error(response, status, param=param, code=code)
    assert files_api.stored() == before


MALFORMED = [
    ("no file field", {"files": [("purpose", (None, "batch"))]}, "file", "missing_required_parameter"),
    ("no purpose field", {"files": [("file", ("a.jsonl", b"{}\n"))]}, "purpose", "missing_required_parameter"),
    ("file as a text field", {"files": [("file", (None, "{}")), ("purpose", (None, "batch"))]}, "file",
     "invalid_value"),
    ("file under another name", {"files": [("upload", ("a.jsonl", b"{}\n")), ("purpose", (None, "batch"))]}, "file",
     "invalid_value"),
    ("two files", {"files": [("purpose", (None, "batch")), ("file", ("a.jsonl", b"{}\n")),
                             ("file", ("b.jsonl", b"{}\n"))]}, "file", "invalid_value"),
    ("not multipart", {"json": {"file": "x", "purpose": "batch"}}, None, "invalid_multipart"),
    ("truncated body", {"content": b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch",
                        "headers": {"content-type": "multipart/form-data; boundary=b"}}, None, "invalid_multipart"),
]


@pytest.mark.parametrize("name,request_kwargs,param,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_uploads_get_openai_errors_and_leave_nothing(files_api, name, request_kwargs, param, code):
    before = files_api.stored()
    with files_api.http() as http:
        assert_openai_error(http.post("/v1/files", **request_kwargs), 400, param=param, code=code)
    assert files_api.stored() == before


def test_a_client_that_disconnects_mid_upload_leaves_nothing(files_api):
    before = files_api.stored()
    host, port = files_api.base_url.removeprefix("http://").split(":")
    head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.jsonl\"\r\n\r\n")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 3000000\r\n\r\n" + head + jsonl(200, 1000))
        # Until the store has begun writing it, then hang up mid-body.
        wait_until(lambda: files_api.stored()["on_disk"] != before["on_disk"], 30, "the partial file")
    wait_until(lambda: files_api.stored() == before, 30, "the partial file to be removed")


def test_unknown_ids_are_404(files_api):
    with files_api.http() as http:
        for method, path in (("GET", "/v1/files/file-nope"), ("GET", "/v1/files/file-nope/content"),
                             ("DELETE", "/v1/files/file-nope"), ("GET", "/v1/files/%2E%2E/content")):
            assert_openai_error(http.request(method, path), 404, param="file_id", code="file_not_found")
