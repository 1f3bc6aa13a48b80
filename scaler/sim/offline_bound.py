"""The offline lower bound: per window, the fewest instances of each pool that meet the SLOs, knowing the future.

Computed from the whole workload before the run, with the simulator's latency model and cold start:

* serving (``mixed``) pool, per window: ceil(interactive prompt + output tokens arriving in the window /
  window length / (the interactive capacity per instance at the ITL SLO (:func:`instance_profile`) ×
  ``utilization``)). At ``utilization`` 1 (no headroom) the plan is a floor that its own replay does not
  meet: arrivals inside a minute are bursty, and a standing queue halves the local autoscalers' batches.
  The bench lowers ``utilization`` until the replay meets the SLOs (docs/scaler.md).
* ``batch`` pool: jobs in deadline order (EDF) take the serving pool's spare engine time (an
  instance-window minus the interactive work on it) between their arrival and deadline, then whole
  batch instance-windows (``window_s`` of engine time each at the batch throughput per instance),
  opened where the batch pool is lowest, which levels it (fewer cold starts).
* an instance that would be off for at most one cold start is kept on instead (restarting costs more).

The policy that replays it (``scaler.policies.offline_bound``) launches every instance one cold start
before its window, so it is ready when the window begins, and bills like any other policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaler.sim.latency import InstanceProfile
from scaler.sim.workload import Requests


@dataclass(frozen=True)
class OfflineSchedule:
    window_s: float
    counts: dict[str, tuple[int, ...]]  # pool -> instances per window, from t = 0
    inputs: dict  # how it was computed (capacities, totals)

    def count_at(self, pool: str, t: float) -> int:
        series = self.counts.get(pool, ())
        w = int(t // self.window_s)
        return series[w] if 0 <= w < len(series) else 0


def serving_need(arrival_s: np.ndarray, tokens: np.ndarray, horizon_s: float, window_s: float, capacity_tokens_per_s: float) -> np.ndarray:
    """Instances per window carrying the window's interactive tokens at full capacity (at least 1)."""
    n = int(math.ceil(horizon_s / window_s))
    load = np.bincount((arrival_s // window_s).astype(int), weights=tokens, minlength=n)[:n] / window_s
    return np.maximum(1, np.ceil(load / capacity_tokens_per_s - 1e-9)).astype(int), load


def batch_fill(
    job_start_s: np.ndarray,
    job_deadline_s: np.ndarray,
    job_work_s: np.ndarray,
    spare_s: np.ndarray,
    window_s: float,
    max_instances: int,
) -> tuple[np.ndarray, np.ndarray]:
    """EDF placement of batch engine time: spare serving time first, then batch instance-windows.

    Jobs in deadline order take the spare engine time of the windows between their arrival and their
    deadline (earliest first), then open batch instance-windows where the batch pool is lowest in
    that range (earliest among equals), levelling the pool: fewer, longer-lived instances, hence
    fewer cold starts. Returns (batch instances per window, work of each job left unplaced: > 0 means
    infeasible within ``max_instances``).
    """
    spare = spare_s.astype(float).copy()
    n = spare.size
    batch = np.zeros(n, dtype=int)
    batch_free = np.zeros(n)  # engine time left on batch instance-windows already opened
    left = np.zeros(job_work_s.size)
    for j in np.argsort(job_deadline_s, kind="stable"):
        need = float(job_work_s[j])
        first = int(job_start_s[j] // window_s)
        last = min(n, int(job_deadline_s[j] // window_s))  # windows ending by the deadline
        if last <= first:
            left[j] = need
            continue
        usable = np.ones(last - first)
        usable[0] = (window_s * (first + 1) - float(job_start_s[j])) / window_s  # the job arrives mid-window
        for pool in (spare, batch_free):
            avail = pool[first:last] * usable
            take = np.minimum(avail, np.clip(need - (np.cumsum(avail) - avail), 0.0, None))
            pool[first:last] -= take / np.where(usable > 0, usable, 1.0)
            need -= float(take.sum())
        while need > 1e-9:
            span = batch[first:last]
            room = np.flatnonzero(span < max_instances)
            if room.size == 0:
                break
            w = first + int(room[np.argmin(span[room])])
            batch[w] += 1
            got = window_s * usable[w - first]
            take = min(need, got)
            batch_free[w] += (got - take) / max(usable[w - first], 1e-12)
            need -= take
        left[j] = max(need, 0.0)
    return batch, left


def keep_through_short_gaps(counts: np.ndarray, gap_windows: int) -> np.ndarray:
    """Raise each window to min(highest of the previous, highest of the next ``gap_windows`` windows).

    An instance off for at most ``gap_windows`` windows between two busy ones stays on instead.
    """
    if gap_windows <= 0 or counts.size == 0:
        return counts.copy()
    n = counts.size
    pad = np.concatenate([np.zeros(gap_windows, dtype=counts.dtype), counts, np.zeros(gap_windows, dtype=counts.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(pad, gap_windows)
    before = windows[:n]  # windows w - gap .. w - 1
    after = windows[gap_windows + 1 : gap_windows + 1 + n]  # windows w + 1 .. w + gap
    return np.maximum(counts, np.minimum(before.max(axis=1), after.max(axis=1)))


def offline_schedule(
    interactive: Requests,
    batch: Requests,
    horizon_s: float,
    interactive_profile: InstanceProfile,
    batch_profile: InstanceProfile,
    cold_start_s: float,
    window_s: float = 60.0,
    max_instances: int = 64,
    utilization: float = 1.0,
) -> OfflineSchedule:
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    tokens = interactive.context_tokens + interactive.generated_tokens
    capacity = interactive_profile.interactive_tokens_per_s * utilization
    serving, load = serving_need(interactive.arrival_s, tokens.astype(float), horizon_s, window_s, capacity)
    serving = np.minimum(serving, max_instances)
    # Engine time the serving pool has left per window, in batch-instance seconds.
    spare_s = np.clip(serving - load / capacity, 0.0, None) * window_s
    jobs = np.unique(batch.job) if batch.job.size else np.zeros(0, dtype=int)
    sizes = np.bincount(batch.job, minlength=jobs.size)[jobs] if jobs.size else np.zeros(0)
    starts = np.array([batch.arrival_s[batch.job == j].min() for j in jobs]) if jobs.size else np.zeros(0)
    deadlines = np.array([batch.deadline_s[batch.job == j].min() for j in jobs]) if jobs.size else np.zeros(0)
    work_s = sizes / batch_profile.batch_rps
    batch_counts, left = batch_fill(starts, deadlines, work_s, spare_s, window_s, max_instances)
    gap = int(math.ceil(cold_start_s / window_s))
    counts = {
        "mixed": tuple(int(x) for x in keep_through_short_gaps(serving, gap)),
        "batch": tuple(int(x) for x in keep_through_short_gaps(batch_counts, gap)),
        "interactive": (),
    }
    instance_s = sum(sum(c) for c in counts.values()) * window_s
    inputs = {
        "window_s": window_s,
        "utilization": utilization,
        "interactive_capacity_tokens_per_s": interactive_profile.interactive_tokens_per_s,
        "planned_tokens_per_s_per_instance": capacity,
        "batch_requests_per_s_per_instance": batch_profile.batch_rps,
        "batch_work_instance_hours": float(work_s.sum() / 3600.0),
        "batch_work_unplaced_s": float(left.sum()),
        "peak_serving": int(max(counts["mixed"], default=0)),
        "peak_batch": int(max(counts["batch"], default=0)),
        "instance_hours_scheduled": instance_s / 3600.0,
    }
    return OfflineSchedule(window_s, counts, inputs)
