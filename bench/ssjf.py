"""`sluice bench ssjf`: FCFS vs SSJF vs oracle SJF through the full stack (API -> Redis -> Celery -> vLLM).

For each batching mode one worker is started, and each policy in turn replays the same requests through
an API configured with that queue policy: validation prompts the proxy never trained on, each with
Meta-Llama-3-8B-Instruct's real answer length enforced by the benchmark-only ``sluice.bench_output_tokens``
(the queue policy sees only ``max_tokens``, here the context's room, as a client that names no cap), arriving at
the Azure ``conv`` trace's inter-arrival times rescaled so the offered load is ``--load`` x the worker's
measured capacity. ``--rounds`` repeats the replays in forward then reverse policy order. Beside the live
numbers the report gives a throughput-normalized view and bench.queue_model's noise-free model of the
same schedule."""

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
from bench.queue_model import WorkerModel, modelled_mean_jct, running_slots, shortest_first_ceiling
from bench.workload import LENGTH_MODEL, BenchRequest, scaled_arrivals, validation_requests

log = logging.getLogger(__name__)
POLICIES = ("fcfs", "ssjf", "oracle")
MODEL = "sluice-tiny-llama"


async def _send(http: httpx.AsyncClient, request: BenchRequest) -> dict:
    started = time.time()
    # The answer's real length is forced through a benchmark-only field the queue policy cannot see
    # (SLUICE_BENCH_FIELDS); max_tokens is what a client would send: none (the context's room), or its cap.
    response = await http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": request.prompt}],
        **({"max_tokens": request.max_tokens} if request.max_tokens is not None else {}),
        "sluice": {"oracle_output_tokens": request.true_output_tokens,
                   "bench_output_tokens": request.true_output_tokens},
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


def summarize(rounds: list[list[dict]]) -> dict:
    """One policy's results over its rounds (each a full replay of the same requests): latency percentiles
    over every request of every round, throughput averaged over rounds, and each round on its own."""
    results = [r for one_round in rounds for r in one_round]
    jct = np.array([r["jct_s"] for r in results])
    ttft = np.array([r["ttft_s"] for r in results])
    per_round = []
    for one_round in rounds:
        span = max(r["finished_at"] for r in one_round) - min(r["sent_at"] for r in one_round)
        per_round.append({"mean_jct_s": float(np.mean([r["jct_s"] for r in one_round])),
                          "throughput_rps": len(one_round) / span,
                          "throughput_tokens_per_s": sum(r["output_tokens"] for r in one_round) / span})
    return {
        "mean_jct_s": float(jct.mean()), "p50_jct_s": float(np.percentile(jct, 50)),
        "p90_jct_s": float(np.percentile(jct, 90)), "p99_jct_s": float(np.percentile(jct, 99)),
        "p50_ttft_s": float(np.percentile(ttft, 50)), "p99_ttft_s": float(np.percentile(ttft, 99)),
        "throughput_rps": float(np.mean([r["throughput_rps"] for r in per_round])),
        "throughput_tokens_per_s": float(np.mean([r["throughput_tokens_per_s"] for r in per_round])),
        "requests": len(results), "rounds": per_round, "jct_s": sorted(float(x) for x in jct),
        "per_request": [{k: r[k] for k in ("prompt_id", "sent_at", "jct_s", "ttft_s", "queue_wait_s", "output_tokens",
                                            "predicted_output_tokens", "score")} for r in results],
    }


def normalize_by_throughput(mode_report: dict) -> None:
    """Adds each policy's mean JCT rescaled to the mean throughput of all replays of this mode.

    Replays of the same requests on the same worker should run at the same speed; on a shared machine
    they do not, and an overloaded queue's JCT scales with the inverse of the speed. Rescaling each
    round's mean JCT by (its tokens/s / the mean tokens/s) removes that first-order effect; it is an
    estimate, shown beside the raw numbers, never instead of them."""
    rounds = [r for policy in POLICIES for r in mode_report[policy]["rounds"]]
    mean_rate = float(np.mean([r["throughput_tokens_per_s"] for r in rounds]))
    for policy in POLICIES:
        mode_report[policy]["throughput_normalized_mean_jct_s"] = float(np.mean(
            [r["mean_jct_s"] * r["throughput_tokens_per_s"] / mean_rate for r in mode_report[policy]["rounds"]]))


def model_the_queue(mode: str, admission_limit: int, workload: list[BenchRequest], offsets: np.ndarray, mode_report: dict,
                    aging_tokens_per_s: float) -> dict:
    """The same requests, arrivals, predictions and scores through bench.queue_model's noise-free worker,
    with its step time set so that its full-batch throughput is the live FCFS replays' tokens/s."""
    predicted_by_prompt = {r["prompt_id"]: r["predicted_output_tokens"] for r in mode_report["ssjf"]["per_request"]}
    step_s = running_slots(mode, admission_limit) / mode_report["fcfs"]["throughput_tokens_per_s"]
    worker = WorkerModel(mode, admission_limit, step_s=step_s)
    jct = modelled_mean_jct(worker, offsets, [predicted_by_prompt[r.prompt_id] for r in workload],
                            [r.true_output_tokens for r in workload], aging_tokens_per_s)
    return {"step_s": worker.step_s, "slots": worker.slots, "mean_jct_s": jct, **reductions(jct)}


def reductions(mean_jct: dict) -> dict:
    fcfs, ssjf, oracle = (mean_jct[p] for p in POLICIES)
    return {"ssjf_mean_jct_reduction_vs_fcfs": 1 - ssjf / fcfs, "oracle_mean_jct_reduction_vs_fcfs": 1 - oracle / fcfs,
            "ssjf_share_of_oracle_reduction": ((fcfs - ssjf) / (fcfs - oracle)) if fcfs > oracle else None}


def round_orders(rounds: int) -> list[tuple[str, ...]]:
    """Policy order per round: forwards, then backwards (fcfs ssjf oracle | oracle ssjf fcfs | ...), so a
    drift in machine speed over the run favours no policy."""
    return [POLICIES if i % 2 == 0 else tuple(reversed(POLICIES)) for i in range(rounds)]


async def measure_capacity(base_url: str, requests: list[BenchRequest], burst: int) -> float:
    """Output tokens/s the worker sustains when saturated, from a closed burst (all sent at once).

    Tokens, not requests: the burst's requests need not have the workload's mean length."""
    sample = requests[:burst]
    started = time.time()
    results = await replay(base_url, sample, np.zeros(len(sample)), "calibrating")
    return sum(r["output_tokens"] for r in results) / (max(r["finished_at"] for r in results) - started)


async def warm_up(base_url: str) -> None:
    """One tiny request, so the first measured request pays no one-off cost (predictor load, engine warm-up)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        response = await http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "warm-up"}], "max_tokens": 1,
            "sluice": {"oracle_output_tokens": 1}})
        response.raise_for_status()


def kendall_tau_of_proxy(requests: list[BenchRequest]) -> float:
    from scipy.stats import kendalltau

    from predictor.predictor import LengthPredictor

    unique = {r.prompt_id: r for r in requests}
    predictor = LengthPredictor.load()
    predicted = predictor.predict([r.prompt for r in unique.values()])
    return float(kendalltau(predicted, [r.true_output_tokens for r in unique.values()])[0])


def run_ssjf_bench(*, requests: int = 300, modes=("continuous",), admission_limit: int = 16, load: float = 1.3,
                   redis_url: str | None = None, json_out: str | None = None, plot_out: str | None = None,
                   aging_tokens_per_s: float = 5.0, rounds: int = 1) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workload = validation_requests(requests)
    mean_tokens = float(np.mean([r.true_output_tokens for r in workload]))
    report = {"config": {"requests": requests, "admission_limit": admission_limit, "load": load, "length_model": LENGTH_MODEL,
                         "arrival_trace": "azure conv", "aging_tokens_per_s": aging_tokens_per_s,
                         "mean_true_output_tokens": mean_tokens, "model": MODEL, "rounds": rounds},
              "proxy_kendall_tau": kendall_tau_of_proxy(workload),
              "shortest_first_ceiling": shortest_first_ceiling([r.true_output_tokens for r in workload]), "modes": {}}
    # One worker per mode serves every policy, one policy after another: each replay has the whole
    # machine. (Running the policies at once, one stack each, gave them unequal CPU shares, and in an
    # overloaded queue JCT scales with the stack's own throughput, which swamped the policy effect.)
    # Each policy has its own API process because the queue policy is API configuration.
    cluster = BenchCluster(redis_url)
    try:
        for mode in modes:
            cluster.start_worker(f"bench-{mode}@bench", "--batching-mode", mode, "--admission-limit", str(admission_limit),
                                 "--max-admission-limit", str(max(admission_limit, 8)))
            # Every policy's API predicts lengths (FCFS and oracle ignore them), so all three carry the
            # predictor's CPU cost on this shared machine and only the order differs between them.
            apis = {policy: cluster.start_api(f"api-{mode}-{policy}", SLUICE_QUEUE_POLICY=policy,
                                              SLUICE_SSJF_AGING_TOKENS_PER_S=aging_tokens_per_s,
                                              SLUICE_PREDICT_LENGTHS="true", SLUICE_PREDICTOR_FEEDBACK="false",
                                              SLUICE_BENCH_FIELDS="true")[1]
                    for policy in POLICIES}
            for base_url in apis.values():
                asyncio.run(warm_up(base_url))
            burst = min(len(workload), 4 * running_slots(mode, admission_limit))
            capacity_tokens = asyncio.run(measure_capacity(apis["fcfs"], workload, burst=burst))
            capacity = capacity_tokens / mean_tokens
            cluster.wait_idle()
            rate = load * capacity
            offsets, time_scale = scaled_arrivals("conv", len(workload), rate)
            mode_report = {"capacity_tokens_per_s": capacity_tokens, "capacity_rps": capacity,
                           "arrival_rate_rps": rate, "trace_time_scale": time_scale,
                           "policy_orders": [list(order) for order in round_orders(rounds)]}
            log.info("%s: capacity %.2f req/s; replaying at %.2f req/s (conv trace time x%.3f)", mode, capacity,
                     rate, time_scale)
            results: dict[str, list[list[dict]]] = {policy: [] for policy in POLICIES}
            for round_index, order in enumerate(round_orders(rounds)):
                for policy in order:
                    results[policy].append(asyncio.run(
                        replay(apis[policy], workload, offsets, f"{mode}/{policy} round {round_index + 1}/{rounds}")))
                    cluster.wait_idle()
                    log.info("%s/%s round %d: mean JCT %.2fs", mode, policy, round_index + 1,
                             float(np.mean([r["jct_s"] for r in results[policy][-1]])))
            for policy in POLICIES:
                mode_report[policy] = summarize(results[policy])
            normalize_by_throughput(mode_report)
            mode_report["model"] = model_the_queue(mode, admission_limit, workload, offsets, mode_report,
                                                   aging_tokens_per_s)
            cluster.stop_processes()
            mode_report.update(reductions({p: mode_report[p]["mean_jct_s"] for p in POLICIES}))
            mode_report["throughput_normalized"] = reductions(
                {p: mode_report[p]["throughput_normalized_mean_jct_s"] for p in POLICIES})
            tokens_per_s = [r["throughput_tokens_per_s"] for p in POLICIES for r in mode_report[p]["rounds"]]
            # Same requests, same worker: the policies should see the same throughput. A spread means the
            # machine's load changed between replays, and the JCT comparison is that much less clean.
            mode_report["throughput_spread"] = max(tokens_per_s) / min(tokens_per_s) - 1
            report["modes"][mode] = mode_report
    finally:
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


def _reduction_line(label: str, numbers: dict) -> str:
    share = numbers["ssjf_share_of_oracle_reduction"]
    return (f"{label}: SSJF {100 * numbers['ssjf_mean_jct_reduction_vs_fcfs']:.1f}% below FCFS, oracle "
            f"{100 * numbers['oracle_mean_jct_reduction_vs_fcfs']:.1f}%; SSJF gets "
            f"{'n/a' if share is None else f'{100 * share:.0f}%'} of oracle's reduction")


def format_table(report: dict) -> str:
    lines = ["| mode | policy | mean JCT s | throughput-normalized | p50 | p90 | TTFT p50 | TTFT p99 | req/s | tok/s |"
             " model mean JCT s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, data in report["modes"].items():
        for policy in POLICIES:
            m = data[policy]
            lines.append(f"| {mode} | {policy} | {m['mean_jct_s']:.2f} | {m['throughput_normalized_mean_jct_s']:.2f} | "
                         f"{m['p50_jct_s']:.2f} | {m['p90_jct_s']:.2f} | {m['p50_ttft_s']:.2f} | {m['p99_ttft_s']:.2f} | "
                         f"{m['throughput_rps']:.2f} | {m['throughput_tokens_per_s']:.0f} | "
                         f"{data['model']['mean_jct_s'][policy]:.2f} |")
    for mode, data in report["modes"].items():
        lines.append(f"\n{mode} (capacity {data['capacity_rps']:.2f} req/s by closed burst, arrivals "
                     f"{data['arrival_rate_rps']:.2f} req/s, conv trace time x{data['trace_time_scale']:.3f}; "
                     f"throughput spread across replays {100 * data['throughput_spread']:.1f}%)")
        lines.append("- " + _reduction_line("live", data))
        lines.append("- " + _reduction_line("live, throughput-normalized", data["throughput_normalized"]))
        lines.append("- " + _reduction_line(f"queue model (step {1000 * data['model']['step_s']:.1f} ms)", data["model"]))
        if len(data["policy_orders"]) > 1:
            for policy in POLICIES:
                lines.append(f"- {policy} by round: " + ", ".join(
                    f"{r['mean_jct_s']:.1f}s at {r['throughput_tokens_per_s']:.0f} tok/s" for r in data[policy]["rounds"]))
    lines.append(f"\nproxy Kendall tau on these requests: {report['proxy_kendall_tau']:.3f}; with every request queued "
                 "at once on one server with a fixed cost per token, shortest-first would cut mean JCT on these "
                 f"lengths by {100 * (1 - report['shortest_first_ceiling']):.0f}%")
    return "\n".join(lines)


@click.command("ssjf")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="JCT CDF PNG.")
@click.option("--requests", type=int, default=300, show_default=True)
@click.option("--modes", default="continuous,dynamic,none", show_default=True, help="Batching modes to run.")
@click.option("--admission-limit", type=int, default=16, show_default=True, help="Worker admission limit.")
@click.option("--load", type=float, default=1.3, show_default=True,
              help="Offered load / capacity (a closed burst's tokens/s over the workload's mean output length).")
@click.option("--aging-tokens-per-s", type=float, default=5.0, show_default=True, help="SSJF aging rate.")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Replays per policy, in forward then reverse policy order (more rounds: less drift).")
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
def ssjf_command(json_out, plot_out, requests, modes, admission_limit, load, aging_tokens_per_s, rounds, redis_url):
    """FCFS vs SSJF vs oracle SJF on real prompts and lengths, through the real stack."""
    modes = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(modes) - {"continuous", "dynamic", "none"}
    if unknown:
        raise click.BadParameter(f"unknown modes {sorted(unknown)}", param_hint="--modes")
    report = run_ssjf_bench(requests=requests, modes=modes, admission_limit=admission_limit, load=load, redis_url=redis_url,
                            json_out=json_out, plot_out=plot_out, aging_tokens_per_s=aging_tokens_per_s,
                            rounds=rounds)
    click.echo(format_table(report))
