"""What SSJF's length predictor costs an API: at start-up and per request, without it (queue_policy=fcfs)
and with it (ssjf, the default).

Start-up: seconds from starting `sluice api` to its first 200 on /healthz, the API's CPU seconds and
resident memory then. Per request: the time to the API's 202 for `Prefer: respond-async` submissions
(tokenize, predict, score, enqueue; no engine involved), sent one after another, so each prediction
runs alone (batch of one). Policies alternate round by round, so a drift in machine load hits both.

Usage: ``.venv/bin/python -m bench.predictor_cost --redis-url redis://127.0.0.1:6379/14 [--rounds 3]``
(the database is flushed; the model is SLUICE_MODEL's, default the built-in tiny Llama that
``sluice model init`` builds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from core.processes import Child, free_port, http_ok, sluice_argv, wait_for

POLICIES = ("fcfs", "ssjf")


def _validation_prompts(count: int) -> list[str]:
    from predictor.data import load_prompts, split_prompt_ids

    _train, validation = split_prompt_ids()
    keep = set(validation)
    prompts = [p.prompt for p in load_prompts() if p.prompt_id in keep]
    return [prompts[i % len(prompts)] for i in range(count)]


def _submit_latencies(base_url: str, prompts: list[str]) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base_url, timeout=60, headers={"Prefer": "respond-async"}) as http:
        for prompt in prompts:
            started = time.perf_counter()
            reply = http.post("/v1/chat/completions", json={"model": "sluice-tiny-llama", "max_tokens": 16,
                                                            "messages": [{"role": "user", "content": prompt}]})
            latencies.append(time.perf_counter() - started)
            reply.raise_for_status()
    return latencies


def measure_once(policy: str, redis_url: str, model_dir: str | None, log_dir: Path, prompts: list[str]) -> dict:
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") or k == "SLUICE_MODEL"}
    env.update(SLUICE_REDIS_URL=redis_url, SLUICE_QUEUE_POLICY=policy, SLUICE_PREDICTOR_FEEDBACK="false",
               SLUICE_PREDICTOR_REGISTRY=str(log_dir / "registry"))
    if model_dir:
        env["SLUICE_MODEL"] = model_dir
    base_url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    api = Child(f"api-{policy}", sluice_argv("api", "--port", str(port)), env=env,
                log_path=log_dir / f"api-{policy}.log")
    try:
        wait_for(lambda: http_ok(base_url + "/healthz"), 300, f"the {policy} API", interval=0.05, child=api)
        ready_s = time.perf_counter() - started
        process = psutil.Process(api.pid)
        rss, cpu = process.memory_info().rss, process.cpu_times()
        _submit_latencies(base_url, prompts[:5])  # warm-up: first tokenizer and predictor calls allocate
        latencies = _submit_latencies(base_url, prompts)
    finally:
        api.stop()
        redis.Redis.from_url(redis_url).flushdb()
    latencies.sort()
    # CPU seconds are what a busy machine hides least: wall time stretches with load, CPU time less so.
    return {"ready_s": ready_s, "cpu_s": cpu.user + cpu.system, "rss_mib": rss / 2**20,
            "submit_p50_ms": 1000 * statistics.median(latencies),
            "submit_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def run_predictor_cost_bench(redis_url: str, rounds: int = 3, requests: int = 100,
                             model_dir: str | None = None) -> dict:
    log_dir = Path(tempfile.mkdtemp(prefix="sluice-predictor-cost-"))
    prompts = _validation_prompts(requests)
    runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    for round_index in range(rounds):
        for policy in POLICIES if round_index % 2 == 0 else reversed(POLICIES):
            runs[policy].append(measure_once(policy, redis_url, model_dir, log_dir, prompts))
    summary: dict = {policy: {name: round(statistics.median(r[name] for r in results), 2) for name in results[0]}
                     for policy, results in runs.items()}
    summary["ssjf_adds"] = {name: round(summary["ssjf"][name] - summary["fcfs"][name], 2) for name in summary["fcfs"]}
    summary["config"] = {"rounds": rounds, "requests_per_round": requests,
                         "load_average_1m": round(os.getloadavg()[0], 1)}
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True, help="a database this may flush")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="async submissions per API and round")
    parser.add_argument("--model", default=None, help="model directory (default: the built-in tiny Llama)")
    args = parser.parse_args()
    print(json.dumps(run_predictor_cost_bench(args.redis_url, args.rounds, args.requests, args.model)))
