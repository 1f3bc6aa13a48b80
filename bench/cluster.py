"""``sluice bench cluster``: all scaling policies on the same simulated cluster and workload.

Workload: Azure conv trace as interactive traffic (rate x ``rate_scale``), batch jobs with
lengths from the Azure code trace arriving every ``3600 / batch_jobs_per_hour`` s with a deadline.
The simulation runs until the last batch deadline, interactive traffic continuing (trace
repeated), so deferring batch work past the arrival window is paid for, not hidden. Every policy is
simulated over the same horizon and billed over it (GPU-hours = instance lifetime inside the horizon
x GPUs per instance).

``static_peak`` is sized from the workload before the comparison (:func:`size_static_peak`):
an interactive pool = the smallest instance count that serves the interactive traffic alone at
>= ``slo_target`` attainment (found by simulation, i.e. a load test at the trace's peak), plus a batch
pool that admits the largest burst whole when it arrives (KV capacity and max batch size).
"""

from __future__ import annotations

import copy
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import click
import numpy as np

from core.scaler_config import ScalerConfig
from scaler.policies import POLICY_NAMES, get_policy
from scaler.sim.cluster import ClusterSimulation, SimResult, SimSettings
from scaler.sim.latency import InstanceProfile, engine, instance_profile
from scaler.sim.offline_bound import OfflineSchedule, offline_schedule
from scaler.sim.profile import SustainedProfile, sustained_profile
from scaler.sim.workload import (
    Requests,
    ServeGenWorkloadConfig,
    Trace,
    WorkloadConfig,
    batch_length_prior,
    batch_requests,
    interactive_requests,
    load_trace,
    servegen_workload,
)


@dataclass
class BenchSetup:
    hours: float = 1.0
    model: str = "llama-3-70b"
    gpu: str = "h100-80gb"
    tensor_parallel: int = 4
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    settings: SimSettings = field(default_factory=SimSettings)
    scaler: ScalerConfig = field(default_factory=lambda: tuned_scaler_config())
    workload_name: str = "azure-hour"
    servegen: ServeGenWorkloadConfig = field(default_factory=ServeGenWorkloadConfig)
    offline_window_s: float = 60.0  # the offline bound's window (one cold start)
    # Share of the load-test capacity the offline bound plans each instance at; None = the workload's tuned
    # value (OFFLINE_BOUND_UTILIZATION: the highest whose replay meets the SLOs, from a sweep).
    offline_utilization: float | None = None
    # The simulated load test's capacity (scaler.sim.profile), measured once per run by run_cluster_bench.
    sustained: SustainedProfile | None = None


def tuned_scaler_config() -> ScalerConfig:
    """Defaults plus baseline targets tuned (by sweeping) to reach the attainment Chiron reaches; see docs/scaler.md."""
    return ScalerConfig()  # the config defaults already hold the tuned baseline targets


SLO_TARGET = 0.99  # attainment the issue asks for; baselines are tuned / sized to reach it


def _bursts(batch) -> list[np.ndarray]:
    return [np.flatnonzero(batch.job == j) for j in np.unique(batch.job)]


def size_batch_pool_for_bursts(batch, eng, max_admission_limit: int) -> dict:
    """Batch instances that admit the largest burst whole on arrival (every request running at once).

    Per burst: max(ceil(sum of KV reservations (context + output) / KV tokens per instance),
    ceil(requests / max admission limit)). Also returns the smaller "keep-up" size (finish a burst's
    engine time before the next burst arrives) for reference.
    """
    concurrent = keep_up = 0
    starts = sorted({float(a) for a in batch.arrival_s})
    interval = float(np.diff(starts).min()) if len(starts) > 1 else 3600.0
    for ids in _bursts(batch):
        ctx, gen = batch.context_tokens[ids].astype(float), batch.generated_tokens[ids].astype(float)
        kv = math.ceil(float((ctx + gen).sum()) / eng.kv_capacity_tokens)
        slots = math.ceil(ids.size / max_admission_limit)
        concurrent = max(concurrent, kv, slots)
        b = max_admission_limit
        step = float(eng.decode_step_s(b, b * float(np.mean(ctx + gen / 2))))
        engine_s = float(np.sum(eng.prefill_compute_s(ctx))) + ids.size / b * float(np.mean(gen)) * step
        keep_up = max(keep_up, math.ceil(engine_s / interval))
    return {"concurrent": concurrent, "keep_up": keep_up, "burst_interval_s": interval}


def size_interactive_pool_for_peak(setup: "BenchSetup", slo_target: float = SLO_TARGET) -> dict:
    """Smallest dedicated interactive pool reaching ``slo_target`` on the interactive traffic alone (binary search)."""
    tried: dict[int, float] = {}

    def passes(n: int) -> bool:
        probe = copy.deepcopy(setup)
        probe.scaler.static.peak_counts = {"interactive": n, "batch": 0, "mixed": 0}
        summary, _ = simulate("static_peak", probe, interactive_only=True)
        tried[n] = summary["interactive_slo_attainment"]
        return tried[n] >= slo_target

    lo, hi = 0, 8  # lo fails (no capacity), find a passing hi
    while not passes(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return {"interactive": hi, "attainment_tried": dict(sorted(tried.items()))}


def size_static_peak(setup: "BenchSetup") -> dict:
    """Fill ``setup.scaler.static.peak_counts`` from the workload; returns how it was sized."""
    built = build_workload(setup)
    eng = engine(setup.model, setup.gpu, setup.tensor_parallel)
    batch_size = size_batch_pool_for_bursts(built.batch, eng, setup.scaler.local.max_admission_limit)
    inter = size_interactive_pool_for_peak(setup)
    # The same load test gives the per-instance capacity Chiron plans with: the trace's highest
    # per-period (Chiron's period) interactive token arrival rate, served by `inter` instances.
    window = built.interactive.arrival_s < built.arrival_window_s
    inter_req = built.interactive
    period = setup.scaler.chiron.period_s
    tokens = inter_req.context_tokens[window] + float(built.conv.generated_tokens.mean())
    bins = np.bincount((inter_req.arrival_s[window] // period).astype(int), weights=tokens) / period
    capacity = float(bins.max()) / inter["interactive"]
    setup.scaler.chiron.interactive_capacity_tokens_per_s_prior = round(capacity)
    setup.scaler.static.peak_counts = {"interactive": inter["interactive"], "batch": batch_size["concurrent"], "mixed": 0}
    return {**inter, "batch": batch_size["concurrent"], "batch_keep_up": batch_size["keep_up"],
            "burst_interval_s": batch_size["burst_interval_s"],
            "peak_interactive_tokens_per_s": float(bins.max()), "chiron_capacity_tokens_per_s": round(capacity)}


def summarize(result: SimResult, config: ScalerConfig) -> dict:
    counted = result.interactive_counted
    ttft_ok = (result.interactive_ttft_s <= config.slo.ttft_s)[counted]  # nan (never served) compares False
    itl_ok = (result.interactive_itl_s <= config.slo.itl_s)[counted]
    batch_ok = result.batch_finish_s <= result.batch_deadline_s
    hours = result.horizon_s / 3600.0
    ttft = result.interactive_ttft_s[counted]
    itl = result.interactive_itl_s[counted]
    return {
        "interactive_slo_attainment": float(np.mean(ttft_ok & itl_ok)) if ttft_ok.size else 1.0,
        "ttft_attainment": float(np.mean(ttft_ok)) if ttft_ok.size else 1.0,
        "itl_attainment": float(np.mean(itl_ok)) if itl_ok.size else 1.0,
        "batch_deadline_attainment": float(np.mean(batch_ok)) if batch_ok.size else 1.0,
        "gpu_hours": result.gpu_seconds / 3600.0,
        "scale_actions_per_hour": len(result.decisions) / hours,
        "simulated_hours": hours,
        "interactive_requests": int(counted.sum()),
        "batch_requests": int(result.batch_finish_s.size),
        "ttft_p50_s": float(np.nanpercentile(ttft, 50)),
        "ttft_p99_s": float(np.nanpercentile(ttft, 99)),
        "itl_p50_s": float(np.nanpercentile(itl, 50)),
        "itl_p99_s": float(np.nanpercentile(itl, 99)),
        "peak_instances": _peak_instances(result),
        "decisions": [
            {"t": round(t, 1), "pool": d.pool, "from": d.current, "to": d.target, "reason": d.reason}
            for t, d in zip(result.decision_times, result.decisions)
        ],
    }


def _peak_instances(result: SimResult) -> int:
    tl = result.timeline
    totals = [a + b + c for a, b, c in zip(tl["interactive"], tl["mixed"], tl["batch"])]
    return max(totals, default=0)


WORKLOADS = ("azure-hour", "servegen-day", "servegen-week")
SERVEGEN_DAYS = {"servegen-day": 1, "servegen-week": 7}


@dataclass(frozen=True)
class BuiltWorkload:
    interactive: Requests
    batch: Requests
    arrival_window_s: float  # the span whose arrivals the workload is about
    horizon_s: float  # every policy is simulated and billed over this
    conv: Trace
    code: Trace
    info: dict


_BUILT: dict = {}


def build_workload(setup: "BenchSetup") -> BuiltWorkload:
    """The setup's workload, built once per process (every policy sees the same requests)."""
    key = (setup.workload_name, setup.hours, repr(setup.workload), repr(setup.servegen))
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = _build_workload(setup)
    return _BUILT[key]


def _build_workload(setup: "BenchSetup") -> BuiltWorkload:
    conv, code = load_trace("conv"), load_trace("code")
    if setup.workload_name == "azure-hour":
        rng = np.random.default_rng(setup.workload.seed)
        window = setup.hours * 3600.0
        batch = batch_requests(code, window, setup.workload, rng)
        horizon = max(window, float(batch.deadline_s.max()) if batch.deadline_s.size else 0.0)
        interactive = interactive_requests(conv, horizon, setup.workload, rng)
        info = {"name": f"Azure LLM conv trace (2023-11-16, 1 h) x{setup.workload.rate_scale:g}, repeated", **setup.workload.__dict__}
        return BuiltWorkload(interactive, batch, window, horizon, conv, code, info)
    cfg = replace(setup.servegen, days=SERVEGEN_DAYS[setup.workload_name])
    w = servegen_workload(cfg, conv, code)
    a = w.interactive.arrival_s
    in_span = a < w.span_s
    per_10min = np.bincount((a[in_span] // 600).astype(int)) / 600.0
    jobs = np.unique(w.batch.job)
    info = {
        "name": w.name,
        "rate_scale": w.rate_scale,
        "interactive_requests_in_span": int(in_span.sum()),
        "interactive_requests_in_horizon": int(a.size),
        "batch_requests": int(w.batch.arrival_s.size),
        "batch_jobs": int(jobs.size),
        "batch_jobs_by_deadline_s": {str(int(d)): int(np.sum(np.isclose(w.batch.deadline_s[np.searchsorted(w.batch.job, jobs)] - w.batch.arrival_s[np.searchsorted(w.batch.job, jobs)], d))) for d in cfg.batch_deadlines_s},
        "interactive_rps_10min_peak": float(per_10min.max()),
        "interactive_rps_mean": float(in_span.sum() / w.span_s),
        "interactive_rps_10min_trough": float(per_10min.min()),
        "burstiness": "per client: each client's ServeGen rate and fitted inter-arrival distribution (Gamma/Weibull shape) per 10-min window",
        "after_span": "interactive arrivals continue with the trace's following windows until the last batch deadline",
        **{k: v for k, v in cfg.__dict__.items()},
    }
    return BuiltWorkload(w.interactive, w.batch, w.span_s, w.horizon_s, conv, code, info)


def latency_profiles(setup: "BenchSetup", built: BuiltWorkload) -> tuple[InstanceProfile, InstanceProfile]:
    """(interactive, batch) per-instance profiles from the latency model on the traces' length mixes."""
    eng = engine(setup.model, setup.gpu, setup.tensor_parallel)
    itl, most = setup.scaler.slo.itl_s, setup.scaler.local.max_admission_limit
    inter = instance_profile(eng, built.conv.context_tokens, built.conv.generated_tokens, itl, most, setup.settings.dt_s)
    batch = instance_profile(eng, built.code.context_tokens, built.code.generated_tokens, itl, most, setup.settings.dt_s)
    return inter, batch


def sustained_interactive_profile(setup: "BenchSetup") -> SustainedProfile:
    """Interactive capacity per instance as a simulated load test measures it (8 instances, Poisson arrivals
    with the conv trace's lengths, 99% SLO attainment): the latency model's figure, never the workload's."""
    if setup.sustained is None:
        built = build_workload(setup)
        inter, _ = latency_profiles(setup, built)
        settings = replace(setup.settings, interactive_prior_mean_tokens=float(built.conv.generated_tokens.mean()))
        setup.sustained = sustained_profile(
            engine(setup.model, setup.gpu, setup.tensor_parallel), setup.scaler, settings,
            built.conv.context_tokens, built.conv.generated_tokens, inter.interactive_rps,
            attainment=SLO_TARGET, instances=8,
        )
    return setup.sustained


def offline_bound_schedule(setup: "BenchSetup") -> OfflineSchedule:
    built = build_workload(setup)
    inter, batch = latency_profiles(setup, built)
    # The bound plans each instance at what it sustains at the SLO, not at the mean-ITL maximum: planned at
    # the latter it could not meet the SLO it bounds (its replay queued without end).
    inter = replace(inter, interactive_rps=sustained_interactive_profile(setup).requests_per_s)
    limit = setup.scaler.limits("batch").max_instances
    return offline_schedule(
        built.interactive, built.batch, built.horizon_s, inter, batch, setup.scaler.chiron.cold_start_s,
        setup.offline_window_s, limit, utilization=offline_bound_utilization(setup),
    )


# The offline bound plans each instance at this share of the load-test capacity: per workload, the highest of the
# sweep 1.0, 0.95, 0.9, ... whose replay meets 99% of both SLOs (docs/scaler.md, "Offline lower bound"). At 1.0
# the plan is a floor that its own replay misses (bursts inside a minute); both figures are reported.
OFFLINE_BOUND_UTILIZATION = {"azure-hour": 1.0, "servegen-day": 0.8, "servegen-week": 0.8}


def offline_bound_utilization(setup: "BenchSetup") -> float:
    if setup.offline_utilization is not None:
        return setup.offline_utilization
    return OFFLINE_BOUND_UTILIZATION.get(setup.workload_name, 1.0)


def simulate(policy: str, setup: BenchSetup, progress: bool = False, interactive_only: bool = False,
             wrap_policy=None) -> tuple[dict, dict]:
    """One policy over the workload. ``wrap_policy(policy) -> policy`` lets a probe observe its inputs."""
    built = build_workload(setup)
    interactive, batch, horizon = built.interactive, built.batch, built.horizon_s
    if interactive_only:  # same interactive arrivals, no batch, over the arrival window (the trace's peak is in it)
        batch = type(batch)(*(a[:0] for a in (batch.arrival_s, batch.context_tokens, batch.generated_tokens, batch.deadline_s, batch.job)))
        horizon = built.arrival_window_s
        keep = interactive.arrival_s < horizon
        interactive = type(interactive)(*(a[keep] for a in (interactive.arrival_s, interactive.context_tokens, interactive.generated_tokens, interactive.deadline_s, interactive.job)))
    mean, var = batch_length_prior(built.code)
    settings = SimSettings(
        **{
            **setup.settings.__dict__,
            "batch_prior_mean_tokens": mean,
            "batch_prior_var_tokens": var,
            "interactive_prior_mean_tokens": float(built.conv.generated_tokens.mean()),
        }
    )
    settings.cold_start_s = setup.scaler.chiron.cold_start_s
    eng = engine(setup.model, setup.gpu, setup.tensor_parallel)
    chosen = get_policy(policy, schedule=offline_bound_schedule(setup)) if policy == "offline_bound" else get_policy(policy)
    if wrap_policy is not None:
        chosen = wrap_policy(chosen)
    sim = ClusterSimulation(chosen, setup.scaler, eng, interactive, batch, horizon, settings)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(horizon), desc=policy, unit="sim-s", leave=False)
    started, cpu_started = time.time(), time.process_time()
    result = sim.run(progress=(lambda dt: bar.update(dt)) if bar else None)
    if bar:
        bar.close()
    summary = summarize(result, setup.scaler)
    summary["gpus_per_instance"] = setup.tensor_parallel
    summary["sim_wall_s"] = round(time.time() - started, 1)
    summary["sim_cpu_s"] = round(time.process_time() - cpu_started, 1)
    timeline = {k: list(v) for k, v in result.timeline.items()}
    return summary, timeline


def _simulate_job(args):
    return simulate(*args)


DEFAULT_POLICIES = {
    "azure-hour": ("chiron", "static", "static_peak", "utilization", "queue", "offline_bound"),
    # static_peak's sizing is a binary search of interactive-only runs, too slow for a day; the issue's
    # "fewest static instances reaching the same attainment" is `static`, tuned per workload.
    "servegen-day": ("chiron", "static", "utilization", "queue", "offline_bound"),
    "servegen-week": ("chiron", "static", "utilization", "queue", "offline_bound"),
}


def apply_workload_tuning(setup: BenchSetup) -> dict:
    """Per-workload settings: the azure-hour ones are the config defaults; for ServeGen, Chiron's capacity
    prior comes from the latency model and the baselines' knobs from the sweeps in docs/scaler.md."""
    if setup.workload_name == "azure-hour":
        return {}
    built = build_workload(setup)
    inter, batch = latency_profiles(setup, built)
    tuning = {
        # What a simulated `sluice profile` measures (scaler.sim.profile), not the mean-ITL maximum.
        "chiron.interactive_capacity_tokens_per_s_prior": round(sustained_interactive_profile(setup).tokens_per_s),
        # Chiron counts batch work in output tokens (the predicted lengths), so the prior is too.
        "chiron.batch_tokens_per_s_prior": round(batch.batch_rps * float(built.code.generated_tokens.mean())),
    }
    tuning.update(SERVEGEN_TUNING)
    for dotted, value in tuning.items():
        section, name = dotted.split(".")
        setattr(getattr(setup.scaler, section), name, value)
    return tuning


# ServeGen settings (docs/scaler.md, "Results on servegen-day", every value from a full-day sweep): Chiron plans at
# 0.8 of the simulated load test's capacity on 60-s mean arrival rates (single 5-s periods, held for the scale-in
# window, planned for ServeGen's per-client bursts: 3,809 GPU-h; 120-s means or target 0.9 pass 12 actions/h) and
# scales in at most every 720 s (600 s: 10.0 actions/h on the day and 12.6 on the week; 720 s: 8.8 for +1.0% GPU-h;
# 900 s: 7.5 for +3.2%);
# `static` is the fewest mixed instances reaching 99% of both SLOs (21 misses batch deadlines: 98.8%); HPA and KEDA
# take the least costly target of their sweeps that still meets 99% of both (HPA 0.6 and KEDA 40/replica miss).
SERVEGEN_TUNING: dict = {
    "chiron.target_utilization": 0.8,
    "chiron.demand_smoothing_s": 60.0,
    "chiron.scale_in_stabilization_s": 720.0,
    "static.counts": {"mixed": 22, "batch": 0, "interactive": 0},
    "utilization.target_utilization": 0.5,
    "queue.interactive_target_per_replica": 30.0,
}


def run_cluster_bench(
    json_out: str | None,
    plot_out: str | None,
    hours: float = 1.0,
    policies: tuple[str, ...] | None = None,
    setup: BenchSetup | None = None,
    workers: int = 2,
    progress: bool = True,
    workload: str = "azure-hour",
) -> dict:
    setup = setup or BenchSetup(hours=hours, workload_name=workload)
    setup.hours = hours
    policies = policies or DEFAULT_POLICIES[setup.workload_name]
    started = time.time()
    built = build_workload(setup)
    tuning = apply_workload_tuning(setup)
    sizing = size_static_peak(setup) if "static_peak" in policies else None
    bound = offline_bound_schedule(setup) if "offline_bound" in policies else None
    jobs = [(p, setup, progress and workers <= 1) for p in policies]
    # Each policy's summary is printed and saved (to <json>.partial) as it finishes: a day or a week takes
    # long on a shared machine, and a run stopped before the last policy keeps the others' results.
    finished: dict[str, tuple[dict, dict]] = {}

    def keep(policy: str, output: tuple[dict, dict]) -> None:
        finished[policy] = output
        summary = output[0]
        print(f"{policy}: interactive SLO {summary['interactive_slo_attainment']:.4f}, batch deadlines "
              f"{summary['batch_deadline_attainment']:.4f}, {summary['gpu_hours']:.1f} GPU-h, "
              f"{summary['scale_actions_per_hour']:.1f} actions/h", flush=True)
        if json_out:
            with open(json_out + ".partial", "w") as f:
                json.dump({"policies": {p: o[0] for p, o in finished.items()}, "workload": setup.workload_name}, f,
                          indent=2)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_simulate_job, job): job[0] for job in jobs}
            for future in _iter_with_bar(as_completed(futures), len(jobs), progress):
                keep(futures[future], future.result())
    else:
        for job in jobs:
            keep(job[0], _simulate_job(job))
    outputs = [finished[p] for p in policies]
    summaries = {p: summary for p, (summary, _) in zip(policies, outputs)}
    if "offline_bound" in summaries:
        floor = summaries["offline_bound"]["gpu_hours"]
        for s in summaries.values():
            s["gpu_hours_vs_offline_bound"] = s["gpu_hours"] / floor if floor > 0 else None
    report = {
        "policies": summaries,
        "workload": {"kind": setup.workload_name, **built.info},
        "comparisons": comparisons(summaries, setup, sizing),
        "static_peak_sizing": sizing,
        "offline_bound_schedule": bound.inputs if bound else None,
        "sustained_profile": _profile_report(setup.sustained),
        "workload_tuning": tuning,
        "setup": {
            "hours": built.arrival_window_s / 3600.0,
            "model": setup.model,
            "gpu": setup.gpu,
            "tensor_parallel": setup.tensor_parallel,
            "cold_start_s": setup.scaler.chiron.cold_start_s,
            "dt_s": setup.settings.dt_s,
            "horizon_s": built.horizon_s,
            "horizon_note": "every policy is simulated and billed over the same horizon: the arrival window "
            "extended to the last batch deadline, interactive traffic continuing",
        },
        "config": setup.scaler.model_dump(),
        "wall_s": round(time.time() - started, 1),
    }
    if json_out:
        with open(json_out, "w") as f:
            json.dump(report, f, indent=2)
    if plot_out:
        plot_timelines({p: tl for p, (_, tl) in zip(policies, outputs)}, report, plot_out)
    return report


def _profile_report(profile: SustainedProfile | None) -> dict | None:
    if profile is None:
        return None
    return {**profile.__dict__, "share_of_analytic": profile.share_of_analytic,
            "method": "simulated load test: Poisson arrivals with the conv trace's lengths on a static pool of "
            f"{profile.instances} mixed instances, {profile.minutes:g} min per step, bisection on the rate"}


def comparisons(summaries: dict, setup: BenchSetup, sizing: dict | None) -> dict:
    """Chiron against static_peak and against every baseline that reaches the same attainment."""
    out: dict = {"slo_target": SLO_TARGET}
    chiron = summaries.get("chiron")
    if chiron is None:
        return out
    meets = lambda s: s["interactive_slo_attainment"] >= SLO_TARGET and s["batch_deadline_attainment"] >= SLO_TARGET  # noqa: E731
    out["chiron_meets_slo"] = meets(chiron)
    out["chiron_actions_per_hour"] = chiron["scale_actions_per_hour"]
    peak = summaries.get("static_peak")
    if peak is not None:
        out["gpu_hour_saving_vs_static_peak"] = 1 - chiron["gpu_hours"] / peak["gpu_hours"]
        if sizing is not None:
            # The smaller "keep-up" batch pool (finish each burst before the next arrives), GPU-h only (not simulated).
            hours = peak["simulated_hours"]
            keep_up_gpu_h = (sizing["interactive"] + sizing["batch_keep_up"]) * setup.tensor_parallel * hours
            out["static_peak_keep_up_gpu_hours_unsimulated"] = keep_up_gpu_h
            out["gpu_hour_saving_vs_static_peak_keep_up"] = 1 - chiron["gpu_hours"] / keep_up_gpu_h
    # The offline bound knows the future: a yardstick (gpu_hours_vs_offline_bound), not a baseline to beat.
    same = {p: s for p, s in summaries.items() if p not in ("chiron", "static_peak", "offline_bound") and meets(s)}
    out["baselines_meeting_slo"] = sorted(same)
    out["gpu_hour_saving_vs_baselines_meeting_slo"] = {p: 1 - chiron["gpu_hours"] / s["gpu_hours"] for p, s in same.items()}
    out["chiron_fewest_gpu_hours_among_those"] = all(chiron["gpu_hours"] < s["gpu_hours"] for s in same.values())
    bound = summaries.get("offline_bound")
    if bound is not None:
        out["offline_bound_meets_slo"] = meets(bound)
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(report: dict) -> str:
    rows = [
        "| policy | interactive SLO | TTFT | ITL | batch deadlines | GPU-h | vs offline bound | peak GPUs | actions/h |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tp = report["setup"]["tensor_parallel"]
    for name, s in report["policies"].items():
        rows.append(
            f"| {name} | {s['interactive_slo_attainment']:.4f} | {s['ttft_attainment']:.4f} | {s['itl_attainment']:.4f} "
            f"| {s['batch_deadline_attainment']:.3f} | {s['gpu_hours']:.1f} | {_ratio(s.get('gpu_hours_vs_offline_bound'))} "
            f"| {s['peak_instances'] * tp} "
            f"| {s['scale_actions_per_hour']:.1f} |"
        )
    return "\n".join(rows)


def _iter_with_bar(iterable, total: int, progress: bool):
    if not progress:
        yield from iterable
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="policies", unit="policy") as bar:
        for item in iterable:
            bar.update(1)
            yield item


def plot_timelines(timelines: dict[str, dict], report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 2.6 * len(timelines)), sharex=True, squeeze=False)
    tp = report["setup"]["tensor_parallel"]
    for ax, (policy, tl) in zip(axes[:, 0], timelines.items()):
        t = np.asarray(tl["t"]) / 60.0
        stacks = [np.asarray(tl[p]) * tp for p in ("interactive", "mixed", "batch")]
        ax.stackplot(t, *stacks, labels=["interactive GPUs", "mixed GPUs", "batch GPUs"], alpha=0.7, step="post")
        load = ax.twinx()
        load.plot(t, tl["arrivals_per_s"], color="black", lw=0.7, label="interactive req/s")
        load.plot(t, np.asarray(tl["batch_queued"]) / 100.0, color="red", lw=0.7, label="batch queued / 100")
        load.set_ylabel("load")
        s = report["policies"][policy]
        ax.set_title(
            f"{policy}: interactive SLO {s['interactive_slo_attainment']:.3f}, batch {s['batch_deadline_attainment']:.3f}, "
            f"{s['gpu_hours']:.1f} GPU-h, {s['scale_actions_per_hour']:.1f} actions/h",
            fontsize=9,
        )
        ax.set_ylabel("GPUs")
        if ax is axes[0, 0]:
            ax.legend(loc="upper left", fontsize=7)
            load.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command("cluster")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True, help="Write results here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="PNG of instances over time.")
@click.option("--workload", type=click.Choice(WORKLOADS), default="azure-hour", show_default=True,
              help="azure-hour: Azure conv trace x7 for --hours; servegen-day/-week: the ServeGen trace's busiest 24 h / 7 days.")
@click.option("--hours", type=float, default=1.0, show_default=True, help="Arrival window of the azure-hour workload.")
@click.option("--policy", "policies", multiple=True, type=click.Choice(POLICY_NAMES), help="Subset of policies.")
@click.option("--workers", type=int, default=2, show_default=True, help="Policies simulated in parallel.")
@click.option("--bound-utilization", type=click.FloatRange(0.05, 1.0), default=None,
              help="Share of the load-test capacity the offline bound plans at (default: the workload's tuned value).")
def cluster_command(
    json_out: str, plot_out: str | None, workload: str, hours: float, policies: tuple[str, ...], workers: int,
    bound_utilization: float | None,
) -> None:
    """Simulate a GPU cluster under every scaling policy and compare SLO attainment and GPU-hours."""
    setup = BenchSetup(hours=hours, workload_name=workload, offline_utilization=bound_utilization)
    report = run_cluster_bench(json_out, plot_out, hours, tuple(policies) or None, setup=setup, workers=workers,
                               workload=workload)
    click.echo(f"workload: {report['workload']['name']}")
    click.echo(markdown_table(report))
    if report.get("static_peak_sizing"):
        click.echo(f"static_peak sizing: {report['static_peak_sizing']}")
    click.echo(f"comparisons: {json.dumps(report['comparisons'])}")
    click.echo(f"wall {report['wall_s']} s")


if __name__ == "__main__":
    cluster_command()
