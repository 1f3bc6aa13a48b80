"""Predictor benchmark: sustained predictions/s and added latency at a fixed request rate.

Replays validation-split AlpacaEval prompts (never trained on) through PredictionService, the same
path the API uses. Usage: ``.venv/bin/python -m bench.predictor_bench [--duration 20] [--rate 50]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time


def _validation_prompts() -> list[str]:
    from predictor import data as D

    _, validation_ids = D.split_prompt_ids()
    keep = set(validation_ids)
    return [p.prompt for p in D.load_prompts() if p.prompt_id in keep]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _throughput(service, prompts: list[str], served_model: str, duration_s: float) -> float:
    # Keep many requests in flight so the batcher always has full batches: the service's ceiling.
    done = 0
    stop = time.perf_counter() + duration_s

    async def client(offset: int):
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await service.predict(prompts[i % len(prompts)], served_model)
            done += 1
            i += 64

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(64)))
    return done / (time.perf_counter() - started)


async def _latency_at_rate(service, prompts: list[str], served_model: str, rate: float,
                           duration_s: float) -> list[float]:
    # Poisson arrivals at `rate`; latency is what the predictor adds to a request's admission.
    rng = random.Random(0)
    latencies: list[float] = []

    async def one(prompt: str):
        t0 = time.perf_counter()
        await service.predict(prompt, served_model)
        latencies.append(time.perf_counter() - t0)

    tasks = []
    next_at = time.perf_counter()
    stop = next_at + duration_s
    i = 0
    while next_at < stop:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.create_task(one(prompts[i % len(prompts)])))
        i += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return latencies


def run_predictor_bench(duration_s: float = 20.0, rate: float = 50.0,
                        served_model: str = "Meta-Llama-3-8B-Instruct", artifact=None,
                        threads: int | None = None) -> dict:
    started, started_cpu = time.perf_counter(), time.process_time()
    import torch
    import transformers  # noqa: F401  (the API has imported it for its tokenizer before it loads the predictor)

    from predictor.predictor import LengthPredictor
    from predictor.service import PredictionService

    imported, imported_cpu = time.perf_counter(), time.process_time()
    predictor = LengthPredictor.load(artifact, threads=threads)
    loaded, loaded_cpu = time.perf_counter(), time.process_time()
    prompts = _validation_prompts()
    predictor.predict(prompts[:32], served_model)  # warm-up: first forward allocates

    async def run() -> dict:
        service = PredictionService(predictor)
        try:
            throughput = await _throughput(service, prompts, served_model, duration_s / 2)
            service.batch_sizes.clear()
            cpu_before = time.process_time()
            latencies = await _latency_at_rate(service, prompts, served_model, rate, duration_s / 2)
            cpu_s = time.process_time() - cpu_before
            return {
                "artifact_version": predictor.version,
                "torch_threads": torch.get_num_threads(),
                # Start-up: importing torch, transformers and the predictor, then loading and quantizing
                # the artifact (what an API that already has its tokenizer pays), wall and CPU seconds.
                "import_s": round(imported - started, 2),
                "import_cpu_s": round(imported_cpu - started_cpu, 2),
                "load_s": round(loaded - imported, 2),
                "load_cpu_s": round(loaded_cpu - imported_cpu, 2),
                "sustained_predictions_per_s": round(throughput, 1),
                "rate_req_per_s": rate,
                "requests_at_rate": len(latencies),
                "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
                "latency_p99_ms": round(1000 * _percentile(latencies, 0.99), 2),
                "mean_batch_size_at_rate": round(statistics.mean(service.batch_sizes), 2),
                # This process's CPU time per request at that rate (batching included): the cost other
                # work on the machine feels, and less sensitive to that work than the latencies.
                "cpu_ms_per_request_at_rate": round(1000 * cpu_s / len(latencies), 2),
            }
        finally:
            await service.close()

    return asyncio.run(run())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds, split between the two phases")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s for the latency phase")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (the API uses SLUICE_PREDICTOR_THREADS, default 1); default: torch's")
    args = parser.parse_args()
    print(json.dumps(run_predictor_bench(duration_s=args.duration, rate=args.rate, threads=args.threads)))
