"""What waiting for a replica costs an enqueue (``SLUICE_ENQUEUE_WAIT_REPLICAS``).

One master and one replica (the embedded Valkey binary, on loopback), and the API's enqueue path
(``api.enqueue.Enqueuer.enqueue``: the lane-limit check, then Celery's ``send_task`` into the
transport, which enters the request into its lane and the ledger in one Lua call, followed by
``WAIT 1 <timeout>`` when waiting).  Rounds alternate between no wait and ``WAIT 1`` in one run, with
a fresh database each round; reported: the median rate over rounds and each enqueue's latency
percentiles (all rounds).  Sequential enqueues from one thread: the latency one API request adds.

Usage: ``sluice bench replica-wait`` or ``python -m bench.replica_wait_bench [--requests N] [--rounds R]``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import redis

from api.enqueue import Enqueuer
from broker.celery_app import create_app
from broker.messages import GenerationRequest, SamplingOptions
from core.embedded_valkey import _valkey_binary
from core.processes import Child, free_port, wait_for
from core.settings import Settings

MODES = {"no wait": 0, "WAIT 1": 1}


def _start(root: Path, name: str, port: int, extra: list[str]) -> Child:
    data = root / name
    data.mkdir(parents=True)
    config = data / "valkey.conf"
    config.write_text("\n".join(["bind 127.0.0.1", f"port {port}", f'dir "{data}"', 'save ""',
                                 "appendonly no", 'logfile ""', *extra]) + "\n")
    child = Child(name, [str(_valkey_binary()), str(config)], log_path=data / "valkey.log", cwd=data)
    wait_for(lambda: _ping(port), 15, name, interval=0.1, child=child)
    return child


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _request(index: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"bench-{index}-{time.monotonic_ns()}", model="bench", kind="completion",
        prompt_token_ids=list(range(1, 200)), slo="interactive",
        sampling=SamplingOptions(max_tokens=64), enqueued_at=time.time(), score=float(index))


def _wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def _round(url: str, replicas: int, requests: int) -> tuple[float, list[float], int]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.execute_command("WAIT", 1, 5000)  # the replica has the flush before timing starts
    app = create_app(Settings(redis_url=url, enqueue_wait_replicas=replicas, enqueue_wait_timeout_ms=1000))
    enqueuer = Enqueuer(app, client, {"interactive": requests + 1}, 1)
    latencies = []
    try:
        enqueuer.enqueue(_request(-1))  # connections and scripts loaded outside the timing
        waits_before = _wait_calls(client)
        started = time.perf_counter()
        for index in range(requests):
            before = time.perf_counter()
            enqueuer.enqueue(_request(index))
            latencies.append(time.perf_counter() - before)
        elapsed = time.perf_counter() - started
        waits = _wait_calls(client) - waits_before
    finally:
        app.close()
    return requests / elapsed, latencies, waits


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_replica_wait_bench(requests: int = 2000, rounds: int = 3) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sluice-replica-wait-"))
    master_port, replica_port = free_port(), free_port()
    master = _start(root, "master", master_port, [])
    replica = _start(root, "replica", replica_port, [f"replicaof 127.0.0.1 {master_port}"])
    try:
        wait_for(lambda: redis.Redis(port=replica_port).info("replication")["master_link_status"] == "up", 15,
                 "replication")
        url = f"redis://127.0.0.1:{master_port}/0"
        rates = {mode: [] for mode in MODES}
        latencies = {mode: [] for mode in MODES}
        waits = {mode: 0 for mode in MODES}
        for _ in range(rounds):
            for mode, replicas in MODES.items():
                rate, round_latencies, round_waits = _round(url, replicas, requests)
                waits[mode] += round_waits
                rates[mode].append(rate)
                latencies[mode].extend(round_latencies)
        return {"requests_per_round": requests, "rounds": rounds, "modes": {
            mode: {"median_rate_per_s": round(statistics.median(rates[mode]), 1),
                   "rates_per_s": [round(rate, 1) for rate in rates[mode]],
                   "p50_ms": round(_percentile(latencies[mode], 0.5) * 1000, 3),
                   "p99_ms": round(_percentile(latencies[mode], 0.99) * 1000, 3),
                   "wait_commands": waits[mode]} for mode in MODES}}
    finally:
        replica.kill()
        master.kill()


def format_table(result: dict) -> str:
    lines = ["| enqueue | median rate (req/s) | rates per round | p50 latency (ms) | p99 latency (ms) | WAITs run |",
             "|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        lines.append(f"| {mode} | {row['median_rate_per_s']} | {', '.join(map(str, row['rates_per_s']))} | "
                     f"{row['p50_ms']} | {row['p99_ms']} | {row['wait_commands']} |")
    return "\n".join(lines)


@click.command("replica-wait")
@click.option("--requests", default=2000, show_default=True, help="Enqueues per round and mode.")
@click.option("--rounds", default=3, show_default=True, help="Rounds; the modes alternate within each.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result here.")
def replica_wait_command(requests, rounds, json_out) -> None:
    """Enqueue rate and latency with and without waiting for one replica (Redis WAIT)."""
    result = run_replica_wait_bench(requests, rounds)
    click.echo(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    replica_wait_command()
