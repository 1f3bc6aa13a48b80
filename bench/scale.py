"""`sluice bench scale`: real load ramped up and down against the live Chiron scaler on this machine.

An API and `sluice scaler run` (local actuator: real `sluice worker` processes, each with its own vLLM
engine) share one Redis.  Interactive load rises from a trickle to more than one worker's configured
capacity and falls back; the run records, every second, the instances per pool, each worker's admission
limit, the queue depth and the offered load, and checks that every request got its full answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import json
import time
from pathlib import Path

import click
import httpx
import numpy as np

from bench.processes import BenchCluster
from broker.decisions import read_decisions
from broker.heartbeat import read_heartbeats
from core import keys

MODEL = "sluice-tiny-llama"
TTFT_SLO_S = 2.0  # the interactive TTFT SLO (SLOConfig.ttft_s's default; the bench does not change it)

# Constants for a 2-core CPU machine and the tiny model (state them; every one is an env override).
LIVE_SCALER_ENV = {
    "SLUICE_SCALER__POOLS": json.dumps({"interactive": {"min_instances": 0, "max_instances": 0},
                                        "mixed": {"min_instances": 1, "max_instances": 2},
                                        "batch": {"min_instances": 0, "max_instances": 1}}),
    "SLUICE_SCALER__CHIRON__PERIOD_S": "2",
    "SLUICE_SCALER__CHIRON__DEMAND_WINDOW_S": "10",
    "SLUICE_SCALER__CHIRON__TREND_WINDOW_S": "20",
    "SLUICE_SCALER__CHIRON__COLD_START_S": "10",
    "SLUICE_SCALER__CHIRON__SCALE_IN_STABILIZATION_S": "20",
    "SLUICE_SCALER__CHIRON__INTERACTIVE_CAPACITY_TOKENS_PER_S_PRIOR": "400",
    "SLUICE_SCALER__MAX_OBSERVATION_AGE_S": "15",
    "SLUICE_SCALER__LOCAL__MIN_ADMISSION_LIMIT": "2",
    "SLUICE_SCALER__LOCAL__INITIAL_ADMISSION_LIMIT": "4",
    "SLUICE_SCALER__LOCAL__MAX_ADMISSION_LIMIT": "32",
    "SLUICE_HEARTBEAT_TTL_S": "15",
    # The tiny CPU model decodes in a few ms per token: an ITL target on that scale makes the local
    # autoscaler's latency backpressure bite here as the 100 ms default does on a GPU.
    "SLUICE_SCALER__SLO__ITL_S": "0.008",
    "SLUICE_ADMISSION_LIMIT": "4",
}


def phases(low_rps: float, high_rps: float, ramp_s: float, high_s: float, cool_s: float) -> list[tuple[float, float]]:
    """(duration, rate) steps: trickle, ramp up, hold high, drop back to a trickle."""
    steps = [(ramp_s / 4, low_rps)]
    steps += [(ramp_s / 4, low_rps + (high_rps - low_rps) * k / 3) for k in range(1, 4)]
    return steps + [(high_s, high_rps), (cool_s, low_rps / 2)]


async def drive_load(base_url: str, schedule, max_tokens: int, results: list, stop_at: list) -> None:
    rng = np.random.default_rng(0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=httpx.Limits(max_connections=500)) as http:
        async def one(index: int):
            body = {"model": MODEL, "prompt": f"load request {index}", "max_tokens": max_tokens, "ignore_eos": True}
            sent = time.time()
            try:
                response = await http.post("/v1/completions", json=body)
                reply = response.json()
                ok = response.status_code == 200 and reply["usage"]["completion_tokens"] == max_tokens
                results.append({"sent": sent, "ok": ok, "status": response.status_code,
                                "ttft_s": reply.get("sluice", {}).get("ttft_s"), "worker": reply.get("sluice", {}).get("worker")})
            except httpx.HTTPError as exc:
                results.append({"sent": sent, "ok": False, "status": f"{type(exc).__name__}: {exc}"})

        tasks = []
        index = 0
        # Open loop on absolute times: each arrival is due at the previous one's time plus an exponential gap,
        # so a loop slowed by a busy host catches up instead of silently offering less load (it offered about
        # half of 6 req/s on this 2-core machine when it slept each gap from whenever it woke up).
        due = time.time()
        for duration, rate in schedule:
            end = due + duration
            if rate <= 0:
                due = end
                continue
            while True:
                due += rng.exponential(1 / rate)
                if due >= end:
                    due = end
                    break
                await asyncio.sleep(max(0.0, due - time.time()))
                tasks.append(asyncio.create_task(one(index)))
                index += 1
        stop_at.append(time.time())
        await asyncio.gather(*tasks)


def profile_capacity(cluster: BenchCluster, base_url: str, max_tokens: int, progress: bool) -> dict:
    """`sluice profile` on one worker started for it (stopped after), so Chiron plans with the capacity this
    machine really has rather than the prior.  Returns the profile, or why there is none."""
    from core.scaler_config import ScalerConfig, SLOConfig
    from core.settings import Settings
    from scaler.capacity_profile import NoStepWithinSLO
    from scaler.profiler import profile

    worker = cluster.start_worker("profile@bench")
    settings = Settings(redis_url=cluster.redis_url, scaler=ScalerConfig(
        slo=SLOConfig(itl_s=float(LIVE_SCALER_ENV["SLUICE_SCALER__SLO__ITL_S"]))))
    try:
        result = profile(settings, base_url, concurrencies=[1, 2, 4, 8], step_s=10, max_tokens=max_tokens,
                         prompt_words=4, echo=(lambda line: click.echo(line, err=True)) if progress else (lambda _: None))
        return {"tokens_per_s": result.tokens_per_s, "concurrency": result.concurrency,
                "steps": [dataclasses.asdict(step) for step in result.steps]}
    except NoStepWithinSLO as exc:
        return {"tokens_per_s": None, "reason": str(exc)}
    finally:
        worker.stop(timeout=60)
        cluster.processes.remove(worker)
        cluster.redis.delete(keys.worker_key("profile@bench"))
        cluster.redis.zrem(keys.WORKERS, "profile@bench")


def phase_of(sent_at: float, started: float, ramp_s: float, high_s: float) -> str:
    """``before`` the load rises (the trickle), ``during`` the ramp and the peak, ``after`` it."""
    offset = sent_at - started
    if offset < ramp_s / 4:
        return "before"
    return "during" if offset < ramp_s + high_s else "after"


def attainment_by_phase(results: list[dict], started: float, ramp_s: float, high_s: float,
                        ttft_slo_s: float) -> dict:
    """Per phase: requests, the share answered in full within the TTFT SLO, TTFT p50/p90 (pure)."""
    out = {}
    for phase in ("before", "during", "after"):
        chosen = [r for r in results if phase_of(r["sent"], started, ramp_s, high_s) == phase]
        ttfts = [r["ttft_s"] for r in chosen if r.get("ttft_s") is not None]
        met = sum(1 for r in chosen if r["ok"] and r.get("ttft_s") is not None and r["ttft_s"] <= ttft_slo_s)
        out[phase] = {"requests": len(chosen), "slo_attainment": round(met / len(chosen), 4) if chosen else None,
                      "ttft_p50_s": round(float(np.percentile(ttfts, 50)), 3) if ttfts else None,
                      "ttft_p90_s": round(float(np.percentile(ttfts, 90)), 3) if ttfts else None}
    return out


def episode(timeline: list[dict], actions: list[dict], started: float) -> dict:
    """The pressure episode's milestones, in seconds from the load's start (pure): the queue's peak, the first
    scale-out and why, when the added worker first heartbeats, when the queue is empty again after its peak
    with it serving, and the scale-in."""
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - started, 1)

    peak = max(timeline, key=lambda s: s["queued"], default=None)
    outs = [a for a in actions if a["pool"] == "mixed" and a["to"] > a["from"] and a["from"] >= 1]
    scale_out = outs[0] if outs else None
    ready = next((s["t"] for s in timeline if scale_out and s["t"] >= scale_out["at"] and len(s["workers"]) >= 2), None)
    recovered = next((s["t"] for s in timeline if peak and s["t"] > peak["t"] and s["queued"] == 0), None)
    ins = [a for a in actions if a["pool"] == "mixed" and a["to"] < a["from"] and scale_out and a["at"] > scale_out["at"]]
    return {
        "max_queued": peak["queued"] if peak else 0, "max_queued_at_s": rel(peak["t"]) if peak else None,
        "scale_out_at_s": rel(scale_out["at"]) if scale_out else None,
        "scale_out_reason": scale_out["reason"] if scale_out else None,
        "added_worker_ready_at_s": rel(ready),
        "workers_when_queue_recovered": next((len(s["workers"]) for s in timeline if s["t"] == recovered), None),
        "queue_recovered_at_s": rel(recovered),
        "scale_in_at_s": rel(ins[0]["at"]) if ins else None,
    }


def mixed_pool_target(cluster: BenchCluster) -> int | None:
    """The mixed pool's instance count in the scaler's newest decision (holds included)."""
    for decision in read_decisions(cluster.redis, 50):
        if decision["kind"] == "instances" and decision["pool"] == "mixed":
            return decision["to"]
    return None


def sample(cluster: BenchCluster) -> dict:
    workers = {worker_id: {"pool": beat.pool, "admission_limit": beat.admission_limit, "inflight": beat.inflight}
               for worker_id, beat in read_heartbeats(cluster.redis).items()}
    return {"t": time.time(), "workers": workers, "queued": cluster.redis.zcard(keys.lane_key("interactive"))}


def run_scale_bench(*, low_rps: float = 0.5, high_rps: float = 6.0, ramp_s: float = 40, high_s: float = 60,
                    cool_s: float = 90, max_tokens: int = 120, settle_s: float = 90, json_out: str | None = None,
                    plot_out: str | None = None, redis_url: str | None = None, progress: bool = True,
                    profile_first: bool = False, max_admission_limit: int | None = None) -> dict:
    """``max_admission_limit``: the most requests one worker runs at once (default: the local autoscaler's
    32).  At 8, the load's peak (about 12 in flight) queues on one worker until a second is ready: the
    queue and TTFT build, as they do past a GPU worker's capacity."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = dict(LIVE_SCALER_ENV)
    if max_admission_limit is not None:
        env.update(SLUICE_SCALER__LOCAL__MAX_ADMISSION_LIMIT=str(max_admission_limit),
                   SLUICE_MAX_ADMISSION_LIMIT=str(max_admission_limit))
    cluster = BenchCluster(redis_url, extra_env=env)
    timeline: list[dict] = []
    results: list[dict] = []
    measured = None
    try:
        _api, base_url = cluster.start_api("api")
        if profile_first:
            measured = profile_capacity(cluster, base_url, max_tokens, progress)
        scaler = cluster.start("scaler", ["scaler", "run", "--policy", "chiron", "--actuator", "local"])
        cluster.wait(lambda: len(sample(cluster)["workers"]) >= 1, 300, "the first worker", scaler)
        schedule = phases(low_rps, high_rps, ramp_s, high_s, cool_s)
        stop_at: list[float] = []
        started = time.time()

        async def run():
            load = asyncio.create_task(drive_load(base_url, schedule, max_tokens, results, stop_at))
            while not load.done() or time.time() < (stop_at[0] if stop_at else float("inf")) + settle_s:
                timeline.append(await asyncio.to_thread(sample, cluster))
                if progress:
                    last = timeline[-1]
                    click.echo(f"\r t={last['t'] - started:5.0f}s workers={len(last['workers'])} queued={last['queued']}"
                               f" done={len(results)}   ", nl=False, err=True)
                # Done once the scaler is back to one worker: not merely one heartbeat, since a worker it
                # added may still be starting (minutes on a loaded host), and its scale-in is the point.
                if (load.done() and len(timeline[-1]["workers"]) <= 1 and time.time() > stop_at[0] + 10
                        and await asyncio.to_thread(mixed_pool_target, cluster) == 1):
                    break
                await asyncio.sleep(1)
            await load

        asyncio.run(run())
        decisions = read_decisions(cluster.redis, 1000)
    finally:
        cluster.stop()
    counts = [len(s["workers"]) for s in timeline]
    actions = [{**d, "t_s": round(d["at"] - started, 1)} for d in decisions
               if d["kind"] == "instances" and d["action"] != "hold"][::-1]
    limits = sorted({w["admission_limit"] for s in timeline for w in s["workers"].values()})
    ttft_slo_s = TTFT_SLO_S
    report = {
        "config": {"low_rps": low_rps, "high_rps": high_rps, "ramp_s": ramp_s, "high_s": high_s, "cool_s": cool_s,
                   "max_tokens": max_tokens, "scaler_env": env, "ttft_slo_s": ttft_slo_s},
        "capacity_profile": measured,
        "slo_by_phase": attainment_by_phase(results, started, ramp_s, high_s, ttft_slo_s),
        "max_queued": max((s["queued"] for s in timeline), default=0),
        "requests": len(results), "completed_ok": sum(r["ok"] for r in results),
        "lost_or_failed": [r for r in results if not r["ok"]],
        "max_workers": max(counts, default=0), "final_workers": counts[-1] if counts else 0,
        "admission_limits_seen": limits,
        "scale_actions": actions,
        "episode": episode(timeline, actions, started),
        "admission_limit_changes": sum(1 for d in decisions if d["kind"] == "admission_limit"),
        "timeline": [{"t": s["t"] - started, "workers": len(s["workers"]), "queued": s["queued"],
                      "limits": {w: v["admission_limit"] for w, v in s["workers"].items()}} for s in timeline],
        "ttft": [{"t": r["sent"] - started, "ttft_s": r.get("ttft_s")} for r in results
                 if timeline and r.get("ttft_s") is not None],
    }
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2, default=str))
    if plot_out:
        plot_timeline(report, results, plot_out)
    return report


def plot_timeline(report: dict, results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in report["timeline"]]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].step(t, [s["workers"] for s in report["timeline"]], where="post")
    axes[0].set_ylabel("workers (mixed pool)")
    axes[1].plot(t, [s["queued"] for s in report["timeline"]])
    axes[1].set_ylabel("interactive queued")
    axes[2].scatter([r["t"] for r in report["ttft"]], [r["ttft_s"] for r in report["ttft"]], s=4)
    axes[2].axhline(report["config"]["ttft_slo_s"], color="red", linewidth=0.8, label="TTFT SLO")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].legend(fontsize=7)
    for worker in sorted({w for s in report["timeline"] for w in s["limits"]}):
        axes[3].step(t, [s["limits"].get(worker, np.nan) for s in report["timeline"]], where="post", label=worker)
    for action in report["scale_actions"]:  # decisions: scale-out green, scale-in orange
        for ax in axes[:3]:
            ax.axvline(action["t_s"], color="green" if action["to"] > action["from"] else "orange", linestyle=":",
                       linewidth=1)
    axes[3].set_ylabel("admission limit")
    axes[3].set_xlabel("seconds")
    axes[3].legend(fontsize=7)
    fig.suptitle("sluice bench scale: live Chiron scaler under a load ramp")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.command("scale")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None)
@click.option("--high-rps", type=float, default=6.0, show_default=True, help="Peak interactive arrival rate.")
@click.option("--high-s", type=float, default=60.0, show_default=True, help="Seconds at the peak.")
@click.option("--low-rps", type=float, default=0.5, show_default=True, help="Arrival rate before the ramp.")
@click.option("--max-tokens", type=int, default=120, show_default=True,
              help="Tokens each request generates: longer answers make the worker, not the API, the bottleneck.")
@click.option("--redis-url", default=None, help="Redis to use (its database is flushed). Default: embedded Valkey.")
@click.option("--profile/--no-profile", "profile_first", default=True, show_default=True,
              help="Measure the worker's capacity with `sluice profile` first (else Chiron plans with the prior).")
@click.option("--max-admission-limit", type=int, default=8, show_default=True,
              help="Most requests one worker runs at once: 8 makes the peak queue on one worker.")
def scale_command(json_out, plot_out, high_rps, high_s, low_rps, max_tokens, redis_url, profile_first,
                  max_admission_limit):
    """Ramp real load up and down against `sluice scaler run --policy chiron` with local workers."""
    report = run_scale_bench(high_rps=high_rps, high_s=high_s, low_rps=low_rps, max_tokens=max_tokens,
                             json_out=json_out, plot_out=plot_out,
                             redis_url=redis_url, profile_first=profile_first,
                             max_admission_limit=max_admission_limit)
    if report["capacity_profile"] is not None:
        click.echo(f"capacity profile: {report['capacity_profile']}")
    click.echo(f"\nrequests {report['requests']}, completed with full answers {report['completed_ok']}, "
               f"max workers {report['max_workers']}, final workers {report['final_workers']}, "
               f"admission limits seen {report['admission_limits_seen']}, "
               f"admission-limit changes {report['admission_limit_changes']}, max interactive queued "
               f"{report['max_queued']}")
    for phase, figures in report["slo_by_phase"].items():
        click.echo(f"  {phase:>6}: {figures['requests']} requests, TTFT SLO ({report['config']['ttft_slo_s']} s) met by "
                   f"{figures['slo_attainment']}, TTFT p50 {figures['ttft_p50_s']} s, p90 {figures['ttft_p90_s']} s")
    for action in report["scale_actions"]:
        click.echo(f"  t={action['t_s']:.0f}s {action['pool']}: {action['from']} -> {action['to']}: {action['reason']}")
    click.echo(f"episode: {json.dumps(report['episode'])}")
