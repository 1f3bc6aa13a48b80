"""The SDK and the `sluice batch` CLI against the real stack: batches through the Batch API (submit prompts
or a .jsonl file, wait, results in both orders, cancel, refusals), and the older per-request async path."""

from __future__ import annotations

import json
import os
import subprocess
import types
from pathlib import Path

import pytest

from core.processes import sluice_argv
from sluice.sdk import BatchFailed, SluiceClient, SluiceError
from tests.conftest import wait_until
from tests.integration.conftest import lane_snapshot, wait_for_idle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(stack):
    with SluiceClient(stack.base_url) as client:
        yield client


def chat_line(custom_id: str, model: str, *, max_tokens: int = 4, url: str = "/v1/chat/completions") -> dict:
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True}
    text = f"Say something about {custom_id}."
    body.update({"messages": [{"role": "user", "content": text}]} if url.endswith("chat/completions")
                else {"prompt": text})
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def batch_files(client: SluiceClient) -> int:
    return len(client.http.get("/v1/files", params={"purpose": "batch"}).json()["data"])


def test_submit_prompts_wait_and_read_results_in_both_orders(client):
    prompts = [f"batch prompt {i}" for i in range(12)]
    job = client.batches.submit(prompts, deadline=3600, max_tokens=5, ignore_eos=True, metadata={"job": "sdk"})
    assert job.id.startswith("batch_")
    batch = job.wait(poll_s=0.25, timeout_s=300, progress=False)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert batch["completion_window"] == "1h" and batch["expires_at"] - batch["created_at"] == 3600
    assert batch["metadata"] == {"job": "sdk"} and batch["endpoint"] == "/v1/chat/completions"
    assert batch["sluice"]["done"] == 12 and job.status() == batch

    streamed = job.results()
    assert isinstance(streamed, types.GeneratorType)  # read as it is iterated
    lines = list(streamed)
    assert [line["custom_id"] for line in lines] == [str(i) for i in range(12)]  # the file's order
    for line in lines:
        body = line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert body["model"] == client.model and body["usage"]["completion_tokens"] == 5
        assert body["choices"][0]["message"]["role"] == "assistant"
    assert list(job.results(order="custom_id")) == lines
    assert client.batches.get(job.id).status()["id"] == job.id
    page = client.batches.list(limit=100)
    assert page["object"] == "list" and job.id in [b["id"] for b in page["data"]]


def test_submit_a_jsonl_file_takes_its_endpoint_and_orders_results_by_custom_id(client, tmp_path):
    ids = ["7", "10", "b", "2", "a", "0"]
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(i, client.model, url="/v1/completions") for i in ids])
    job = client.batches.submit(path, deadline="30m")
    batch = job.wait(poll_s=0.25, timeout_s=300, progress=False)
    assert (batch["status"], batch["endpoint"], batch["completion_window"]) == \
        ("completed", "/v1/completions", "30m")
    assert [line["custom_id"] for line in job.results()] == ids
    ordered = list(job.results(order="custom_id"))
    assert [line["custom_id"] for line in ordered] == ["0", "2", "7", "10", "a", "b"]
    assert all(line["response"]["body"]["object"] == "text_completion" for line in ordered)
    with pytest.raises(TypeError):
        client.batches.submit(path, max_tokens=8)  # a file's lines carry their own bodies


def test_cancel_ends_the_batch_with_every_request_answered_once(client, stack):
    wait_for_idle(stack)
    stack.set_admission_limit("main@test", 2)
    try:
        job = client.batches.submit([f"long {i}" for i in range(40)], deadline="1h", max_tokens=400,
                                    ignore_eos=True)
        wait_until(lambda: job.status()["sluice"]["running"] >= 1, 120, "requests running", interval=0.25)
        cancelled = job.cancel()
        assert cancelled["status"] in ("cancelling", "cancelled") and cancelled["cancelling_at"]
        batch = job.wait(poll_s=0.25, timeout_s=60, progress=False)
    finally:
        stack.set_admission_limit("main@test", 32)
    assert batch["status"] == "cancelled"
    lines = list(job.results(order="custom_id"))
    assert [line["custom_id"] for line in lines] == [str(i) for i in range(40)]  # each exactly once
    errors = [line for line in lines if line["error"] is not None]
    assert errors and {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert batch["request_counts"]["completed"] == len(lines) - len(errors) < 40
    assert job.cancel()["status"] == "cancelled"  # cancelling again is a no-op, not an error
    wait_for_idle(stack, timeout=60)


def test_a_bad_line_fails_the_batch_and_wait_names_it(client, stack, tmp_path):
    wait_for_idle(stack)
    before = lane_snapshot(stack.redis)
    lines = [chat_line("a", client.model), {"method": "POST", "url": "/v1/chat/completions", "body": {}},
             chat_line("c", client.model, max_tokens=10**6)]
    job = client.batches.submit(write_jsonl(tmp_path / "bad.jsonl", lines), deadline=600)
    with pytest.raises(BatchFailed) as failed:
        job.wait(poll_s=0.25, timeout_s=60, progress=False)
    message = str(failed.value)
    assert "line 2: missing_required_parameter" in message and "line 3: max_tokens_out_of_range" in message
    assert failed.value.batch["status"] == "failed" and failed.value.batch["output_file_id"] is None
    assert list(job.results()) == []
    assert lane_snapshot(stack.redis) == before  # nothing was enqueued


def test_refusals_raise_with_the_apis_message_and_leave_no_file(client):
    files_before = batch_files(client)
    with pytest.raises(SluiceError) as window:
        client.batches.submit(["a"], deadline="25h")
    assert window.value.status == 400 and "completion_window" in str(window.value)
    assert batch_files(client) == files_before  # the uploaded input was deleted again
    with pytest.raises(ValueError):
        client.batches.submit(["a"], deadline=90_000)  # over 24h: refused before anything is sent
    with pytest.raises(SluiceError) as missing:
        client.batches.get("batch_nope")
    assert missing.value.status == 404 and "batch_nope" in str(missing.value)
    with pytest.raises(SluiceError) as cursor:
        client.batches.list(after="batch_nope")
    assert cursor.value.status == 400


# --- the CLI, run as `sluice` runs -------------------------------------------------------------------
def sluice_batch(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    result = subprocess.run(sluice_argv("batch", *args, "--url", stack.base_url), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_the_cli_submits_waits_shows_lists_and_writes_results(stack, client, tmp_path):
    ids = ["3", "1", "2"]
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(i, client.model) for i in ids])
    submitted = json.loads(sluice_batch(stack, "submit", str(path), "--window", "2h", "--wait", "--json",
                                        "--poll", "0.25", "--metadata", "by=cli").stdout)
    assert (submitted["status"], submitted["completion_window"], submitted["metadata"]) == \
        ("completed", "2h", {"by": "cli"})
    batch_id = submitted["id"]

    shown = sluice_batch(stack, "status", batch_id).stdout
    assert shown.splitlines()[0] == f"{batch_id}  completed"
    assert "3 total, 3 completed, 0 failed" in shown and submitted["output_file_id"] in shown
    assert json.loads(sluice_batch(stack, "status", batch_id, "--json").stdout)["id"] == batch_id

    out = tmp_path / "out.jsonl"
    wrote = sluice_batch(stack, "results", batch_id, "-o", str(out), "--order", "custom_id")
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["1", "2", "3"]
    assert "3 lines written" in wrote.stderr
    printed = sluice_batch(stack, "results", batch_id).stdout.splitlines()
    assert [json.loads(line)["custom_id"] for line in printed] == ids

    listed = sluice_batch(stack, "list", "--limit", "100").stdout
    assert any(line.startswith(f"{batch_id}  completed") and "3/3" in line for line in listed.splitlines())
    assert batch_id in [b["id"] for b in json.loads(sluice_batch(stack, "list", "--json").stdout)["data"]]


def test_the_cli_cancels_and_reports_refusals_in_one_line(stack, client, tmp_path):
    wait_for_idle(stack)
    stack.set_admission_limit("main@test", 1)
    try:
        path = write_jsonl(tmp_path / "long.jsonl", [chat_line(f"l{i}", client.model, max_tokens=400)
                                                     for i in range(20)])
        batch_id = json.loads(sluice_batch(stack, "submit", str(path), "--json").stdout)["id"]
        shown = sluice_batch(stack, "cancel", batch_id).stdout
        assert shown.splitlines()[0] in (f"{batch_id}  cancelling", f"{batch_id}  cancelled")
        wait_until(lambda: client.batches.get(batch_id).status()["status"] == "cancelled", 60, "the cancel")
    finally:
        stack.set_admission_limit("main@test", 32)

    completed = client.batches.submit(["one"], deadline=600, max_tokens=2)
    completed.wait(poll_s=0.25, timeout_s=120, progress=False)
    for args, expected in ((("status", "batch_nope"), "Error: 404: No batch found with id 'batch_nope'."),
                           (("cancel", completed.id), "Error: 409: the batch is completed"),
                           (("submit", str(path), "--window", "25h"), "Error: 400: completion_window '25h'")):
        refused = sluice_batch(stack, *args, check=False)
        assert refused.returncode == 1 and refused.stdout == ""
        assert len(refused.stderr.splitlines()) == 1 and refused.stderr.startswith(expected), refused.stderr

    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line("x", client.model), chat_line("x", client.model)])
    failed = sluice_batch(stack, "submit", str(bad), "--wait", "--poll", "0.25", check=False)
    assert failed.returncode == 1 and "line 2: duplicate_custom_id" in failed.stderr.splitlines()[-1]
    wait_for_idle(stack, timeout=60)


# --- the per-request path ------------------------------------------------------------------------------
def test_submit_batch_and_wait_for_answers(stack):
    client = SluiceClient(stack.base_url)
    job = client.submit_batch([f"batch prompt {i}" for i in range(6)], max_tokens=8, deadline_s=600,
                              ignore_eos=True, progress=False)
    results = job.wait(poll_s=0.5, timeout_s=300, progress=False)
    assert len(results) == 6
    assert all(r["output_tokens"] == 8 and r["text"] and r["slo"] == "batch" for r in results)
    assert client.request(job.request_ids[0])["status"] == "done"


def test_refused_batch_raises_and_enqueues_nothing(stack):
    wait_for_idle(stack)
    before = lane_snapshot(stack.redis)
    client = SluiceClient(stack.base_url)
    with pytest.raises(SluiceError) as error:
        client.submit_batch(["a", "b"], max_tokens=8, deadline_s=1_600_000_000, progress=False)
    assert error.value.status == 400 and "deadline" in str(error.value)
    assert lane_snapshot(stack.redis) == before
    with pytest.raises(SluiceError) as missing:
        client.request("cmpl-does-not-exist")
    assert missing.value.status == 404
