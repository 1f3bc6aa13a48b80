"""The load-step driver behind `sluice profile` (and `sluice bench scale`): measure a worker's interactive
capacity against the running model and store it.

Load steps of increasing concurrency (closed loop: each of ``concurrency`` clients sends its next chat
request as soon as the previous one is answered) run against the API for ``step_s`` each; a step's
tokens/s and ITL p90 come from the requests that finished inside it (after a short warm-up), read from
each answer's ``sluice`` block.  Steps stop at the first one past the ITL SLO; the capacity is the
busiest step within it (``scaler.capacity_profile``), divided by the live interactive workers.  The
record goes to Redis (``broker.capacity``), where the scaler reads it for the model its workers serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import httpx
import numpy as np

from broker.capacity import CapacityProfile, ProfileStep, write_profile
from broker.heartbeat import read_heartbeats
from core.processes import wait_for
from core.redis_clients import sync_client
from core.settings import Settings
from scaler.capacity_profile import capacity_at_slo, should_stop

log = logging.getLogger(__name__)

PROMPT = ("Write a detailed, step by step explanation of how a sorted set works in Redis, including its "
          "skip list, its hash table and the cost of each operation. ")


def interactive_workers(client, model: str) -> int:
    return sum(1 for beat in read_heartbeats(client).values()
               if "interactive" in beat.lanes and not beat.draining and (not beat.model or beat.model == model))


async def run_step(base_url: str, model: str, concurrency: int, step_s: float, max_tokens: int,
                   prompt_words: int) -> list[dict]:
    prompt = " ".join((PROMPT * (1 + prompt_words // 20)).split()[:prompt_words])
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt}]}
    finished: list[dict] = []
    end = time.monotonic() + step_s

    async def client_loop(http: httpx.AsyncClient):
        while time.monotonic() < end:
            response = await http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answer = response.json()
            finished.append({"at": time.monotonic(), "tokens": answer["usage"]["completion_tokens"],
                             "itl_s": answer["sluice"]["itl_s"], "ttft_s": answer["sluice"]["ttft_s"]})

    limits = httpx.Limits(max_connections=concurrency + 4)
    # An API that requires keys (docs/security.md): the client-side SLUICE_API_KEY, as the SDK reads it.
    key = os.environ.get("SLUICE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client_loop(http) for _ in range(concurrency)))
    return [{**f, "at": f["at"] - (end - step_s)} for f in finished]


def summarize(concurrency: int, finished: list[dict], step_s: float, warmup_s: float, workers: int) -> ProfileStep:
    counted = [f for f in finished if warmup_s <= f["at"] <= step_s]
    itls = [f["itl_s"] for f in counted if f["itl_s"] is not None]
    ttfts = [f["ttft_s"] for f in counted if f["ttft_s"] is not None]
    tokens = sum(f["tokens"] for f in counted)
    return ProfileStep(concurrency=concurrency, requests=len(counted),
                       tokens_per_s=round(tokens / max(step_s - warmup_s, 1e-9) / max(workers, 1), 2),
                       itl_p90_s=round(float(np.percentile(itls, 90)), 4) if itls else None,
                       ttft_p50_s=round(float(np.percentile(ttfts, 50)), 4) if ttfts else None)


def profile(settings: Settings, base_url: str, *, concurrencies: list[int], step_s: float, max_tokens: int,
            prompt_words: int, store: bool = True, echo=print) -> CapacityProfile:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = sync_client(settings.require_redis_url())
    model = httpx.get(base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
    # A worker whose host stalled for a moment lets its heartbeat lapse without being gone (the test suite saw
    # one lapse 5 s on this 2-core host): wait up to two heartbeat TTLs for one before giving up.
    try:
        workers = wait_for(lambda: interactive_workers(client, model), 2 * settings.heartbeat_ttl_s,
                           "a live interactive worker")
    except TimeoutError:
        raise RuntimeError("no live worker consumes the interactive lane: start one (sluice worker) first") from None
    slo = settings.scaler.slo.itl_s
    warmup_s = min(2.0, step_s / 4)
    steps = []
    for concurrency in concurrencies:
        finished = asyncio.run(run_step(base_url, model, concurrency, step_s, max_tokens, prompt_words))
        step = summarize(concurrency, finished, step_s, warmup_s, workers)
        steps.append(step)
        itl = f"{step.itl_p90_s * 1000:.0f} ms" if step.itl_p90_s is not None else "-"
        echo(f"concurrency {concurrency:>3}: {step.requests:>4} requests, {step.tokens_per_s:>8.1f} tok/s per worker, "
             f"ITL p90 {itl} (SLO {slo * 1000:.0f} ms)")
        if should_stop(step, slo):
            break
    best = capacity_at_slo(steps, slo)
    result = CapacityProfile(model=model, tokens_per_s=best.tokens_per_s, itl_slo_s=slo, concurrency=best.concurrency,
                             workers=workers, measured_at=time.time(), steps=tuple(steps))
    if store:
        write_profile(client, result)
    return result
