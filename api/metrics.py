"""Prometheus metrics, named after vLLM's (``vllm:time_to_first_token_seconds`` -> ``sluice_time_to_first_token_seconds``).

Latency histograms are observed by the API as it sees requests finish; queue
depth and worker state are read from Redis at scrape time, so every API
replica reports the same fleet-wide numbers.
"""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from broker.batches import BatchStatus
from broker.decisions import read_action_counts
from broker.heartbeat import read_heartbeats
from core import keys

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
# sluice_worker_<field>, one per heartbeat field (broker.heartbeat.WorkerHeartbeat).
WORKER_GAUGES = {
    "running": "Requests running in the worker's engine.",
    "waiting": "Requests waiting inside the worker's engine.",
    "kv_cache_usage": "Fraction of the worker's KV cache in use.",
    "admission_limit": "Requests the worker runs at once (its admission limit, set by the scaler).",
    "inflight": "Requests the worker has admitted.",
    "tokens_per_s": "Generation throughput over the last seconds.",
    "draining": "1 while the worker drains (consumes nothing more, finishes its requests, exits).",
    "ready_s": "Time to ready: seconds from the worker process's start until it consumed (engine loaded, warm).",
}


class FleetCollector:
    """Queue depth per lane and each live worker's heartbeat, read at scrape time."""

    def __init__(self, client: redis.Redis, lanes):
        self.client = client
        self.lanes = list(lanes)

    def collect(self):
        depth = GaugeMetricFamily("sluice_queue_depth", "Requests waiting in each lane.", labels=["lane"])
        with self.client.pipeline(transaction=False) as pipe:
            for lane in self.lanes:
                pipe.zcard(keys.lane_key(lane))
            for lane, size in zip(self.lanes, pipe.execute()):
                depth.add_metric([lane], size)
        yield depth
        beats = read_heartbeats(self.client)
        alive = GaugeMetricFamily("sluice_workers", "Workers with a live heartbeat.", labels=["pool"])
        pools: dict[str, int] = {}
        families = {name: GaugeMetricFamily(f"sluice_worker_{name}", doc, labels=["worker", "pool"])
                    for name, doc in WORKER_GAUGES.items()}
        for worker_id, beat in beats.items():
            pools[beat.pool] = pools.get(beat.pool, 0) + 1
            for name, family in families.items():
                if (value := getattr(beat, name)) is not None:  # ready_s: None from a worker older than it
                    family.add_metric([worker_id, beat.pool], float(value))
        for pool, count in pools.items():
            alive.add_metric([pool], count)
        yield alive
        yield from families.values()
        actions = CounterMetricFamily("sluice_scaler_actions", "Scaler decisions by kind, pool and action.",
                                      labels=["kind", "pool", "action"])
        for field, count in read_action_counts(self.client).items():
            kind, pool, action = (field.split(":") + ["", ""])[:3]
            actions.add_metric([kind, pool, action], int(count))
        yield actions
        yield from self.collect_batches()

    def collect_batches(self):
        """Batches per status and batch requests ended per status: two counters hashes (broker.batches)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.BATCHES_BY_STATUS)
            pipe.hgetall(keys.BATCH_REQUESTS_ENDED)
            by_status, ended = pipe.execute()
        batches = GaugeMetricFamily("sluice_batches", "Batch API batches in each status.", labels=["status"])
        for status in BatchStatus:
            batches.add_metric([status.value], max(0, int(by_status.get(status.value.encode(), 0))))
        yield batches
        requests = CounterMetricFamily("sluice_batch_requests", "Requests of Batch API batches that ended, by "
                                       "how (done, failed, cancelled, expired).", labels=["status"])
        for status in ("done", "failed", "cancelled", "expired"):
            requests.add_metric([status], int(ended.get(status.encode(), 0)))
        yield requests


class Metrics:
    def __init__(self, client: redis.Redis, lanes):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sluice_requests", "Requests by lane and outcome.", ["lane", "outcome"], registry=r)
        self.rejected = Counter("sluice_requests_rejected", "Requests refused with a 4xx.", ["code"], registry=r)
        self.ttft = Histogram("sluice_time_to_first_token_seconds", "Enqueue to first token.", ["lane"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("sluice_inter_token_latency_seconds", "Mean time between output tokens.", ["lane"],
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("sluice_e2e_request_latency_seconds", "Enqueue to last token.", ["lane"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("sluice_request_queue_time_seconds", "Time waiting in the lane.", ["lane"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("sluice_prompt_tokens", "Prompt tokens of finished requests.", ["lane"], registry=r)
        self.generation_tokens = Counter("sluice_generation_tokens", "Generated tokens.", ["lane"], registry=r)
        self.predict_seconds = Histogram("sluice_predictor_latency_seconds", "Output-length prediction time.",
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        r.register(FleetCollector(client, lanes))

    def observe_done(self, lane: str, record: dict) -> None:
        self.requests.labels(lane, "ok").inc()
        if record.get("ttft_s") is not None:
            self.ttft.labels(lane).observe(record["ttft_s"])
        if record.get("itl_s") is not None:
            self.itl.labels(lane).observe(record["itl_s"])
        self.e2e.labels(lane).observe(record["e2e_s"])
        self.queue_time.labels(lane).observe(record["queue_wait_s"])
        self.prompt_tokens.labels(lane).inc(record["prompt_tokens"])
        self.generation_tokens.labels(lane).inc(record["output_tokens"])
