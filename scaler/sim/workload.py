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
