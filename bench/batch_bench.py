"""``sluice bench batch``: a 50,000-line Batch API job through the real API and Redis.

What it measures, in one run (``--json OUT`` keeps it all):

1. **Enqueue**: a JSONL file of ``--lines`` chat requests (AlpacaEval prompts, cycled) is uploaded through
   ``POST /v1/files`` and a batch created; the clock runs from the upload's start until every request is
   in the batch lane (the batch's ``sluice.enqueued``).  No worker runs yet, so nothing drains the lane.
2. **Redis memory per queued request**: ``used_memory`` after the enqueue minus before the upload, over
   the lines (lane message + request state + its share of the deadline and batch counters).
3. **Status latency**: ``GET /v1/batches/{id}`` polled from a second thread the whole time, reported
   during the enqueue, while a vLLM worker starts (its engine loads on the same cores), and while it then
   runs the batch for ``--run-s`` seconds; the target applies to the enqueue and the running.
4. **Cancel**: the batch is cancelled; time until none of its requests is left in the lane, and until it
   is ``cancelled`` with its output and error files written.

The API runs as it ships (SSJF: the batch's length is predicted from a sample of its lines).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import click
import httpx
import numpy as np

from bench.processes import BenchCluster
from core import keys

PROMPTS = Path(__file__).resolve().parents[1] / "predictor" / "data" / "alpaca_eval" / "prompts.jsonl"
TARGETS = {"upload_to_enqueued_s": 30.0, "redis_bytes_per_queued_request": 2048, "status_p99_ms": 20.0}


def batch_file(lines: int, model: str, max_tokens: int) -> bytes:
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    out = io.StringIO()
    for index in range(lines):
        out.write(json.dumps({"custom_id": f"line-{index}", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": model, "max_tokens": max_tokens,
                                       "messages": [{"role": "user", "content": prompts[index % len(prompts)]}]}}))
        out.write("\n")
    return out.getvalue().encode()


class StatusPoller(threading.Thread):
    """Polls the batch object at ``rate_hz``, recording each answer's latency under the current phase."""

    def __init__(self, base_url: str, batch_id: str, rate_hz: float = 20.0):
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.path = f"/v1/batches/{batch_id}"
        self.interval = 1.0 / rate_hz
        self.phase = "enqueue"
        self.latencies: dict[str, list[float]] = {}
        self.last: dict = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.perf_counter()
            response = self.http.get(self.path)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            self.last = response.json()
            self.latencies.setdefault(self.phase, []).append(elapsed)
            self._halt.wait(max(0.0, self.interval - elapsed))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        self.http.close()

    def summary(self) -> dict:
        return {phase: {"n": len(values), "p50_ms": round(1000 * float(np.percentile(values, 50)), 2),
                        "p99_ms": round(1000 * float(np.percentile(values, 99)), 2),
                        "max_ms": round(1000 * max(values), 2)}
                for phase, values in self.latencies.items() if values}


def memory_breakdown(client, batch_id: str, lines: int, sample: int = 200) -> dict:
    """Where a queued request's bytes are (Redis ``MEMORY USAGE``): its lane message (the lane's size over
    its members) and its state hash (a sample's mean), and the mean message length in bytes."""
    lane = keys.lane_key("batch")
    members = client.zcard(lane)
    lane_bytes = client.memory_usage(lane, samples=0) / max(members, 1)
    step = max(1, lines // sample)
    states = [client.memory_usage(keys.request_key(f"{batch_id}-{line}")) or 0 for line in range(1, lines + 1, step)]
    messages = client.zrange(lane, 0, sample - 1)
    return {"lane_message": round(lane_bytes), "request_state": round(sum(states) / len(states)),
            "total": round(lane_bytes + sum(states) / len(states)),
            "message_length_mean": round(sum(map(len, messages)) / max(len(messages), 1))}


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def run_batch_bench(*, lines: int = 50_000, max_tokens: int = 16, run_s: float = 60.0, redis_url: str | None = None,
                    json_out: str | None = None, progress: bool = True) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cluster = BenchCluster(redis_url)
    report: dict = {"config": {"lines": lines, "max_tokens": max_tokens, "run_s": run_s}}
    poller = None
    try:
        _api, base_url = cluster.start_api("api")
        http = httpx.Client(base_url=base_url, timeout=300)
        model = http.get("/v1/models").json()["data"][0]["id"]
        content = batch_file(lines, model, max_tokens)
        report["config"]["file_bytes"] = len(content)
        memory_before = cluster.redis.info("memory")["used_memory"]

        upload_started = time.perf_counter()
        uploaded = http.post("/v1/files", data={"purpose": "batch"},
                             files={"file": ("bench.jsonl", content, "application/jsonl")})
        uploaded.raise_for_status()
        uploaded_at = time.perf_counter()
        created = http.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                                 "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        created.raise_for_status()
        batch_id = created.json()["id"]
        poller = StatusPoller(base_url, batch_id)
        poller.start()

        def enqueued():
            batch = poller.last
            if batch.get("status") == "failed":
                raise RuntimeError(f"the batch failed: {batch.get('errors')}")
            if progress and batch:
                click.echo(f"\r {batch['status']:<12} queued {batch['sluice']['queued']:>6} of {lines}  ",
                           nl=False, err=True)
            return batch.get("sluice", {}).get("enqueued")

        wait(enqueued, 600, "the batch's requests to be enqueued")
        enqueued_at = time.perf_counter()
        memory_after = cluster.redis.info("memory")["used_memory"]
        queued = cluster.redis.zcard(keys.lane_key("batch"))
        breakdown = memory_breakdown(cluster.redis, batch_id, lines)
        report["enqueue"] = {
            "upload_s": round(uploaded_at - upload_started, 2),
            "create_to_enqueued_s": round(enqueued_at - uploaded_at, 2),
            "upload_to_enqueued_s": round(enqueued_at - upload_started, 2),
            "requests_per_s": round(lines / (enqueued_at - uploaded_at), 1),
            "queued": queued,
            # used_memory's growth over the queued requests: everything the enqueue added (and allocator slack).
            "redis_bytes_per_queued_request": round((memory_after - memory_before) / max(queued, 1)),
            "memory_usage_per_request": breakdown,
        }

        # A vLLM worker's start loads the engine on the same cores as the API: kept apart from steady running.
        poller.phase = "worker_start"
        cluster.start_worker("bench@batch")
        poller.phase = "running"
        time.sleep(run_s)
        done_before_cancel = poller.last["sluice"]["done"]

        poller.phase = "cancel"
        cancel_started = time.perf_counter()
        http.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()

        def lane_empty():
            return not any(json.loads(m)["headers"]["id"].startswith(batch_id + "-")
                           for m in cluster.redis.zrange(keys.lane_key("batch"), 0, 200))

        wait(lambda: cluster.redis.zcard(keys.lane_key("batch")) == 0 or lane_empty(), 120, "the lane to empty")
        lane_emptied = time.perf_counter()
        wait(lambda: poller.last.get("status") == "cancelled", 300, "the batch to be cancelled", interval=0.2)
        cancelled = time.perf_counter()
        poller.stop()
        final = http.get(f"/v1/batches/{batch_id}").json()
        report["run"] = {"requests_done": done_before_cancel, "run_s": run_s}
        report["cancel"] = {"lane_emptied_s": round(lane_emptied - cancel_started, 2),
                            "cancelled_s": round(cancelled - cancel_started, 2),
                            "request_counts": final["request_counts"],
                            "output_file_id": final["output_file_id"], "error_file_id": final["error_file_id"]}
        report["status_latency"] = poller.summary()
        p99 = max(phase["p99_ms"] for name, phase in report["status_latency"].items()
                  if name in ("enqueue", "running"))
        report["targets"] = {
            "upload_to_enqueued_s": {"target": TARGETS["upload_to_enqueued_s"],
                                     "met": report["enqueue"]["upload_to_enqueued_s"] <= TARGETS["upload_to_enqueued_s"]},
            "redis_bytes_per_queued_request": {
                "target": TARGETS["redis_bytes_per_queued_request"],
                "measured": breakdown["total"],
                "met": breakdown["total"] <= TARGETS["redis_bytes_per_queued_request"]},
            "status_p99_ms": {"target": TARGETS["status_p99_ms"], "measured": p99, "met": p99 <= TARGETS["status_p99_ms"]},
        }
    finally:
        try:
            if poller is not None and poller.is_alive():
                poller.stop()
        finally:
            cluster.stop()
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report


@click.command("batch")
@click.option("--lines", type=int, default=50_000, show_default=True, help="Requests in the batch.")
@click.option("--max-tokens", type=int, default=16, show_default=True)
@click.option("--run-s", type=float, default=60.0, show_default=True,
              help="Seconds a worker runs the batch (status latency under load) before it is cancelled.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
def batch_command(lines, max_tokens, run_s, json_out, redis_url):
    """Upload, enqueue, run and cancel one large Batch API job; time and size each step."""
    report = run_batch_bench(lines=lines, max_tokens=max_tokens, run_s=run_s, redis_url=redis_url, json_out=json_out)
    enqueue, cancel = report["enqueue"], report["cancel"]
    click.echo(f"\n{lines} lines: upload {enqueue['upload_s']} s, upload->all enqueued {enqueue['upload_to_enqueued_s']} s "
               f"({enqueue['requests_per_s']} requests/s after the upload), "
               f"{enqueue['memory_usage_per_request']['total']} B of Redis per queued request (MEMORY USAGE: "
               f"{enqueue['memory_usage_per_request']}; used_memory grew {enqueue['redis_bytes_per_queued_request']} "
               f"B per request)")
    for phase, latency in report["status_latency"].items():
        click.echo(f"GET /v1/batches/{{id}} while {phase}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms "
                   f"({latency['n']} polls)")
    click.echo(f"cancel: lane emptied in {cancel['lane_emptied_s']} s, batch cancelled in {cancel['cancelled_s']} s "
               f"({report['run']['requests_done']} requests done before it)")
    for name, target in report["targets"].items():
        click.echo(f"target {name} <= {target['target']}: {'met' if target['met'] else 'NOT met'}")
