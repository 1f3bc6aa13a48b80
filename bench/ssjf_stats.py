"""Confidence intervals for `sluice bench ssjf`: pure functions of per-round mean JCTs.

The unit of replication is the round: in one round every policy replays the same requests at the same
arrival times, back to back, so a round's figures are paired, and rounds are independent of each other
(fresh requests, fresh arrivals, their own share of the machine). Requests within one replay are not
independent: they share one queue, so one slow stretch lengthens many JCTs at once, and a bootstrap over
requests would understate the spread. Hence a t-interval over rounds for each cut, and Fieller's interval
for SSJF's share of the oracle's cut (a ratio of two paired means, whose denominator can be near 0).
docs/bench-ssjf.md says why in more words."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of Student's t-interval for the mean of `values`; None with fewer than two."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def fieller_ratio_interval(numerators, denominators, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(ratio of means, low, high) for mean(numerators) / mean(denominators) over paired samples.

    Fieller's interval: the set of ratios r for which mean(num) - r * mean(den) is not significantly
    different from 0. It is bounded only when the denominator's mean is significantly away from 0;
    otherwise (low, high) is (None, None): the data cannot bound the ratio."""
    a = np.asarray(numerators, dtype=float)
    b = np.asarray(denominators, dtype=float)
    if a.size != b.size:
        raise ValueError("numerators and denominators must be paired")
    n = a.size
    a_mean, b_mean = float(a.mean()), float(b.mean())
    ratio = a_mean / b_mean if b_mean != 0 else math.nan
    if n < 2 or b_mean == 0:
        return ratio, None, None
    v11 = float(a.var(ddof=1)) / n
    v22 = float(b.var(ddof=1)) / n
    v12 = float(np.cov(a, b, ddof=1)[0, 1]) / n
    t = stats.t.ppf(0.5 + confidence / 2, n - 1)
    g = t * t * v22 / (b_mean * b_mean)
    if g >= 1:
        return ratio, None, None
    shift = g * v12 / v22 if v22 > 0 else 0.0
    residual = v11 - 2 * ratio * v12 + ratio * ratio * v22 - (g * (v11 - v12 * v12 / v22) if v22 > 0 else 0.0)
    half = t / abs(b_mean) * math.sqrt(max(0.0, residual))
    low, high = (ratio - shift - half) / (1 - g), (ratio - shift + half) / (1 - g)
    return ratio, float(low), float(high)


def round_cuts(per_round_mean_jct: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per round, the share by which SSJF's and the oracle's mean JCT fall below FCFS's in that round."""
    fcfs = np.asarray(per_round_mean_jct["fcfs"], dtype=float)
    return {"ssjf": list(1 - np.asarray(per_round_mean_jct["ssjf"], dtype=float) / fcfs),
            "oracle": list(1 - np.asarray(per_round_mean_jct["oracle"], dtype=float) / fcfs)}


def cut_intervals(per_round_mean_jct: dict[str, list[float]], confidence: float = 0.95) -> dict:
    """The bench's three figures with their intervals, from each policy's per-round mean JCT (rounds
    paired by index): SSJF's and the oracle's mean JCT cut vs FCFS (t-interval over rounds), and SSJF's
    share of the oracle's cut (Fieller). Intervals are [low, high], or None where the data cannot bound
    them (fewer than two rounds; a share whose denominator is not clearly above 0)."""
    cuts = round_cuts(per_round_mean_jct)
    out: dict = {"rounds": len(cuts["ssjf"]), "confidence": confidence, "method": "t over rounds; Fieller for the share",
                 "per_round_ssjf_cut": cuts["ssjf"], "per_round_oracle_cut": cuts["oracle"]}
    for policy in ("ssjf", "oracle"):
        interval = t_interval(cuts[policy], confidence)
        out[f"{policy}_cut_mean_of_rounds"] = float(np.mean(cuts[policy]))
        out[f"{policy}_cut_ci"] = None if interval is None else [interval[1], interval[2]]
    share, low, high = fieller_ratio_interval(cuts["ssjf"], cuts["oracle"], confidence)
    out["ssjf_share_of_oracle_cut"] = None if math.isnan(share) else share
    out["ssjf_share_of_oracle_cut_ci"] = None if low is None else [low, high]
    return out
