"""Broker benchmark: the Sluice sorted-set transport against Celery's stock kombu Redis transport.

Both transports run in the same process, against the same Redis server and database, with the same
message (a Celery protocol-2 ``sluice.generate`` task of about 1 KB) and the same kombu code paths:
``Producer.publish`` one message at a time (what ``send_task`` does for each API request) and a
``Consumer`` with late acks drained through ``Connection.drain_events`` (the BRPOP/BZPOPMIN poller a
Celery worker uses).  Two measurements:

1. throughput: publish N messages into lane ``batch`` (random ``sluice_score``), then consume and ack
   them all; alternating rounds per transport, median reported (the machine is noisy);
2. added latency at a paced rate: a producer thread publishes at ``--rate`` msg/s for ``--duration`` s,
   each message carrying its publish time, while a consumer drains concurrently; latency is consume
   time minus publish time.

Usage: ``sluice bench broker`` or ``.venv/bin/python -m bench.broker_bench [--json OUT.json]``.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import click
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
LANE = "batch"
TRANSPORTS = ("sluice", "stock")
SENT_HEADER = "bench_sent"
TARGET_THROUGHPUT_RATIO = 1.5
TARGET_P99_ADDED_MS = 2.0


# --- messages ------------------------------------------------------------------------
def _task_payload(rng: random.Random) -> dict:
    """A GenerationRequest as the API serializes it: ~1 KB of JSON (mostly prompt token ids)."""
    from broker.messages import GenerationRequest, SamplingOptions

    now = time.time()
    request = GenerationRequest(
        request_id=str(uuid.uuid4()), model="sluice-tiny-llama", kind="chat",
        prompt_token_ids=[rng.randrange(32000) for _ in range(80)],
        sampling=SamplingOptions(max_tokens=256, temperature=0.7, top_p=0.95, stop=["</s>"]),
        slo=LANE, deadline=now + 3600, enqueued_at=now, score=now, predicted_output_tokens=118.0,
    )
    return request.model_dump(mode="json")


class TaskMessages:
    """Celery protocol-2 task messages for ``sluice.generate``, built the way ``send_task`` builds them."""

    def __init__(self, seed: int = 0):
        from celery import Celery

        from core.names import TASK_NAME

        self.rng = random.Random(seed)
        self.task_name = TASK_NAME
        self.payload = _task_payload(self.rng)
        # Only used to build messages (app.amqp.as_task_v2); it never connects anywhere.
        self.app = Celery("sluice-bench", broker="memory://", set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"])

    def one(self, sent_at: float | None = None) -> tuple[object, dict, dict]:
        """(body, headers, properties) of a new task message with a random score."""
        task_id = str(uuid.uuid4())
        message = self.app.amqp.as_task_v2(task_id, self.task_name, args=[self.payload], kwargs={})
        headers = dict(message.headers)
        headers["sluice_score"] = self.rng.random() * 1e9
        if sent_at is not None:
            headers[SENT_HEADER] = sent_at
        return message.body, headers, dict(message.properties)

    def body_size(self) -> int:
        return len(json.dumps(self.one()[0]).encode())


def _url_for(transport: str, redis_url: str) -> str:
    scheme, _, rest = redis_url.partition("://")
    return ("sluice://" if transport == "sluice" else "redis://") + rest


def _connection(transport: str, redis_url: str):
    from kombu import Connection

    import broker.transport  # noqa: F401  (registers sluice://)

    return Connection(_url_for(transport, redis_url), transport_options={"lane_priority": ("interactive", "batch")})


def _queue():
    from kombu import Exchange, Queue

    return Queue(LANE, Exchange(LANE, type="direct"), routing_key=LANE)


def _publish(producer, message: tuple, sent_at: float | None = None) -> None:
    body, headers, properties = message
    headers = dict(headers)
    if sent_at is not None:
        headers[SENT_HEADER] = sent_at
    producer.publish(body, exchange=LANE, routing_key=LANE, headers=headers, serializer="json", **properties)


def _flush(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()


# --- 1. throughput ---------------------------------------------------------------------
def _throughput_round(transport: str, redis_url: str, prebuilt: list, progress) -> dict:
    count = len(prebuilt)
    _flush(redis_url)
    queue = _queue()
    with _connection(transport, redis_url) as conn:
        with conn.channel() as channel:
            producer = conn.Producer(channel)
            queue(channel).declare()
            bar = progress(total=count, desc=f"{transport:>6} publish", leave=False)
            started = time.perf_counter()
            for i, message in enumerate(prebuilt):
                _publish(producer, message)
                if i % 500 == 499:
                    bar.update(500)
            publish_s = time.perf_counter() - started
            bar.close()

        received = 0

        def on_message(body, message):
            nonlocal received
            message.ack()
            received += 1

        with conn.channel() as channel:
            consumer = conn.Consumer(queue, channel=channel, callbacks=[on_message], accept=["json"], no_ack=False)
            consumer.qos(prefetch_count=1)
            bar = progress(total=count, desc=f"{transport:>6} consume", leave=False)
            last = 0
            with consumer:
                started = time.perf_counter()
                while received < count:
                    conn.drain_events(timeout=10)
                    if received - last >= 500:
                        bar.update(received - last)
                        last = received
                consume_s = time.perf_counter() - started
            bar.close()
    return {
        "publish_msgs_per_s": count / publish_s,
        "consume_msgs_per_s": count / consume_s,
        "end_to_end_msgs_per_s": count / (publish_s + consume_s),
    }


# --- 2. latency at a paced rate ---------------------------------------------------------
def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _paced_producer(transport: str, redis_url: str, rate: float, total: int, seed: int, report) -> None:
    """Publish ``total`` messages at ``rate`` msg/s, each stamped with ``time.monotonic()`` just before publish.

    ``time.monotonic`` is CLOCK_MONOTONIC, one clock for every process of the machine, so the stamp is
    comparable in the consumer whether this runs in a thread or in a child process.
    """
    try:
        messages = TaskMessages(seed)
        prebuilt = [messages.one() for _ in range(min(total, 2000))]
        with _connection(transport, redis_url) as conn, conn.channel() as channel:
            producer = conn.Producer(channel)
            interval = 1.0 / rate
            behind = 0
            started = time.monotonic()
            for i in range(total):
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -interval:
                    behind += 1
                _publish(producer, prebuilt[i % len(prebuilt)], sent_at=time.monotonic())
            report({"achieved_rate": total / (time.monotonic() - started), "late_sends": behind})
    except BaseException as exc:  # surfaced by the consumer side
        report({"error": repr(exc)})


def _latency_run(transport: str, redis_url: str, rate: float, duration_s: float, progress, warmup: int,
                 producer_mode: str = "process", seed: int = 1) -> dict:
    _flush(redis_url)
    total = int(rate * duration_s)
    queue = _queue()
    latencies: list[float] = []

    def on_message(body, message):
        latencies.append(time.monotonic() - message.headers[SENT_HEADER])
        message.ack()

    if producer_mode == "process":
        import multiprocessing

        context = multiprocessing.get_context("fork")
        results = context.SimpleQueue()
        worker = context.Process(target=_paced_producer, args=(transport, redis_url, rate, total, seed, results.put),
                                 name=f"{transport}-producer", daemon=True)
        finished = lambda: not worker.is_alive()  # noqa: E731
        collect = lambda: results.get() if not results.empty() else {"error": "producer died"}  # noqa: E731
    else:
        box: list[dict] = []
        worker = threading.Thread(target=_paced_producer, args=(transport, redis_url, rate, total, seed, box.append),
                                  name=f"{transport}-producer", daemon=True)
        finished = lambda: not worker.is_alive()  # noqa: E731
        collect = lambda: box[0] if box else {"error": "producer died"}  # noqa: E731

    with _connection(transport, redis_url) as conn, conn.channel() as channel:
        queue(channel).declare()
        consumer = conn.Consumer(queue, channel=channel, callbacks=[on_message], accept=["json"], no_ack=False)
        consumer.qos(prefetch_count=1)
        with consumer:
            bar = progress(total=total, desc=f"{transport:>6} {rate:g}/s", leave=False)
            last = 0
            worker.start()
            deadline = None
            while len(latencies) < total:
                if finished():
                    deadline = deadline or time.monotonic() + 5
                    if time.monotonic() > deadline:
                        break
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
                if len(latencies) - last >= 100:
                    bar.update(len(latencies) - last)
                    last = len(latencies)
            bar.close()
            worker.join()
    producer_stats = collect()
    if "error" in producer_stats:
        raise RuntimeError(f"{transport} producer failed: {producer_stats['error']}")
    kept = sorted(latencies[warmup:]) or sorted(latencies)
    ms = [value * 1000 for value in kept]
    return {
        "p50_ms": _percentile(ms, 0.50), "p99_ms": _percentile(ms, 0.99), "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms), "samples": len(ms), "lost": total - len(latencies),
        "producer": producer_mode, **producer_stats,
    }


# --- orchestration ----------------------------------------------------------------------
def _progress_factory(enabled: bool):
    if not enabled:
        class _Null:
            def __init__(self, *a, **k): pass
            def update(self, n): pass
            def close(self): pass
        return _Null
    from tqdm import tqdm

    return tqdm


def run_broker_bench(redis_url: str, messages: int = 20_000, rounds: int = 3, rate: float = 1000.0,
                     duration_s: float = 10.0, progress: bool = True, seed: int = 0,
                     producer_mode: str = "process") -> dict:
    bar = _progress_factory(progress)
    task_messages = TaskMessages(seed)
    # Messages are built once, outside the timed loops: what is timed is kombu publish + transport.
    prebuilt = [task_messages.one() for _ in range(messages)]
    rounds_by_transport: dict[str, list[dict]] = {name: [] for name in TRANSPORTS}
    outer = bar(total=rounds * len(TRANSPORTS) + len(TRANSPORTS), desc="broker bench")
    for r in range(rounds):
        # Alternate the order so neither transport always runs first (warm caches, noisy neighbours).
        order = TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]
        for name in order:
            rounds_by_transport[name].append(_throughput_round(name, redis_url, prebuilt, bar))
            outer.update(1)
    latency = {}
    warmup = min(200, int(rate * duration_s) // 10)
    for name in TRANSPORTS:
        latency[name] = _latency_run(name, redis_url, rate, duration_s, bar, warmup, producer_mode, seed + 1)
        outer.update(1)
    outer.close()
    _flush(redis_url)

    transports = {}
    for name in TRANSPORTS:
        runs = rounds_by_transport[name]
        transports[name] = {
            metric: statistics.median(run[metric] for run in runs)
            for metric in ("publish_msgs_per_s", "consume_msgs_per_s", "end_to_end_msgs_per_s")
        }
        transports[name]["rounds"] = runs
        transports[name]["latency"] = latency[name]
    sluice, stock = transports["sluice"], transports["stock"]
    ratios = {
        "throughput_stock_over_sluice": stock["end_to_end_msgs_per_s"] / sluice["end_to_end_msgs_per_s"],
        "publish_stock_over_sluice": stock["publish_msgs_per_s"] / sluice["publish_msgs_per_s"],
        "consume_stock_over_sluice": stock["consume_msgs_per_s"] / sluice["consume_msgs_per_s"],
        "latency_p50_added_ms": sluice["latency"]["p50_ms"] - stock["latency"]["p50_ms"],
        "latency_p99_added_ms": sluice["latency"]["p99_ms"] - stock["latency"]["p99_ms"],
    }
    targets = {
        "throughput_within_1.5x": ratios["throughput_stock_over_sluice"] <= TARGET_THROUGHPUT_RATIO,
        "p99_added_latency_under_2ms": ratios["latency_p99_added_ms"] < TARGET_P99_ADDED_MS,
    }
    server = redis.Redis.from_url(redis_url).info("server")
    config = {
        "redis_url": redis_url, "server": f"{server.get('redis_version')}"
        + (" (valkey " + server["valkey_version"] + ")" if "valkey_version" in server else ""),
        "messages": messages, "rounds": rounds, "rate": rate, "duration_s": duration_s,
        "latency_warmup_messages": warmup, "task_body_bytes": task_messages.body_size(),
        "publish": "kombu Producer.publish, one message per call (as send_task)",
        "consume": "kombu Consumer, late ack, prefetch_count=1, Connection.drain_events",
        "latency_producer": producer_mode,
        "lane": LANE,
    }
    return {"transports": transports, "ratios": ratios, "targets": targets, "config": config}


def format_table(result: dict) -> str:
    t, r = result["transports"], result["ratios"]
    rows = [
        ("publish msg/s", "publish_msgs_per_s", None), ("consume msg/s", "consume_msgs_per_s", None),
        ("end-to-end msg/s", "end_to_end_msgs_per_s", None),
    ]
    lines = [f"{'':<24}{'sluice':>12}{'stock':>12}{'stock/sluice':>14}", "-" * 62]
    for label, key, _ in rows:
        lines.append(f"{label:<24}{t['sluice'][key]:>12,.0f}{t['stock'][key]:>12,.0f}"
                     f"{t['stock'][key] / t['sluice'][key]:>14.2f}")
    rate = result["config"]["rate"]
    for label, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")):
        s, k = t["sluice"]["latency"][key], t["stock"]["latency"][key]
        lines.append(f"{f'latency {label} ms @{rate:g}/s':<24}{s:>12.3f}{k:>12.3f}{'Δ ' + format(s - k, '+.3f'):>14}")
    lines.append("-" * 62)
    ok = result["targets"]
    lines.append(f"throughput stock/sluice {r['throughput_stock_over_sluice']:.2f} (target <= {TARGET_THROUGHPUT_RATIO}): "
                 f"{'met' if ok['throughput_within_1.5x'] else 'MISSED'}")
    lines.append(f"p99 added latency {r['latency_p99_added_ms']:+.3f} ms (target < {TARGET_P99_ADDED_MS} ms): "
                 f"{'met' if ok['p99_added_latency_under_2ms'] else 'MISSED'}")
    return "\n".join(lines)


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@click.command("broker", help=(
    "Sluice sorted-set transport vs Celery's stock kombu Redis transport, side by side in one run: "
    "enqueue->dequeue throughput (median of alternating rounds) and added latency at a paced rate. "
    "WARNING: runs FLUSHDB on the database of --redis-url (db 11 by default), and only that one."))
@click.option("--redis-url", default=None, envvar="SLUICE_BENCH_REDIS_URL",
              help=f"Redis to use; its database is FLUSHED (only that db). Default {DEFAULT_REDIS_URL}; "
                   "when not given and nothing answers there, an embedded Valkey is started.")
@click.option("--messages", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Messages per throughput round.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternating throughput rounds per transport (median reported).")
@click.option("--rate", type=click.FloatRange(min=1), default=1000.0, show_default=True,
              help="Paced publish rate (msg/s) of the latency test.")
@click.option("--duration", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds of the latency test, per transport.")
@click.option("--producer", "producer_mode", type=click.Choice(["process", "thread"]), default="process",
              show_default=True, help="Where the paced latency producer runs: a child process (no GIL contention "
                                      "with the consumer) or a thread of the consumer's process.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as JSON to this file.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def broker_command(redis_url, messages, rounds, rate, duration, producer_mode, json_out, no_progress) -> None:
    valkey = tmpdir = None
    if redis_url is None:
        redis_url = DEFAULT_REDIS_URL
        if not _reachable(redis_url):
            from core.embedded_valkey import start_embedded_valkey

            tmpdir = Path(tempfile.mkdtemp(prefix="sluice-bench-valkey-"))
            valkey = start_embedded_valkey(tmpdir)
            redis_url = valkey.connection_url + "/11"
            click.echo(f"no Redis at {DEFAULT_REDIS_URL}; using an embedded Valkey at {redis_url}", err=True)
    elif not _reachable(redis_url):
        raise click.ClickException(f"no Redis answers at {redis_url}")
    try:
        result = run_broker_bench(redis_url, messages, rounds, rate, duration, progress=not no_progress,
                                  producer_mode=producer_mode)
    finally:
        if valkey is not None:
            valkey.stop()
            shutil.rmtree(tmpdir, ignore_errors=True)
    c = result["config"]
    click.echo(f"broker bench: {c['server']} at {c['redis_url']}, {c['messages']:,} msgs x {c['rounds']} rounds, "
               f"task body {c['task_body_bytes']} B, latency {c['rate']:g} msg/s for {c['duration_s']:g} s "
               f"(producer {c['latency_producer']})")
    click.echo(format_table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_out}")


if __name__ == "__main__":
    broker_command()
