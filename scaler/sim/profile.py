"""`sluice profile` for the simulator: a load test of simulated instances, from the latency model alone.

The latency model's analytic capacity (:func:`scaler.sim.latency.instance_profile`) is the rate at which
the *mean* ITL reaches the SLO with a perfectly smooth arrival stream. A simulated worker cannot hold it:
random arrivals bunch prefills together, a long prompt stalls decoding for up to a second, and the local
autoscaler answers such ITL spikes by halving the admission limit (its job: protect the ITL of admitted
requests). Measured on llama-3-70b/TP4/H100 with the conv trace's lengths, 4 instances hold 99.99% of
the interactive SLO at 60% of the analytic rate and 37% at 70%.

So the figure a planner can use is what a load test measures, as `sluice profile` does against a live
worker: Poisson arrivals with a length mix (the trace's token counts, never its arrival times) on a
small static pool, the rate raised by bisection, and the capacity is the highest rate per instance at
which the pool still meets the SLO for ``attainment`` of the requests. The ServeGen day's offline bound
plans with it, and Chiron's capacity prior on that workload is it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from core.scaler_config import ScalerConfig
from scaler.sim.cluster import ClusterSimulation, SimSettings
from scaler.sim.latency import EngineModel
from scaler.sim.workload import Requests


@dataclass(frozen=True)
class SustainedProfile:
    requests_per_s: float  # per instance, at the SLO for `attainment` of requests
    tokens_per_s: float  # prompt + output tokens per second per instance at that rate
    analytic_requests_per_s: float  # the latency model's mean-ITL capacity, for comparison
    attainment: float
    instances: int
    minutes: float
    steps: tuple[tuple[float, float], ...]  # (requests/s per instance, attainment) tried

    @property
    def share_of_analytic(self) -> float:
        return self.requests_per_s / self.analytic_requests_per_s


def pool_attainment(
    eng: EngineModel, config: ScalerConfig, settings: SimSettings, context_tokens: np.ndarray,
    generated_tokens: np.ndarray, rps_per_instance: float, instances: int, minutes: float, seed: int,
) -> float:
    """SLO attainment of a static mixed pool under Poisson arrivals (requests after a 60-s warm-up)."""
    rng = np.random.default_rng(seed)
    duration = minutes * 60.0
    n = int(rng.poisson(rps_per_instance * instances * duration))
    arrival = np.sort(rng.uniform(0.0, duration, n))
    pick = rng.integers(0, context_tokens.size, n)
    interactive = Requests(arrival, context_tokens[pick], generated_tokens[pick], np.full(n, np.inf), np.full(n, -1))
    no_batch = Requests(np.zeros(0), np.zeros(0, dtype=int), np.zeros(0, dtype=int), np.zeros(0), np.zeros(0, dtype=int))
    cfg = copy.deepcopy(config)
    cfg.static.counts = {"mixed": instances, "batch": 0, "interactive": 0}
    result = ClusterSimulation("static", cfg, eng, interactive, no_batch, duration + 300.0, settings).run()  # time for the last answers to finish
    judged = arrival >= 60.0
    ok = (result.interactive_ttft_s <= cfg.slo.ttft_s) & (result.interactive_itl_s <= cfg.slo.itl_s)
    return float(ok[judged].mean()) if judged.any() else 1.0


def sustained_profile(
    eng: EngineModel, config: ScalerConfig, settings: SimSettings, context_tokens: np.ndarray,
    generated_tokens: np.ndarray, analytic_rps: float, attainment: float = 0.99, instances: int = 4,
    minutes: float = 15.0, bisections: int = 7, seed: int = 0,
) -> SustainedProfile:
    """Highest per-instance rate (between 0 and the analytic capacity) at which the pool meets ``attainment``."""
    lo, hi = 0.0, analytic_rps
    steps = []
    for _ in range(bisections):
        mid = (lo + hi) / 2
        got = pool_attainment(eng, config, settings, context_tokens, generated_tokens, mid, instances, minutes, seed)
        steps.append((round(mid, 4), round(got, 5)))
        lo, hi = (mid, hi) if got >= attainment else (lo, mid)
    mean_tokens = float(np.mean(context_tokens) + np.mean(generated_tokens))
    return SustainedProfile(lo, lo * mean_tokens, analytic_rps, attainment, instances, minutes, tuple(steps))
