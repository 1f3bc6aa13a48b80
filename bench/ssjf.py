"""`sluice bench ssjf`: FCFS vs SSJF vs oracle SJF through the full stack (API -> Redis -> Celery -> vLLM).

For each batching mode one worker is started; for each policy an API with that queue policy replays the
same requests: validation prompts the proxy never trained on, each with Meta-Llama-3-8B-Instruct's real
answer length enforced by ``max_tokens`` + ``ignore_eos``, arriving at the Azure ``conv`` trace's
inter-arrival times rescaled so the offered load is ``--load`` x the worker's measured capacity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import click
import httpx
import numpy as np
from tqdm import tqdm

from bench.processes import BenchCluster
from bench.workload import LENGTH_MODEL, BenchRequest, scaled_arrivals, validation_requests

log = logging.getLogger(__name__)
POLICIES = ("fcfs", "ssjf", "oracle")
MODEL = "sluice-tiny-llama"


async def _send(http: httpx.AsyncClient, request: BenchRequest) -> dict:
    started = time.time()
    response = await http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": request.true_output_tokens, "ignore_eos": True,
        "sluice": {"oracle_output_tokens": request.true_output_tokens},
    })
    finished = time.time()
    response.raise_for_status()
    reply = response.json()
    return {"jct_s": finished - started, "ttft_s": reply["sluice"]["ttft_s"], "queue_wait_s": reply["sluice"]["queue_wait_s"],
            "output_tokens": reply["usage"]["completion_tokens"], "sent_at": started, "finished_at": finished,
            "predicted_output_tokens": reply["sluice"]["predicted_output_tokens"], "score": reply["sluice"]["score"],
            "prompt_id": request.prompt_id}


async def replay(base_url: str, requests: list[BenchRequest], offsets: np.ndarray, desc: str) -> list[dict]:
    # Fresh connections: a replay's gaps can outlast any keep-alive, and a POST on a connection the
    # server is closing fails without a safe retry.
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits) as http:
        start = time.monotonic()
        progress = tqdm(total=len(requests), desc=desc, leave=False)

        async def timed(request, offset):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            result = await _send(http, request)
            progress.update()
            return result

        results = await asyncio.gather(*(timed(r, o) for r, o in zip(requests, offsets)))
        progress.close()
        return results


def summarize(results: list[dict]) -> dict:
    jct = np.array([r["jct_s"] for r in results])
    ttft = np.array([r["ttft_s"] for r in results])
    span = max(r["finished_at"] for r in results) - min(r["sent_at"] for r in results)
    tokens = sum(r["output_tokens"] for r in results)
    return {
        "mean_jct_s": float(jct.mean()), "p50_jct_s": float(np.percentile(jct, 50)),
        "p90_jct_s": float(np.percentile(jct, 90)), "p99_jct_s": float(np.percentile(jct, 99)),
        "p50_ttft_s": float(np.percentile(ttft, 50)), "p99_ttft_s": float(np.percentile(ttft, 99)),
        "throughput_rps": len(results) / span, "throughput_tokens_per_s": tokens / span,
        "requests": len(results), "jct_s": sorted(float(x) for x in jct),
        "per_request": [{k: r[k] for k in ("prompt_id", "sent_at", "jct_s", "ttft_s", "queue_wait_s", "output_tokens",
                                            "predicted_output_tokens", "score")} for r in results],
    }


async def measure_capacity(base_urls: list[str], requests: list[BenchRequest], burst: int) -> float:
    """Requests/s one worker sustains when saturated: a closed burst to every stack at once, averaged."""
    sample = requests[:burst]
    started = time.time()
    runs = await asyncio.gather(*(replay(url, sample, np.zeros(len(sample)), f"calibrating {i}")
                                  for i, url in enumerate(base_urls)))
    return float(np.mean([len(sample) / (max(r["finished_at"] for r in results) - started) for results in runs]))


def kendall_tau_of_proxy(requests: list[BenchRequest]) -> float:
    from scipy.stats import kendalltau

    from predictor.predictor import LengthPredictor

    unique = {r.prompt_id: r for r in requests}
    predictor = LengthPredictor.load()
    predicted = predictor.predict([r.prompt for r in unique.values()])
    return float(kendalltau(predicted, [r.true_output_tokens for r in unique.values()])[0])


def run_ssjf_bench(*, requests: int = 300, modes=("continuous",), batch_size: int = 8, load: float = 1.3,
                   redis_url: str | None = None, json_out: str | None = None, plot_out: str | None = None,
                   aging_tokens_per_s: float = 5.0) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workload = validation_requests(requests)
    mean_tokens = float(np.mean([r.true_output_tokens for r in workload]))
    report = {"config": {"requests": requests, "batch_size": batch_size, "load": load, "length_model": LENGTH_MODEL,
                         "arrival_trace": "azure conv", "aging_tokens_per_s": aging_tokens_per_s,
                         "mean_true_output_tokens": mean_tokens, "model": MODEL},
              "proxy_kendall_tau": kendall_tau_of_proxy(workload), "modes": {}}
    # The three policies run at the same time, each on its own worker, API and Redis database, so that
    # whatever else loads this machine loads them alike (side by side, not one after another).
    primary = BenchCluster(redis_url)
    base = primary.redis_url.rsplit("/", 1)[0]
    clusters = {"fcfs": primary, **{p: BenchCluster(f"{base}/{i}", log_dir=primary.log_dir / p)
                                    for i, p in enumerate(POLICIES[1:], start=1)}}
    try:
        for mode in modes:
            apis = {}
            for policy, cluster in clusters.items():
                cluster.start_worker(f"bench-{mode}-{policy}@bench", "--batching-mode", mode, "--batch-size",
                                     str(batch_size), "--max-batch-size", str(max(batch_size, 8)))
                apis[policy] = cluster.start_api(f"api-{mode}-{policy}", SLUICE_QUEUE_POLICY=policy,
                                                 SLUICE_SSJF_AGING_TOKENS_PER_S=aging_tokens_per_s,
                                                 SLUICE_PREDICTOR_FEEDBACK="false")[1]
            capacity = asyncio.run(measure_capacity([apis[p] for p in POLICIES], workload,
                                                    burst=min(len(workload), 6 * batch_size)))
            for cluster in clusters.values():
                cluster.wait_idle()
            rate = load * capacity
            offsets, time_scale = scaled_arrivals("conv", len(workload), rate)
            mode_report = {"capacity_rps": capacity, "arrival_rate_rps": rate, "trace_time_scale": time_scale}
            log.info("%s: capacity %.2f req/s per worker; replaying at %.2f req/s (conv trace time x%.3f)", mode,
                     capacity, rate, time_scale)

            async def replay_all():
                return await asyncio.gather(*(replay(apis[p], workload, offsets, f"{mode}/{p}") for p in POLICIES))

            for policy, results in zip(POLICIES, asyncio.run(replay_all())):
                mode_report[policy] = summarize(results)
                log.info("%s/%s: mean JCT %.2fs", mode, policy, mode_report[policy]["mean_jct_s"])
            for cluster in clusters.values():
                cluster.stop_processes()
            fcfs, ssjf, oracle = (mode_report[p]["mean_jct_s"] for p in POLICIES)
            mode_report["ssjf_mean_jct_reduction_vs_fcfs"] = 1 - ssjf / fcfs
            mode_report["oracle_mean_jct_reduction_vs_fcfs"] = 1 - oracle / fcfs
            mode_report["ssjf_share_of_oracle_reduction"] = ((fcfs - ssjf) / (fcfs - oracle)) if fcfs > oracle else None
            report["modes"][mode] = mode_report
    finally:
        for cluster in reversed(list(clusters.values())):
            cluster.stop()
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
    if plot_out:
        plot_jct_cdfs(report, plot_out)
    return report


def plot_jct_cdfs(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for policy in POLICIES:
            jct = np.array(report["modes"][mode][policy]["jct_s"])
            ax.plot(jct, np.arange(1, len(jct) + 1) / len(jct), label=f"{policy} (mean {jct.mean():.1f}s)")
        ax.set_title(f"{mode} batching")
        ax.set_xlabel("job completion time (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"JCT CDF, {report['config']['requests']} requests, proxy tau {report['proxy_kendall_tau']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def format_table(report: dict) -> str:
    lines = ["| mode | policy | mean JCT s | p50 | p90 | TTFT p50 | TTFT p99 | req/s | tok/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, data in report["modes"].items():
        for policy in POLICIES:
            m = data[policy]
            lines.append(f"| {mode} | {policy} | {m['mean_jct_s']:.2f} | {m['p50_jct_s']:.2f} | {m['p90_jct_s']:.2f} | "
                         f"{m['p50_ttft_s']:.2f} | {m['p99_ttft_s']:.2f} | {m['throughput_rps']:.2f} | "
                         f"{m['throughput_tokens_per_s']:.0f} |")
    for mode, data in report["modes"].items():
        share = data["ssjf_share_of_oracle_reduction"]
        lines.append(f"\n{mode}: SSJF mean JCT {100 * data['ssjf_mean_jct_reduction_vs_fcfs']:.1f}% below FCFS; "
                     f"oracle {100 * data['oracle_mean_jct_reduction_vs_fcfs']:.1f}%; SSJF gets "
                     f"{'n/a' if share is None else f'{100 * share:.0f}%'} of oracle's reduction "
                     f"(capacity {data['capacity_rps']:.2f} req/s, arrivals {data['arrival_rate_rps']:.2f} req/s, "
                     f"trace time x{data['trace_time_scale']:.3f})")
    lines.append(f"proxy Kendall tau on these requests: {report['proxy_kendall_tau']:.3f}")
    return "\n".join(lines)


@click.command("ssjf")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="JCT CDF PNG.")
@click.option("--requests", type=int, default=300, show_default=True)
@click.option("--modes", default="continuous,dynamic,none", show_default=True, help="Batching modes to run.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Worker admission limit.")
@click.option("--load", type=float, default=1.3, show_default=True,
              help="Offered load / capacity measured by a closed burst (which underestimates steady capacity).")
@click.option("--aging-tokens-per-s", type=float, default=5.0, show_default=True, help="SSJF aging rate.")
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
def ssjf_command(json_out, plot_out, requests, modes, batch_size, load, aging_tokens_per_s, redis_url):
    """FCFS vs SSJF vs oracle SJF on real prompts and lengths, through the real stack."""
    modes = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(modes) - {"continuous", "dynamic", "none"}
    if unknown:
        raise click.BadParameter(f"unknown modes {sorted(unknown)}", param_hint="--modes")
    report = run_ssjf_bench(requests=requests, modes=modes, batch_size=batch_size, load=load, redis_url=redis_url,
                            json_out=json_out, plot_out=plot_out, aging_tokens_per_s=aging_tokens_per_s)
    click.echo(format_table(report))
