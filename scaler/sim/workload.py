"""Benchmark workload built from the Azure LLM inference traces (2023).

Interactive: the ``conv`` trace's arrival times, rate multiplied by ``rate_scale`` by giving each
trace request ``rate_scale`` copies on average (a fractional scale adds one copy with that
probability), each copy jittered by up to +-``jitter_s`` so copies do not coincide; copies draw
their token counts from the trace's joint (context, generated) distribution. Beyond the trace's
duration the arrival pattern repeats.
Batch: ``jobs`` bursts of ``requests_per_job`` requests, lengths drawn from the ``code`` trace,
all submitted at the job's start with one deadline.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[2] / "bench" / "data" / "azure_llm_2023"


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray
    context_tokens: np.ndarray
    generated_tokens: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1])


def load_trace(name: str, data_dir: Path = DATA_DIR) -> Trace:
    with open(data_dir / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = np.array([datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp() for r in rows])
    order = np.argsort(stamps, kind="stable")
    return Trace(
        arrival_s=(stamps - stamps.min())[order],
        context_tokens=np.array([int(r["ContextTokens"]) for r in rows])[order],
        generated_tokens=np.array([int(r["GeneratedTokens"]) for r in rows])[order],
    )


@dataclass(frozen=True)
class Requests:
    arrival_s: np.ndarray
    context_tokens: np.ndarray
    generated_tokens: np.ndarray
    deadline_s: np.ndarray  # inf for interactive
    job: np.ndarray  # -1 for interactive


@dataclass(frozen=True)
class WorkloadConfig:
    rate_scale: float = 7.0
    jitter_s: float = 1.0
    batch_jobs_per_hour: float = 4.0
    batch_requests_per_job: int = 12000
    batch_first_job_s: float = 300.0
    batch_deadline_s: float = 3600.0
    seed: int = 0


def interactive_requests(trace: Trace, duration_s: float, cfg: WorkloadConfig, rng: np.random.Generator) -> Requests:
    period = trace.duration_s
    repeats = int(np.ceil(duration_s / period))
    base = np.concatenate([trace.arrival_s + k * period for k in range(repeats)])
    copies = np.floor(cfg.rate_scale).astype(int) + (rng.random(base.size) < cfg.rate_scale % 1)
    times = np.repeat(base, copies) + rng.uniform(-cfg.jitter_s, cfg.jitter_s, int(copies.sum()))
    times = np.sort(times[(times >= 0) & (times < duration_s)])
    pick = rng.integers(0, trace.arrival_s.size, times.size)
    n = times.size
    return Requests(times, trace.context_tokens[pick], trace.generated_tokens[pick], np.full(n, np.inf), np.full(n, -1))


def batch_requests(trace: Trace, duration_s: float, cfg: WorkloadConfig, rng: np.random.Generator) -> Requests:
    interval = 3600.0 / cfg.batch_jobs_per_hour
    starts = np.arange(cfg.batch_first_job_s, duration_s, interval)
    n = cfg.batch_requests_per_job
    pick = rng.integers(0, trace.arrival_s.size, starts.size * n)
    arrival = np.repeat(starts, n)
    return Requests(
        arrival,
        trace.context_tokens[pick],
        trace.generated_tokens[pick],
        arrival + cfg.batch_deadline_s,
        np.repeat(np.arange(starts.size), n),
    )


def batch_length_prior(trace: Trace) -> tuple[float, float]:
    """Mean and variance of output length: the prediction the simulator hands the scaler (no per-request predictor)."""
    g = trace.generated_tokens.astype(float)
    return float(g.mean()), float(g.var())


# ------------------------------------------------------------------------------------- ServeGen day / week
@dataclass(frozen=True)
class ServeGenWorkloadConfig:
    """A day or week of ServeGen m-large arrivals (its busiest span) with bulk batch jobs.

    The interactive rate is scaled so that the span's busiest 10-minute window carries
    ``peak_interactive_rps``; token counts come from the Azure conv trace (batch: code trace).
    Batch jobs arrive at uniformly random times in the span, each ``batch_job_requests`` (uniform)
    requests submitted at once with a deadline drawn from ``batch_deadlines_s``, until the batch
    requests reach ``batch_per_interactive`` x the span's interactive requests.
    """

    days: int = 1
    peak_interactive_rps: float = 120.0
    batch_per_interactive: float = 1.0 / 3.0
    batch_job_requests: tuple[int, int] = (10_000, 50_000)
    batch_deadlines_s: tuple[float, ...] = (7200.0, 86400.0)
    seed: int = 0


@dataclass(frozen=True)
class ServeGenWorkload:
    interactive: Requests
    batch: Requests
    span_s: float  # the busiest span; arrivals after it continue the trace until the horizon
    horizon_s: float  # span extended to the last batch deadline
    name: str
    rate_scale: float
    start_window: int


def batch_jobs(
    n_requests: int, span_s: float, cfg: ServeGenWorkloadConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_s, requests, deadline_s) per job, sorted by start: job sizes drawn until they cover ``n_requests``."""
    lo, hi = cfg.batch_job_requests
    sizes: list[int] = []
    while sum(sizes) < n_requests:
        sizes.append(int(rng.integers(lo, hi + 1)))
    if sizes and sum(sizes) - n_requests >= lo and len(sizes) > 1:
        sizes[-1] = max(lo, sizes[-1] - (sum(sizes) - n_requests))  # land near the target without a tiny job
    starts = np.sort(rng.uniform(0.0, span_s, len(sizes)))
    deadlines = starts + rng.choice(np.asarray(cfg.batch_deadlines_s, dtype=float), len(sizes))
    return starts, np.asarray(sizes, dtype=int), deadlines


def servegen_workload(
    cfg: ServeGenWorkloadConfig, conv: Trace, code: Trace, windows=None
) -> ServeGenWorkload:
    from scaler.sim import servegen as sg

    cw = windows if windows is not None else sg.load_client_windows()
    rng = np.random.default_rng(cfg.seed)
    span_windows = int(round(cfg.days * 86400.0 / sg.WINDOW_S))
    start = sg.busiest_span(cw.total_rate(), span_windows)
    span_s = span_windows * sg.WINDOW_S
    total = cw.total_rate()
    peak = float(np.take(total, np.arange(start, start + span_windows), mode="wrap").max())
    scale = cfg.peak_interactive_rps / peak
    horizon_s = span_s + max(cfg.batch_deadlines_s)
    n_windows = int(np.ceil(horizon_s / sg.WINDOW_S))
    offset, rate, shape, weibull = sg.window_rows(cw, start, n_windows)
    times = sg.arrivals_in_windows(offset, rate * scale, shape, weibull, rng)
    times = times[times < horizon_s]
    pick = rng.integers(0, conv.arrival_s.size, times.size)
    n = times.size
    interactive = Requests(times, conv.context_tokens[pick], conv.generated_tokens[pick], np.full(n, np.inf), np.full(n, -1))
    in_span = int(np.searchsorted(times, span_s))
    starts, sizes, deadlines = batch_jobs(round(in_span * cfg.batch_per_interactive), span_s, cfg, rng)
    m = int(sizes.sum())
    pick = rng.integers(0, code.arrival_s.size, m)
    batch = Requests(
        np.repeat(starts, sizes), code.context_tokens[pick], code.generated_tokens[pick],
        np.repeat(deadlines, sizes), np.repeat(np.arange(sizes.size), sizes),
    )
    return ServeGenWorkload(interactive, batch, span_s, horizon_s, sg.span_name(start, span_windows), scale, start)
