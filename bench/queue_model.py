"""A noise-free model of one worker's queue, to read `sluice bench ssjf` against.

The live benchmark runs on a shared 2-core machine: its throughput moves by ±10% between replays, and in
an overloaded queue JCT moves several times as much, so live policy differences of a few tens of percent
sit near the noise. This model replays the *same* requests (arrival offsets, true lengths, the proxy's
predictions, the queue policy's scores) through an idealised worker with the benchmark's batching mode
and admission limit, where every engine step takes the same time. Only the schedule differs between
policies, so the model isolates the schedule's effect from machine noise.

It is not an upper bound on the live stack: a real engine's step costs more as the running requests'
contexts grow, so orders that run short requests together also make their steps cheaper, an advantage
the model leaves out (docs/bench-ssjf.md compares the two).

``shortest_first_ceiling`` is the analogous reference for a length distribution alone: every request
queued at once on one server with a fixed cost per token."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from broker.queue_policies import ScoreInput, make_queue_policy


def running_slots(batching_mode: str, admission_limit: int) -> int:
    """Requests a worker runs at once: its admission limit, except one at a time with ``none``."""
    return 1 if batching_mode == "none" else admission_limit


@dataclass(frozen=True)
class WorkerModel:
    batching_mode: str  # continuous | dynamic | none
    admission_limit: int
    step_s: float  # one engine step: one token for every running request

    @property
    def slots(self) -> int:
        return running_slots(self.batching_mode, self.admission_limit)


def completion_times(worker: WorkerModel, arrivals: np.ndarray, output_tokens: np.ndarray,
                     scores: np.ndarray) -> np.ndarray:
    """Seconds from arrival to completion for each request, lowest score served first.

    continuous: a finished request's slot is refilled at the next step. dynamic: a batch is formed from
    what is queued (up to the limit) and runs until its longest member finishes; nobody joins mid-batch.
    none: one request at a time.
    """
    count = len(arrivals)
    order = np.argsort(arrivals, kind="stable")
    finished = np.zeros(count)
    queue: list[tuple[float, int]] = []
    running: dict[int, int] = {}
    now, next_arrival = 0.0, 0
    while next_arrival < count or queue or running:
        while next_arrival < count and arrivals[order[next_arrival]] <= now:
            index = order[next_arrival]
            heapq.heappush(queue, (scores[index], index))
            next_arrival += 1
        may_join = worker.batching_mode == "continuous" or not running
        while may_join and queue and len(running) < worker.slots:
            _, index = heapq.heappop(queue)
            running[index] = int(output_tokens[index])
        if not running:
            now = max(now, arrivals[order[next_arrival]])
            continue
        now += worker.step_s
        for index in list(running):
            running[index] -= 1
            if running[index] <= 0:
                finished[index] = now
                del running[index]
    return finished - arrivals


def policy_scores(policy: str, arrivals: np.ndarray, predicted: np.ndarray, true: np.ndarray,
                  aging_tokens_per_s: float) -> np.ndarray:
    queue_policy = make_queue_policy(policy, aging_tokens_per_s=aging_tokens_per_s)
    return np.array([queue_policy.score(ScoreInput(arrival_time=a, predicted_output_tokens=p, true_output_tokens=t))
                     for a, p, t in zip(arrivals, predicted, true)])


def modelled_mean_jct(worker: WorkerModel, arrivals, predicted, true, aging_tokens_per_s: float,
                      policies=("fcfs", "ssjf", "oracle")) -> dict[str, float]:
    arrivals, predicted, true = (np.asarray(x, dtype=float) for x in (arrivals, predicted, true))
    return {policy: float(completion_times(worker, arrivals, true,
                                           policy_scores(policy, arrivals, predicted, true, aging_tokens_per_s)).mean())
            for policy in policies}


def shortest_first_ceiling(output_tokens) -> float:
    """Mean completion time under shortest-first / under a random order, every request queued at once on
    one server with a fixed cost per token: 1 - this is what ordering alone can cut from mean JCT there."""
    lengths = np.sort(np.asarray(output_tokens, dtype=float))
    count = len(lengths)
    shortest_first = np.cumsum(lengths).mean()
    # Random order: each request's expected completion is its own length plus half of everyone else's.
    random_order = lengths.mean() + (count - 1) / 2 * lengths.mean()
    return float(shortest_first / random_order)
