"""`sluice bench ssjf`: FCFS vs SSJF vs oracle SJF through the full stack (API -> Redis -> Celery -> vLLM).

For each batching mode one worker is started, and the policies replay requests in interleaved rounds:
each round replays its own requests through every policy's API (the queue policy is API configuration),
the order alternating between rounds (fcfs ssjf oracle | oracle ssjf fcfs | ...). Requests are held-out
prompts the proxy never trained on (``--prompts alpaca``: AlpacaEval with Meta-Llama-3-8B-Instruct's
answer lengths; ``arena``: Chatbot Arena with gpt-4-0314's), each length enforced by the benchmark-only
``sluice.bench_output_tokens`` (the queue policy sees only ``max_tokens``: the context's room, or for a
``--capped-share`` of clients a cap from 64-512), arriving at the Azure ``conv`` trace's inter-arrival times
rescaled so the offered load is ``--load`` x the worker's measured capacity. The requests per round follow
from that capacity and ``--budget-minutes``; on a host too slow for a round to queue beyond the worker's
slots at full length, every answer is shortened by one factor (``--length-scale``). Each figure comes with
a 95% interval from the rounds' paired results (bench.ssjf_stats); beside the live numbers the report
gives a throughput-normalized view and bench.queue_model's noise-free model of the same schedules."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import click
import httpx
import numpy as np
from tqdm import tqdm

from bench.processes import BenchCluster
from bench.queue_model import WorkerModel, modelled_mean_jct, running_slots, shortest_first_ceiling
from bench.ssjf_stats import cut_intervals
from bench.workload import CLIENT_CAPS, LENGTH_MODELS, BenchRequest, scaled_arrivals, validation_requests

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
            "prompt_id": request.prompt_id, "max_tokens": request.max_tokens,
            "true_output_tokens": request.true_output_tokens}


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
                                            "predicted_output_tokens", "score", "max_tokens",
                                            "true_output_tokens", "round")
                         if k in r} for r in results],
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


def model_the_queue(mode: str, admission_limit: int, workload: list[BenchRequest], offsets: np.ndarray,
                    ssjf_results: list[dict], capacity_tokens_per_s: float, aging_tokens_per_s: float) -> dict:
    """One round's requests, arrivals, SSJF's predictions and scores through bench.queue_model's noise-free
    worker, its step time set so that a full batch runs at the capacity the closed burst measured (a short
    round's own throughput is no measure of speed: the worker is not full all through it).

    `ssjf_results` are SSJF's results of the round, in the workload's order. SSJF scores by the
    prediction capped at the request's max_tokens, so the model does too."""
    predicted = [min(r["predicted_output_tokens"], request.max_tokens or r["predicted_output_tokens"])
                 for r, request in zip(ssjf_results, workload)]
    step_s = running_slots(mode, admission_limit) / capacity_tokens_per_s
    worker = WorkerModel(mode, admission_limit, step_s=step_s)
    jct = modelled_mean_jct(worker, offsets, predicted, [r.true_output_tokens for r in workload], aging_tokens_per_s)
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
    """Kendall tau between what SSJF ranks by (the prediction capped at max_tokens) and the true length,
    over the replayed requests: a capped client's cap is part of what the policy knows."""
    from scipy.stats import kendalltau

    from predictor.predictor import LengthPredictor

    unique = {r.prompt_id: r.prompt for r in requests}
    predicted = dict(zip(unique, LengthPredictor.load().predict(list(unique.values()))))
    ranked_by = [min(predicted[r.prompt_id], r.max_tokens or predicted[r.prompt_id]) for r in requests]
    return float(kendalltau(ranked_by, [r.true_output_tokens for r in requests])[0])


def requests_per_round(capacity_tokens_per_s: float, mean_tokens: float, slots: int, seconds_left: float,
                       rounds: int, floor: int) -> int:
    """How many requests a round can replay so that rounds x 3 replays fit in `seconds_left`.

    A replay at a load above 1 lasts about its work (requests x mean length / capacity) plus a tail: the
    last requests, running in an emptying batch (half a mean request's time at one slot's share of a full
    batch; the first default run here took 27 s a replay where 23 s of work was planned), and a few
    seconds of waiting for idle."""
    tail_s = 0.5 * mean_tokens * slots / capacity_tokens_per_s + 3.0
    seconds_per_replay = seconds_left / (rounds * len(POLICIES)) - tail_s
    return max(floor, int(seconds_per_replay * capacity_tokens_per_s / mean_tokens))


# A round shorter than this many times the running slots leaves almost no queue to reorder (the queue model
# gives the oracle 2% at 41 requests and 16 slots, 11% at 100): when the budget holds fewer full-length
# requests, the bench shortens every answer instead (``length_scale``).
QUEUE_ROUND_SLOTS = 6
MIN_LENGTH_SCALE = 0.05


def round_size_and_length_scale(capacity_tokens_per_s: float, mean_tokens: float, slots: int, seconds_left: float,
                                rounds: int, requested_scale: float | None = None) -> tuple[int, float]:
    """Requests a round and the factor every answer length is scaled by, so that the rounds fit
    ``seconds_left`` and (unless ``requested_scale`` is given) a round holds ``QUEUE_ROUND_SLOTS`` x
    ``slots`` requests.  Shortening every answer by one factor keeps the order each policy would choose
    (the proxy's view, the clients' caps) and the offered load, which is what decides the cut (the queue
    model's mean-JCT cuts do not change when every length is scaled); it trades the bench's likeness to
    full-length answers for a queue a 10-minute run can build on a slow host."""
    full = requests_per_round(capacity_tokens_per_s, mean_tokens, slots, seconds_left, rounds, floor=slots)
    scale = requested_scale if requested_scale is not None else min(1.0, full / (QUEUE_ROUND_SLOTS * slots))
    scale = min(1.0, max(MIN_LENGTH_SCALE, scale))
    if scale == 1.0:
        return full, 1.0
    return requests_per_round(capacity_tokens_per_s, scale * mean_tokens, slots, seconds_left, rounds,
                              floor=slots), scale


def scale_lengths(requests: list[BenchRequest], scale: float) -> list[BenchRequest]:
    """Each request with its true (forced, and the oracle's) length times ``scale``, at least one token; what
    the client sends as max_tokens is unchanged, so the SSJF score sees what it would see unscaled."""
    if scale == 1.0:
        return list(requests)
    return [replace(r, true_output_tokens=max(1, round(r.true_output_tokens * scale))) for r in requests]


def offered_load(requests: list[BenchRequest], offsets: np.ndarray, capacity_tokens_per_s: float) -> float:
    """Utilisation the arrivals offer: output tokens per second of arrivals over the worker's capacity."""
    span = float(offsets[-1] - offsets[0])
    mean_gap = span / (len(offsets) - 1) if len(offsets) > 1 and span > 0 else 0.0
    # n arrivals span n-1 gaps; the n-th request's own gap is counted at the mean, so the figure is not
    # biased upwards for short rounds.
    if span <= 0:
        return float("inf")
    return sum(r.true_output_tokens for r in requests) / ((span + mean_gap) * capacity_tokens_per_s)


def run_ssjf_bench(*, requests: int | None = None, modes=("continuous",), admission_limit: int = 16, load: float = 1.3,
                   redis_url: str | None = None, json_out: str | None = None, plot_out: str | None = None,
                   aging_tokens_per_s: float = 5.0, rounds: int = 4, prompts: str = "alpaca", capped_share: float = 0.0,
                   budget_minutes: float = 9.0, seed: int = 0, length_scale: float | None = None) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_started = time.monotonic()
    length_model = LENGTH_MODELS[prompts]
    # Enough requests for any sizing: each round takes the next slice, so rounds replay different prompts.
    candidates = validation_requests(max(2000, (requests or 0) * rounds), length_model=length_model, prompts=prompts,
                                     capped_share=capped_share, seed=seed)
    mean_tokens = float(np.mean([r.true_output_tokens for r in candidates]))
    report = {"config": {"requests_per_round": requests, "admission_limit": admission_limit, "load": load,
                         "prompts": prompts, "length_model": length_model, "capped_share": capped_share,
                         "client_caps": list(CLIENT_CAPS), "seed": seed, "arrival_trace": "azure conv",
                         "aging_tokens_per_s": aging_tokens_per_s, "mean_true_output_tokens": mean_tokens,
                         "model": MODEL, "rounds": rounds, "budget_minutes": budget_minutes,
                         "length_scale": length_scale},
              "modes": {}}
    # One worker per mode serves every policy, one policy after another: each replay has the whole
    # machine. (Running the policies at once, one stack each, gave them unequal CPU shares, and in an
    # overloaded queue JCT scales with the stack's own throughput, which swamped the policy effect.)
    # Each policy has its own API process because the queue policy is API configuration.
    cluster = BenchCluster(redis_url)
    replayed: list[BenchRequest] = []
    try:
        for mode_index, mode in enumerate(modes):
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
            slots = running_slots(mode, admission_limit)
            burst = min(len(candidates), 4 * slots)
            capacity_tokens = asyncio.run(measure_capacity(apis["fcfs"], candidates, burst=burst))
            capacity = capacity_tokens / mean_tokens
            cluster.wait_idle()
            # The time left is shared by this mode and the ones after it.
            seconds_left = (budget_minutes * 60 - (time.monotonic() - run_started)) / (len(modes) - mode_index)
            if requests:
                per_round, scale = requests, length_scale or 1.0
            else:
                per_round, scale = round_size_and_length_scale(capacity_tokens, mean_tokens, slots, seconds_left,
                                                               rounds, length_scale)
            scaled_candidates = scale_lengths(candidates, scale)
            scaled_mean_tokens = float(np.mean([r.true_output_tokens for r in scaled_candidates]))
            full_length_capacity_tokens = capacity_tokens
            if scale < 1.0:
                # Short answers spend more of the worker's time per token outside decoding (admission, prefill,
                # events): the load is offered against what the worker sustains on the answers replayed.
                capacity_tokens = asyncio.run(measure_capacity(apis["fcfs"], scaled_candidates, burst=burst))
                cluster.wait_idle()
                if not requests:  # sized again from that capacity and the time now left
                    seconds_left = ((budget_minutes * 60 - (time.monotonic() - run_started))
                                    / (len(modes) - mode_index))
                    per_round = requests_per_round(capacity_tokens, scaled_mean_tokens, slots, seconds_left, rounds,
                                                   floor=slots)
                log.info("%s: every answer length x %.3f (mean %.0f tokens instead of %.0f) so that a round of %d "
                         "requests fits the budget and queues beyond the %d slots", mode, scale, scaled_mean_tokens,
                         mean_tokens, per_round, slots)
            if per_round < 2 * slots:
                log.warning("%s: %d requests a round (capacity %.2f req/s): the queue barely builds beyond the %d "
                            "slots, so the policies differ little; raise --budget-minutes or --requests", mode,
                            per_round, capacity, slots)
            # Arrivals of the requests replayed (their lengths scaled): the same share of the capacity.
            capacity = capacity_tokens / scaled_mean_tokens
            rate = load * capacity
            round_workloads, round_offsets, time_scales, loads = [], [], [], []
            for round_index in range(rounds):
                workload = [scaled_candidates[(round_index * per_round + i) % len(scaled_candidates)]
                            for i in range(per_round)]
                offsets, time_scale = scaled_arrivals("conv", per_round, rate, start=round_index * per_round)
                round_workloads.append(workload)
                round_offsets.append(offsets)
                time_scales.append(time_scale)
                loads.append(offered_load(workload, offsets, capacity_tokens))
            replayed.extend(r for w in round_workloads for r in w)
            mode_report = {"capacity_tokens_per_s": capacity_tokens, "capacity_rps": capacity, "length_scale": scale,
                           "full_length_capacity_tokens_per_s": full_length_capacity_tokens,
                           "mean_replayed_output_tokens": float(np.mean([r.true_output_tokens for w in round_workloads
                                                                         for r in w])),
                           "arrival_rate_rps": rate, "requests_per_round": per_round, "rounds": rounds,
                           "offered_load": float(np.mean(loads)), "offered_load_per_round": loads,
                           "trace_time_scale": float(np.mean(time_scales)), "calibration_burst": burst,
                           "policy_orders": [list(order) for order in round_orders(rounds)]}
            log.info("%s: capacity %.2f req/s (%.0f tokens/s); %d rounds of %d requests at %.2f req/s (offered load "
                     "%.2f)", mode, capacity, capacity_tokens, rounds, per_round, rate, mode_report["offered_load"])
            results: dict[str, list[list[dict]]] = {policy: [] for policy in POLICIES}
            for round_index, order in enumerate(round_orders(rounds)):
                for policy in order:
                    one = asyncio.run(replay(apis[policy], round_workloads[round_index], round_offsets[round_index],
                                             f"{mode}/{policy} round {round_index + 1}/{rounds}"))
                    for result in one:
                        result["round"] = round_index
                    results[policy].append(one)
                    cluster.wait_idle()
                    log.info("%s/%s round %d: mean JCT %.2fs", mode, policy, round_index + 1,
                             float(np.mean([r["jct_s"] for r in one])))
            for policy in POLICIES:
                mode_report[policy] = summarize(results[policy])
            normalize_by_throughput(mode_report)
            modelled = [model_the_queue(mode, admission_limit, round_workloads[i], round_offsets[i],
                                        results["ssjf"][i], capacity_tokens, aging_tokens_per_s)
                        for i in range(rounds)]
            model_jct = {p: float(np.mean([m["mean_jct_s"][p] for m in modelled])) for p in POLICIES}
            mode_report["model"] = {"step_s": float(np.mean([m["step_s"] for m in modelled])),
                                    "slots": modelled[0]["slots"], "mean_jct_s": model_jct, **reductions(model_jct)}
            cluster.stop_processes()
            mode_report.update(reductions({p: mode_report[p]["mean_jct_s"] for p in POLICIES}))
            mode_report["throughput_normalized"] = reductions(
                {p: mode_report[p]["throughput_normalized_mean_jct_s"] for p in POLICIES})
            mode_report["ci95"] = cut_intervals({p: [r["mean_jct_s"] for r in mode_report[p]["rounds"]]
                                                 for p in POLICIES})
            tokens_per_s = [r["throughput_tokens_per_s"] for p in POLICIES for r in mode_report[p]["rounds"]]
            # Same requests, same worker: the policies should see the same throughput. A spread means the
            # machine's load changed between replays; pairing by round takes out what is common to a round.
            mode_report["throughput_spread"] = max(tokens_per_s) / min(tokens_per_s) - 1
            report["modes"][mode] = mode_report
    finally:
        cluster.stop()
    report["proxy_kendall_tau"] = kendall_tau_of_proxy(replayed)
    report["shortest_first_ceiling"] = shortest_first_ceiling([r.true_output_tokens for r in replayed])
    report["wall_s"] = time.monotonic() - run_started
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
    config = report["config"]
    fig.suptitle(f"JCT CDF, {config['prompts']} prompts ({config['length_model']} lengths), "
                 f"proxy tau {report['proxy_kendall_tau']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _interval(bounds) -> str:
    return "unbounded" if bounds is None else f"[{100 * bounds[0]:.1f}%, {100 * bounds[1]:.1f}%]"


def _reduction_line(label: str, numbers: dict) -> str:
    share = numbers["ssjf_share_of_oracle_reduction"]
    return (f"{label}: SSJF {100 * numbers['ssjf_mean_jct_reduction_vs_fcfs']:.1f}% below FCFS, oracle "
            f"{100 * numbers['oracle_mean_jct_reduction_vs_fcfs']:.1f}%; SSJF gets "
            f"{'n/a' if share is None else f'{100 * share:.0f}%'} of oracle's reduction")


def _interval_line(ci: dict) -> str:
    return (f"paired by round, 95% CI over {ci['rounds']} rounds: SSJF cut {_percent(ci['ssjf_cut_mean_of_rounds'])} "
            f"{_interval(ci['ssjf_cut_ci'])}, oracle cut {_percent(ci['oracle_cut_mean_of_rounds'])} "
            f"{_interval(ci['oracle_cut_ci'])}, SSJF's share of the oracle's cut "
            f"{_percent(ci['ssjf_share_of_oracle_cut'])} {_interval(ci['ssjf_share_of_oracle_cut_ci'])}")


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
    config = report["config"]
    for mode, data in report["modes"].items():
        lines.append(f"\n{mode}, {config['prompts']} prompts ({config['length_model']} lengths, capped share "
                     f"{config['capped_share']:g}): capacity {data['capacity_rps']:.2f} req/s by closed burst; "
                     f"{data.get('rounds', 1)} rounds of {data.get('requests_per_round', '?')} requests at "
                     f"{data['arrival_rate_rps']:.2f} req/s, offered load {data.get('offered_load', float('nan')):.2f}"
                     + (f", answer lengths x{data['length_scale']:.3f} (mean {data['mean_replayed_output_tokens']:.0f} "
                        "tokens)" if data.get("length_scale", 1.0) < 1.0 else "") + " "
                     f"(conv trace time x{data['trace_time_scale']:.3f}); throughput spread across replays "
                     f"{100 * data['throughput_spread']:.1f}%")
        if "ci95" in data:
            lines.append("- " + _interval_line(data["ci95"]))
        lines.append("- " + _reduction_line("live, pooled", data))
        lines.append("- " + _reduction_line("live, throughput-normalized", data["throughput_normalized"]))
        lines.append("- " + _reduction_line(f"queue model (step {1000 * data['model']['step_s']:.1f} ms)", data["model"]))
        if len(data["policy_orders"]) > 1:
            for policy in POLICIES:
                lines.append(f"- {policy} by round: " + ", ".join(
                    f"{r['mean_jct_s']:.1f}s at {r['throughput_tokens_per_s']:.0f} tok/s" for r in data[policy]["rounds"]))
    lines.append(f"\nproxy Kendall tau on these requests: {report['proxy_kendall_tau']:.3f}; with every request queued "
                 "at once on one server with a fixed cost per token, shortest-first would cut mean JCT on these "
                 f"lengths by {100 * (1 - report['shortest_first_ceiling']):.0f}%")
    if "wall_s" in report:
        lines.append(f"wall time {report['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


@click.command("ssjf")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="JCT CDF PNG.")
@click.option("--prompts", type=click.Choice(sorted(LENGTH_MODELS)), default="alpaca", show_default=True,
              help="Held-out prompt set: alpaca (Meta-Llama-3-8B-Instruct's lengths) or arena (gpt-4-0314's).")
@click.option("--capped-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests whose client sends max_tokens from 64/128/256/512 (their answers stop there).")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True,
              help="Rounds; each replays its own requests through every policy, the order alternating.")
@click.option("--budget-minutes", type=float, default=9.0, show_default=True,
              help="Wall time the run is sized to: requests per round follow from the measured capacity.")
@click.option("--requests", type=int, default=None, help="Requests per round (default: sized from the budget).")
@click.option("--modes", default="continuous", show_default=True,
              help="Batching modes to run (continuous,dynamic,none).")
@click.option("--admission-limit", type=int, default=16, show_default=True, help="Worker admission limit.")
@click.option("--load", type=float, default=1.3, show_default=True,
              help="Offered load / capacity (a closed burst's tokens/s over the workload's mean output length).")
@click.option("--aging-tokens-per-s", type=float, default=5.0, show_default=True, help="SSJF aging rate.")
@click.option("--length-scale", type=click.FloatRange(MIN_LENGTH_SCALE, 1.0), default=None,
              help="Scale every answer's length by this (default: 1, or less when the budget holds fewer than "
                   f"{QUEUE_ROUND_SLOTS} x the running slots of full-length requests a round).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the capped clients' draw.")
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
def ssjf_command(json_out, plot_out, prompts, capped_share, rounds, budget_minutes, requests, modes, admission_limit,
                 load, aging_tokens_per_s, length_scale, seed, redis_url):
    """FCFS vs SSJF vs oracle SJF on real prompts and lengths, through the real stack."""
    modes = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(modes) - {"continuous", "dynamic", "none"}
    if unknown:
        raise click.BadParameter(f"unknown modes {sorted(unknown)}", param_hint="--modes")
    report = run_ssjf_bench(requests=requests, modes=modes, admission_limit=admission_limit, load=load, redis_url=redis_url,
                            json_out=json_out, plot_out=plot_out, aging_tokens_per_s=aging_tokens_per_s,
                            rounds=rounds, prompts=prompts, capped_share=capped_share, budget_minutes=budget_minutes,
                            seed=seed, length_scale=length_scale)
    click.echo(format_table(report))
