"""`sluice bench fuzz`: property-based fuzzing of the API's OpenAPI schema with schemathesis, on a real stack.

schemathesis reads ``/openapi.json`` and generates requests for every operation, both fitting the schema
(positive) and not (negative).  Each response is checked:

* no 5xx: an internal error on any input is a bug;
* a rejected request (4xx) enqueued nothing: the lanes' arrival counters (``sluice:arrivals``, written by
  the ledger's enqueue and nothing else) did not move, while every accepted completion moved them by one;
* a response that is not 2xx is an OpenAI-style error object (for the JSON API's routes).

Valid generation requests are made cheap: the fuzzed copy of the schema caps ``max_tokens`` and
``max_completion_tokens`` at ``FUZZ_MAX_TOKENS`` (the API itself is not changed), and the stack runs
with ``SLUICE_DEFAULT_MAX_TOKENS`` as small.  Out-of-range values still come from negative generation.
The short run in the test suite (tests/integration/test_fuzz.py) and this long one share ``run_fuzz``.
"""

from __future__ import annotations

import collections
import copy
import json
import time
from dataclasses import dataclass, field

import click
import httpx
import redis
import requests

from core import keys

FUZZ_MAX_TOKENS = 4
# Routes whose answers are not JSON (Prometheus text; file content) and so carry no error object check.
NON_JSON_PATHS = ("/metrics", "/v1/files/{file_id}/content")
REQUEST_TIMEOUT_S = 60.0


@dataclass
class FuzzReport:
    requests: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_operation: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    accepted_completions: int = 0
    failures: list[dict] = field(default_factory=list)  # the first few of each kind, with a curl command
    failure_counts: collections.Counter = field(default_factory=collections.Counter)
    unsatisfiable: list[str] = field(default_factory=list)  # operation (mode) with no case to generate

    def to_dict(self) -> dict:
        return {"requests": self.requests, "by_status": dict(sorted(self.by_status.items())),
                "by_operation": {name: dict(sorted(counts.items())) for name, counts in sorted(self.by_operation.items())},
                "accepted_completions": self.accepted_completions,
                "failure_counts": dict(self.failure_counts), "failures": self.failures,
                "unsatisfiable": self.unsatisfiable}

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.by_status.items() if status >= 500)


def cheap_schema(schema: dict, model: str, max_tokens: int = FUZZ_MAX_TOKENS) -> dict:
    """A copy of the OpenAPI document whose generation bodies name the served ``model`` (any other is a 404)
    and ask for at most ``max_tokens`` tokens (pure)."""
    schema = copy.deepcopy(schema)
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"type": "string", "enum": [model]}
        for name in ("max_tokens", "max_completion_tokens"):
            body["properties"][name] = {"type": "integer", "minimum": 1, "maximum": max_tokens}
        body["required"] = sorted(set(body.get("required", [])) | {"max_tokens"})  # not the server's default
    return schema


def arrivals(client: redis.Redis) -> int:
    """Requests the ledger has enqueued, all lanes together."""
    counters = client.hgetall(keys.ARRIVALS)
    return sum(int(float(value)) for name, value in counters.items() if name.startswith(b"requests:"))


def _text(response) -> str:
    return response.content.decode("utf-8", errors="replace")


def is_error_object(response) -> bool:
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def run_fuzz(base_url: str, redis_url: str, examples: int, *, seed: int | None = None,
             max_failures_kept: int = 5, progress=None) -> FuzzReport:
    """Fuzz every operation, ``examples`` generated cases per operation and generation mode."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    model = httpx.get(base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
    document = cheap_schema(httpx.get(base_url + "/openapi.json", timeout=30).json(), model)
    schema = schemathesis.openapi.from_dict(document)
    client = redis.Redis.from_url(redis_url)
    report = FuzzReport()
    session = requests.Session()
    generation_paths = ("/v1/chat/completions", "/v1/completions")

    def fail(kind: str, case, response, detail: str) -> None:
        report.failure_counts[kind] += 1
        if sum(1 for f in report.failures if f["kind"] == kind) < max_failures_kept:
            report.failures.append({"kind": kind, "operation": case.operation.label, "status": response.status_code,
                                    "detail": detail[:500], "body": _text(response)[:500],
                                    "curl": case.as_curl_command()[:2000]})

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is not None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                      print_blob=False)
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case):
                before = arrivals(client)
                try:
                    response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
                except requests.RequestException as exc:  # a dropped connection is a finding too
                    report.failure_counts["transport_error"] += 1
                    report.failures.append({"kind": "transport_error", "operation": case.operation.label,
                                            "detail": repr(exc)[:500], "curl": case.as_curl_command()[:2000]})
                    return
                status = response.status_code
                report.requests += 1
                report.by_status[status] += 1
                report.by_operation[operation.label][status] += 1
                moved = arrivals(client) - before
                if status >= 500:
                    fail("server_error", case, response, f"{status}")
                elif status >= 400:
                    if moved:
                        fail("rejected_but_enqueued", case, response, f"arrivals moved by {moved}")
                    if operation.path not in NON_JSON_PATHS and not is_error_object(response):
                        fail("not_an_error_object", case, response, "a 4xx without an OpenAI-style error object")
                elif operation.path in generation_paths and operation.method.upper() == "POST":
                    report.accepted_completions += 1
                    if moved != 1:
                        fail("accepted_enqueue_count", case, response, f"arrivals moved by {moved}, not 1")
                if progress is not None:
                    progress(report)

            try:
                one()
            except Unsatisfiable:  # e.g. no invalid request exists for an operation without parameters
                report.unsatisfiable.append(f"{operation.label} ({mode.value})")
    session.close()
    return report


@click.command("fuzz")
@click.option("--examples", type=int, default=200, show_default=True,
              help="Generated cases per operation and per generation mode (positive, negative).")
@click.option("--seed", type=int, default=None, help="Derandomize generation (the same cases each run).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
@click.option("--base-url", default=None,
              help="Fuzz a running API instead of starting a stack (--redis-url must be its Redis).")
def fuzz_command(examples, seed, json_out, redis_url, base_url):
    """Fuzz the OpenAPI schema (schemathesis) against a real stack: counts by status, zero 5xx expected."""
    from bench.processes import BenchCluster

    cluster = None
    started = time.time()
    try:
        if base_url is None:
            cluster = BenchCluster(redis_url, extra_env={
                "SLUICE_DEFAULT_MAX_TOKENS": str(FUZZ_MAX_TOKENS), "SLUICE_QUEUE_POLICY": "fcfs",
                "SLUICE_REQUEST_TIMEOUT_S": "60", "SLUICE_BODY_READ_TIMEOUT_S": "10"})
            cluster.start_worker("fuzz@bench")
            _, base_url = cluster.start_api()
            redis_url = cluster.redis_url
        elif redis_url is None:
            raise click.UsageError("--base-url needs --redis-url (the API's Redis), to check nothing was enqueued")
        last = [0.0]

        def progress(report: FuzzReport) -> None:
            if time.time() - last[0] > 10:
                last[0] = time.time()
                click.echo(f"  {report.requests} requests, by status {dict(sorted(report.by_status.items()))}",
                           err=True)

        report = run_fuzz(base_url, redis_url, examples, seed=seed, progress=progress)
    finally:
        if cluster is not None:
            cluster.stop()
    result = report.to_dict()
    result["seconds"] = round(time.time() - started, 1)
    click.echo(json.dumps({k: result[k] for k in ("requests", "by_status", "accepted_completions",
                                                   "failure_counts", "seconds")}, indent=1))
    for failure in report.failures:
        click.echo(f"\n[{failure['kind']}] {failure['operation']} -> {failure.get('status')}: {failure['detail']}\n"
                   f"  {failure['curl']}")
    if json_out:
        with open(json_out, "w") as out:
            json.dump(result, out, indent=1)
    if report.failure_counts:
        raise SystemExit(1)
