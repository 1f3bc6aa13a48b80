"""Time-quantum simulation of a GPU cluster under continuous batching.

Every ``dt_s`` each instance admits queued requests up to its admission limit and KV capacity,
spends prefill time on them (excess carries over to the next quantum as debt, so a long prefill
stalls decoding exactly as it would without chunked prefill), and decodes the rest of the quantum
at the step time of its current batch. Per-request progress is fractional, so the quantum only
limits when admissions happen, not how fast tokens come. Everything per request is a numpy array;
the per-instance loop runs only once per control period (local autoscaler) and global period.

Hot path (profiled with cProfile on the ServeGen day, see docs/scaler.md): all sequences of an
instance advance by the same decode steps, so decode state is per instance, a step clock, and a request
only stores the clock at which it started and the one at which it finishes; KV read, batch sizes and
token counts are per-instance sums updated on admission and removal (``_admit`` / ``_remove``), not
recomputed over every running request each quantum. The batch queue stays in EDF order by merging
(no re-sort), and a handful of admissions runs as a Python heap (``_assign_few``) instead of two
dozen numpy calls on tiny arrays.

The scaling code is the real one: ``scaler.local_autoscaler.next_admission_limit`` per instance every
control period and ``get_policy(name).decide`` on a :class:`ClusterSnapshot` every policy period.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from core.scaler_config import ScalerConfig
from scaler.decision import ScaleDecision
from scaler.local_autoscaler import LocalObservation, LocalState, next_admission_limit
from scaler.policies import Policy, get_policy
from scaler.sim.latency import EngineModel
from scaler.sim.queue import RankedQueue
from scaler.sim.workload import Requests
from scaler.state import ClusterSnapshot, DeadlineGroup, LaneObservation, PoolObservation, WorkerObservation

SMALL_ASSIGN = 24  # up to this many requests, _assign runs a Python heap instead of numpy

POOL_CODE = {"interactive": 0, "batch": 1, "mixed": 2}
POOL_NAME = {v: k for k, v in POOL_CODE.items()}
STARTING, READY, DRAINING, STOPPED = 0, 1, 2, 3


@dataclass
class SimSettings:
    dt_s: float = 0.25
    cold_start_s: float = 60.0
    initial_counts: dict[str, int] = field(default_factory=lambda: {"mixed": 8})
    batch_prior_mean_tokens: float = 28.0
    batch_prior_var_tokens: float = 1.0e4
    # Predicted output tokens of an interactive request at arrival (the lane reports prompt + this).
    interactive_prior_mean_tokens: float = 200.0
    timeline_every_s: float = 10.0
    # Chunked prefill with decode priority: new prompts may take at most this share of a quantum
    # (one prompt always fits, its excess becomes debt), so decoding sequences keep stepping.
    prefill_share: float = 0.6
    # A mixed instance lends at most this share of a quantum to batch prefills, keeping headroom
    # for interactive arrivals (which also preempt batch sequences outright).
    mixed_batch_prefill_share: float = 0.25
    # A worker reports tokens/s over its last 5 s (workers.engine_stats.EngineState.tokens_per_second), not
    # over one control period: a 1-s count swings with how many prefills fell in that second, and the local
    # autoscaler read such swings as a throughput drop after an increase (backpressure), halving the limit.
    throughput_window_s: float = 5.0


@dataclass
class SimResult:
    policy: str
    horizon_s: float
    interactive_ttft_s: np.ndarray
    interactive_itl_s: np.ndarray  # nan for requests that never finished
    interactive_counted: np.ndarray  # bool: arrived early enough to be judged
    batch_finish_s: np.ndarray
    batch_deadline_s: np.ndarray
    gpu_seconds: float
    decisions: list[ScaleDecision]
    decision_times: list[float]
    timeline: dict[str, list]


class ClusterSimulation:
    def __init__(
        self,
        policy: str | Policy,
        config: ScalerConfig,
        engine: EngineModel,
        interactive: Requests,
        batch: Requests,
        horizon_s: float,
        settings: SimSettings | None = None,
    ):
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.policy_name = self.policy.name
        self.policy_state = self.policy.initial_state()
        self.config = config
        self.engine = engine
        self.settings = settings or SimSettings()
        self.horizon_s = horizon_s
        self.n_interactive = interactive.arrival_s.size
        cat = lambda a, b: np.concatenate([a, b])  # noqa: E731
        self.arrival = cat(interactive.arrival_s, batch.arrival_s)
        self.ctx = cat(interactive.context_tokens, batch.context_tokens).astype(float)
        self.gen = cat(interactive.generated_tokens, batch.generated_tokens).astype(float)
        self.deadline = cat(interactive.deadline_s, batch.deadline_s)
        self.job = cat(interactive.job, batch.job)
        n = self.arrival.size
        self.is_batch = np.arange(n) >= self.n_interactive
        self.done = np.zeros(n)  # decode steps completed after the first token (updated when a request stops)
        self.start_clock = np.zeros(n)  # its instance's step clock minus its progress, at admission
        self.finish_clock = np.zeros(n)  # the instance step clock at which it finishes
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.inst = np.full(n, -1)
        self.prefill_tokens = self.ctx.copy()  # grows when a preempted request must recompute
        self.prefill_s = engine.prefill_compute_s(self.prefill_tokens)  # kept in step with prefill_tokens
        self.kv_need = self.ctx + self.gen  # reserved whole at admission, so KV never overflows
        self.n_jobs = int(batch.job.max()) + 1 if batch.job.size else 0
        self.unfinished_per_job = np.bincount(batch.job, minlength=self.n_jobs).astype(float) if self.n_jobs else np.zeros(0)
        self.job_deadline = np.zeros(self.n_jobs)
        if self.n_jobs:
            self.job_deadline[batch.job] = batch.deadline_s
        self.job_arrived = np.zeros(self.n_jobs, dtype=bool)
        # Queued requests per job, for the batch lane's oldest wait: a job's requests arrive together (bulk
        # submission), so the oldest queued one is the earliest job with any queued, an O(jobs) read instead
        # of a scan of a queue that reaches 10^6 requests on the ServeGen day.
        self.job_queued = np.zeros(self.n_jobs)
        self.job_arrival = np.full(self.n_jobs, np.inf)
        if self.n_jobs:
            np.minimum.at(self.job_arrival, batch.job, batch.arrival_s)
        self.jobs_arrive_whole = bool(np.all(batch.arrival_s == self.job_arrival[batch.job])) if self.n_jobs else True
        self.iq = RankedQueue(np.arange(n))  # interactive: FCFS (ids are in arrival order)
        batch_rank = np.zeros(n, dtype=np.int64)
        batch_rank[np.lexsort((np.arange(n), self.deadline))] = np.arange(n)
        self.bq = RankedQueue(batch_rank)  # batch: EDF (deadline, then id)
        self.run_ids = np.zeros(0, dtype=int)
        self.next_interactive = 0
        self.next_batch = self.n_interactive
        self.kv_capacity = engine.kv_capacity_tokens
        # Instances.
        self.pool = np.zeros(0, dtype=int)
        self.status = np.zeros(0, dtype=int)
        self.launched = np.zeros(0)
        self.ready_at = np.zeros(0)
        self.stopped_at = np.zeros(0)
        self.limit = np.zeros(0, dtype=int)
        self.debt = np.zeros(0)
        self.local: list[LocalState] = []
        self.acc_busy = np.zeros(0)  # seconds with work, this control period
        self.acc_steps = np.zeros(0)
        self.acc_tokens = np.zeros(0)
        # Tokens per control period and instance, the last throughput window's worth (a ring, one row per period).
        window = max(1, round(self.settings.throughput_window_s / config.local.control_period_s))
        self.token_history = np.zeros((window, 0))
        self._control_rounds = 0
        self.acc_interactive = np.zeros(0, dtype=bool)
        self.clock = np.zeros(0)  # decode steps done since launch: all running sequences share them
        self.kv_used = np.zeros(0)
        self.ctx_sum = np.zeros(0)
        self.start_sum = np.zeros(0)
        self.n_run = np.zeros(0, dtype=int)
        self.n_run_batch = np.zeros(0, dtype=int)
        self.global_batch_tokens = np.zeros(0)  # batch tokens since the last global period
        self.global_interactive_tokens = np.zeros(0)  # interactive prompt + output tokens, same period
        self.decisions: list[ScaleDecision] = []
        self.decision_times: list[float] = []
        self.timeline: dict[str, list] = {"t": [], "interactive": [], "mixed": [], "batch": [], "arrivals_per_s": [], "batch_queued": []}
        self._arrivals_since = 0
        self._arrivals_since_policy = 0
        self._arrival_tokens_since_policy = 0.0

    # ----------------------------------------------------------------- instances
    def _launch(self, pool: str, count: int, now: float, ready_at: float) -> None:
        grow = lambda a, v: np.concatenate([a, np.full(count, v, dtype=a.dtype)])  # noqa: E731
        self.pool = grow(self.pool, POOL_CODE[pool])
        self.status = grow(self.status, STARTING)
        self.launched = grow(self.launched, now)
        self.ready_at = grow(self.ready_at, ready_at)
        self.stopped_at = grow(self.stopped_at, np.nan)
        self.limit = grow(self.limit, self.config.local.initial_admission_limit)
        self.debt = grow(self.debt, 0.0)
        for name in ("acc_busy", "acc_steps", "acc_tokens", "global_batch_tokens", "global_interactive_tokens"):
            setattr(self, name, grow(getattr(self, name), 0.0))
        self.acc_interactive = grow(self.acc_interactive, False)
        # Per-instance sums over its running requests, kept up to date by _admit / _remove.
        for name in ("clock", "kv_used", "ctx_sum", "start_sum"):
            setattr(self, name, grow(getattr(self, name), 0.0))
        self.n_run = grow(self.n_run, 0)
        self.n_run_batch = grow(self.n_run_batch, 0)
        self.token_history = np.concatenate([self.token_history, np.zeros((self.token_history.shape[0], count))], axis=1)
        self.local.extend(LocalState.initial(self.config.local) for _ in range(count))
        self._next_ready = min(getattr(self, "_next_ready", np.inf), ready_at)

    def _retire(self, pool: str, count: int, now: float, running: np.ndarray) -> None:
        code = POOL_CODE[pool]
        starting = np.flatnonzero((self.pool == code) & (self.status == STARTING))[::-1]
        for i in starting[:count]:
            self.status[i], self.stopped_at[i] = STOPPED, now
        count -= min(count, starting.size)
        if count <= 0:
            return
        ready = np.flatnonzero((self.pool == code) & (self.status == READY))
        for i in ready[np.argsort(running[ready], kind="stable")][:count]:
            self.status[i] = DRAINING

    # ------------------------------------------------------------------ queueing
    def _assign(self, queue: RankedQueue, free: np.ndarray, load: np.ndarray, kv_free: np.ndarray, prefill_left: np.ndarray):
        """Hand the head of ``queue`` to instances, least loaded slot first; returns (ids, instances).

        An instance takes a request only if its KV reservation fits and the prefill already taken
        this quantum is below ``prefill_left`` (so the first one always goes in). The ones offered
        but not taken go back to the head of the queue, in order.
        """
        empty = np.zeros(0, dtype=int)
        if queue.size == 0:
            return empty, empty
        owners = np.flatnonzero(free > 0)
        if owners.size == 0:
            return empty, empty
        counts = free[owners]
        k = min(queue.size, int(counts.sum()))
        cand = queue.take(k)
        if k <= SMALL_ASSIGN:
            ids, slots, refused = self._assign_few(cand, owners, counts, load, kv_free, prefill_left)
            queue.add_front(refused)
            return ids, slots
        if owners.size == 1:
            slots = np.full(k, owners[0])
        else:
            counts = np.minimum(counts, k)  # the k least-loaded slots never use more than k of one instance
            ends = np.cumsum(counts)
            slots = np.repeat(owners, counts)
            # A slot's level is its instance's load plus its rank among that instance's slots; ties go
            # to the lower instance index.
            level = np.repeat(load[owners] - (ends - counts), counts) + np.arange(int(ends[-1]))
            slots = slots[np.argsort(level * free.size + slots, kind="stable")[:k]]
        order = np.argsort(slots, kind="stable")
        s_sorted, c_sorted = slots[order], cand[order]
        first = np.searchsorted(s_sorted, s_sorted, side="left")
        kv = np.cumsum(self.kv_need[c_sorted])
        kv_in_group = kv - (kv[first] - self.kv_need[c_sorted[first]])
        pf_each = self.prefill_s[c_sorted]
        pf = np.cumsum(pf_each)
        pf_before = pf - pf[first] + pf_each[first] - pf_each  # exclusive: prefill taken before this one
        ok = np.empty(k, dtype=bool)
        ok[order] = (kv_in_group <= kv_free[s_sorted]) & (pf_before < prefill_left[s_sorted])
        if ok.all():
            return cand, slots
        queue.add_front(cand[~ok])
        return cand[ok], slots[ok]

    def _assign_few(self, cand, owners, free, load, kv_free, prefill_left):
        """``_assign`` for a few requests, in plain Python: a heap of (load, instance) slots beats
        two dozen numpy calls on tiny arrays. Same result: slot j goes to the j-th request; a request
        that does not fit stays queued but still counts against its instance for the ones after it."""
        heap = [(int(load[i]), int(i)) for i in owners]
        heapq.heapify(heap)
        left = dict(zip(owners.tolist(), free.tolist()))
        kv_need, prefill_s = self.kv_need, self.prefill_s
        kv_sum: dict[int, float] = {}
        pf_sum: dict[int, float] = {}
        taken, slots, rest = [], [], []
        for r in cand.tolist():
            level, i = heapq.heappop(heap)
            left[i] -= 1
            if left[i] > 0:
                heapq.heappush(heap, (level + 1, i))
            kv = kv_sum.get(i, 0.0) + kv_need[r]
            before = pf_sum.get(i, 0.0)
            kv_sum[i], pf_sum[i] = kv, before + prefill_s[r]
            if kv <= kv_free[i] and before < prefill_left[i]:
                taken.append(r)
                slots.append(i)
            else:
                rest.append(r)
        return np.array(taken, dtype=cand.dtype), np.array(slots, dtype=int), np.array(rest, dtype=cand.dtype)

    # ---------------------------------------------------------------------- loop
    def run(self, progress=None) -> SimResult:
        s, cfg = self.settings, self.config
        dt = s.dt_s
        for pool, count in self.initial_counts().items():
            if count:
                self._launch(pool, count, 0.0, 0.0)
        control_every = max(1, round(cfg.local.control_period_s / dt))
        policy_every = max(1, round(self.policy.period_s(cfg) / dt))
        timeline_every = max(1, round(s.timeline_every_s / dt))
        n_quanta = int(np.ceil(self.horizon_s / dt))
        for q in range(n_quanta):
            t = q * dt
            self._arrive(t)
            if t >= self._next_ready:
                self.status[(self.status == STARTING) & (self.ready_at <= t)] = READY
                starting = self.status == STARTING
                self._next_ready = float(self.ready_at[starting].min()) if starting.any() else np.inf
            self._quantum(t, dt)
            if (q + 1) % control_every == 0:
                self._local_control(control_every * dt)
            if (q + 1) % policy_every == 0:
                self._global_control(t + dt, policy_every * dt)
            if (q + 1) % timeline_every == 0:
                self._record(t + dt, timeline_every * dt)
            if progress is not None:
                progress(dt)
        end = self.horizon_s
        billed_until = np.where(np.isnan(self.stopped_at), end, self.stopped_at)
        gpu_seconds = float(np.sum(billed_until - self.launched)) * self.engine.tensor_parallel
        ni = self.n_interactive
        ttft = self.first_token[:ni] - self.arrival[:ni]
        gen = self.gen[:ni]
        itl = np.where(gen > 1, (self.finish[:ni] - self.first_token[:ni]) / np.maximum(gen - 1, 1), 0.0)
        return SimResult(
            policy=self.policy_name,
            horizon_s=end,
            interactive_ttft_s=ttft,
            interactive_itl_s=itl,
            interactive_counted=self.arrival[:ni] < end - 120.0,
            batch_finish_s=self.finish[ni:],
            batch_deadline_s=self.deadline[ni:],
            gpu_seconds=gpu_seconds,
            decisions=self.decisions,
            decision_times=self.decision_times,
            timeline=self.timeline,
        )

    def initial_counts(self) -> dict[str, int]:
        if hasattr(self.policy, "initial_counts"):
            return self.policy.initial_counts(self.config)
        return dict(self.settings.initial_counts)

    def _arrive(self, t: float) -> None:
        end_i = int(np.searchsorted(self.arrival[: self.n_interactive], t, side="left"))
        if end_i > self.next_interactive:
            self.iq.add(np.arange(self.next_interactive, end_i))
            self._arrivals_since += end_i - self.next_interactive
            self._arrivals_since_policy += end_i - self.next_interactive
            self._arrival_tokens_since_policy += float(
                self.ctx[self.next_interactive : end_i].sum()
                + (end_i - self.next_interactive) * self.settings.interactive_prior_mean_tokens
            )
            self.next_interactive = end_i
        end_b = self.n_interactive + int(np.searchsorted(self.arrival[self.n_interactive :], t, side="left"))
        if end_b > self.next_batch:
            new = np.arange(self.next_batch, end_b)
            self.job_arrived[np.unique(self.job[new])] = True
            self.bq.add(new)
            self._count_queued_batch(new, +1)
            self.next_batch = end_b

    def _quantum(self, t: float, dt: float) -> None:
        n_inst = self.pool.size
        ready = self.status == READY
        serving = ready & (self.pool != POOL_CODE["batch"])

        # Interactive first; a mixed instance preempts its batch sequences for waiting interactive ones.
        prefill_left = self.settings.prefill_share * dt - self.debt
        adm_i = inst_i = np.zeros(0, dtype=int)
        if self.iq.size:
            free = np.where(serving, np.maximum(self.limit - self.n_run, 0), 0)
            adm_i, inst_i = self._assign(self.iq, free, self.n_run, self.kv_capacity - self.kv_used, prefill_left)
            self._admit(adm_i, inst_i)
            prefill_left = prefill_left - np.bincount(inst_i, weights=self.prefill_s[adm_i], minlength=n_inst)
        if self.iq.size:
            victims = self._preempt_for_interactive(ready, self.iq.size)
            if victims.size:
                self._remove(victims, self.inst[victims])
                self.inst[victims] = -1
                self.run_ids = self.run_ids[self.inst[self.run_ids] >= 0]
                self.bq.add_front(victims)
                self._count_queued_batch(victims, +1)
                free = np.where(serving, np.maximum(self.limit - self.n_run, 0), 0)
                more, more_inst = self._assign(self.iq, free, self.n_run, self.kv_capacity - self.kv_used, prefill_left)
                self._admit(more, more_inst)
                prefill_left = prefill_left - np.bincount(more_inst, weights=self.prefill_s[more], minlength=n_inst)
                adm_i, inst_i = np.concatenate([adm_i, more]), np.concatenate([inst_i, more_inst])

        # Batch: batch pool always, mixed pool only while no interactive request waits.
        adm_b = inst_b = np.zeros(0, dtype=int)
        if self.bq.size:
            takes_batch = ready & ((self.pool == POOL_CODE["batch"]) | ((self.pool == POOL_CODE["mixed"]) & (self.iq.size == 0)))
            free = np.where(takes_batch, np.maximum(self.limit - self.n_run, 0), 0)
            lend_cap = self.settings.mixed_batch_prefill_share * dt - self.debt
            batch_prefill_left = np.where(self.pool == POOL_CODE["mixed"], np.minimum(prefill_left, lend_cap), prefill_left)
            adm_b, inst_b = self._assign(self.bq, free, self.n_run, self.kv_capacity - self.kv_used, batch_prefill_left)
            self._count_queued_batch(adm_b, -1)
            self._admit(adm_b, inst_b)

        # Time: prefill first (overflow becomes debt), then decode for what is left of the quantum.
        admitted = np.concatenate([adm_i, adm_b]) if adm_b.size else adm_i
        admitted_inst = np.concatenate([inst_i, inst_b]) if adm_b.size else inst_i
        admitted_count = np.bincount(admitted_inst, minlength=n_inst)
        prefill = np.bincount(admitted_inst, weights=self.prefill_s[admitted], minlength=n_inst).astype(float)
        prefill += np.where(admitted_count > 0, self.engine.overhead_s, 0.0)
        budget = dt - self.debt
        decode_time = np.clip(budget - prefill, 0.0, None)
        first_at = t + self.debt + prefill
        self.debt = np.maximum(prefill - budget, 0.0)
        fresh = admitted[np.isnan(self.first_token[admitted])]
        self.first_token[fresh] = first_at[self.inst[fresh]]

        # Every sequence of an instance advances by the same steps, so decode state is per instance:
        # a request's progress is clock - start, its KV read sums to ctx_sum + n_run x clock - start_sum.
        batch_size = self.n_run.astype(float)
        clock_before = self.clock.copy()
        kv_read = self.ctx_sum + batch_size * clock_before - self.start_sum
        step = self.engine.decode_step_s(batch_size, kv_read)
        steps = np.where(batch_size > 0, decode_time / step, 0.0)
        self.clock += steps
        run = self.run_ids
        inst_of = self.inst[run]
        finished_mask = self.finish_clock[run] <= self.clock[inst_of]
        if finished_mask.any():
            fin = run[finished_mask]
            fi = inst_of[finished_mask]
            decode_start = t + dt - decode_time[fi]
            t_fin = decode_start + np.maximum(self.finish_clock[fin] - clock_before[fi], 0.0) * step[fi]
            self.finish[fin] = np.maximum(t_fin, self.first_token[fin])
            self._remove(fin, fi)
            batch_fin = fin[self.is_batch[fin]]
            if batch_fin.size:
                self.unfinished_per_job -= np.bincount(self.job[batch_fin], minlength=self.n_jobs)
            self.run_ids = run[~finished_mask]

        busy = (batch_size > 0) | (prefill > 0)
        self.acc_busy += np.where(busy, dt, 0.0)
        self.acc_steps += steps
        self.acc_tokens += steps * batch_size + admitted_count
        self.global_batch_tokens += steps * self.n_run_batch + np.bincount(inst_b, minlength=n_inst)
        run_inter_count = self.n_run - self.n_run_batch
        self.global_interactive_tokens += steps * run_inter_count + np.bincount(
            inst_i, weights=self.ctx[adm_i], minlength=n_inst
        )
        self.acc_interactive |= run_inter_count > 0

        # Draining instances leave once empty.
        gone = (self.status == DRAINING) & (self.n_run == 0) & (self.debt <= 0)
        self.status[gone], self.stopped_at[gone] = STOPPED, t + dt

    def _count_queued_batch(self, ids: np.ndarray, sign: int) -> None:
        if ids.size and self.n_jobs:
            self.job_queued += sign * np.bincount(self.job[ids], minlength=self.n_jobs)

    def _oldest_queued_batch_arrival(self) -> float:
        if self.jobs_arrive_whole:
            return float(self.job_arrival[self.job_queued > 0].min())
        return float(self.arrival[self.bq.items()].min())

    def _admit(self, ids: np.ndarray, inst: np.ndarray) -> None:
        """Start ``ids`` on ``inst``: they join the running set and their instances' sums."""
        if ids.size == 0:
            return
        n_inst = self.pool.size
        self.inst[ids] = inst
        self.run_ids = np.concatenate([self.run_ids, ids])
        start = self.clock[inst] - self.done[ids]  # a preempted request resumes where it was
        self.start_clock[ids] = start
        self.finish_clock[ids] = start + self.gen[ids] - 1
        self.n_run += np.bincount(inst, minlength=n_inst)
        self.n_run_batch += np.bincount(inst, weights=self.is_batch[ids], minlength=n_inst).astype(int)
        self.kv_used += np.bincount(inst, weights=self.kv_need[ids], minlength=n_inst)
        self.ctx_sum += np.bincount(inst, weights=self.ctx[ids], minlength=n_inst)
        self.start_sum += np.bincount(inst, weights=start, minlength=n_inst)

    def _remove(self, ids: np.ndarray, inst: np.ndarray) -> None:
        """Take finished or preempted ``ids`` out of their instances' sums, recording their progress."""
        n_inst = self.pool.size
        self.done[ids] = self.clock[inst] - self.start_clock[ids]
        self.n_run -= np.bincount(inst, minlength=n_inst)
        self.n_run_batch -= np.bincount(inst, weights=self.is_batch[ids], minlength=n_inst).astype(int)
        self.kv_used -= np.bincount(inst, weights=self.kv_need[ids], minlength=n_inst)
        self.ctx_sum -= np.bincount(inst, weights=self.ctx[ids], minlength=n_inst)
        self.start_sum -= np.bincount(inst, weights=self.start_clock[ids], minlength=n_inst)

    def _preempt_for_interactive(self, ready, waiting: int) -> np.ndarray:
        mixed = np.flatnonzero(ready & (self.pool == POOL_CODE["mixed"]) & (self.n_run_batch > 0))
        if mixed.size == 0:
            return np.zeros(0, dtype=int)
        run = self.run_ids
        batch_run = run[self.is_batch[run]]
        chosen = []
        left = waiting
        for i in mixed:
            if left <= 0:
                break
            mine = batch_run[self.inst[batch_run] == i]
            take = mine[-left:]  # youngest first: least recompute lost
            chosen.append(take)
            left -= take.size
        victims = np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)
        # Recompute preemption: the next prefill covers the prompt and what was generated.
        done = self.clock[self.inst[victims]] - self.start_clock[victims]
        self.prefill_tokens[victims] = self.ctx[victims] + done + 1
        self.prefill_s[victims] = self.engine.prefill_compute_s(self.prefill_tokens[victims])
        return victims

    # ------------------------------------------------------------------ control
    def _local_control(self, period: float) -> None:
        lc, slo = self.config.local, self.config.slo.itl_s
        window = self.token_history.shape[0]
        self.token_history[self._control_rounds % window] = self.acc_tokens
        self._control_rounds += 1
        tokens_per_s = self.token_history.sum(axis=0) / (min(self._control_rounds, window) * period)
        for i in np.flatnonzero((self.status == READY) | (self.status == DRAINING)):
            itl = self.acc_busy[i] / self.acc_steps[i] if self.acc_steps[i] > 0 else None
            obs = LocalObservation(
                itl_s=itl,
                tokens_per_s=float(tokens_per_s[i]),
                running=int(self.n_run[i]),
                itl_slo_s=slo if self.acc_interactive[i] else None,
            )
            self.local[i], _ = next_admission_limit(self.local[i], obs, lc)
            self.limit[i] = self.local[i].admission_limit
        self.acc_busy[:] = 0
        self.acc_steps[:] = 0
        self.acc_tokens[:] = 0
        self.acc_interactive[:] = False

    def snapshot(self, now: float, period: float) -> ClusterSnapshot:
        rb = self.n_run_batch
        ri = self.n_run - rb
        pools = {}
        for name, code in POOL_CODE.items():
            mine = self.pool == code
            pools[name] = PoolObservation(
                pool=name,
                ready=int(np.sum(mine & (self.status == READY))),
                starting=int(np.sum(mine & (self.status == STARTING))),
                draining=int(np.sum(mine & (self.status == DRAINING))),
            )
        workers = tuple(
            WorkerObservation(
                worker_id=str(i),
                pool=POOL_NAME[int(self.pool[i])],
                ready=True,
                running_interactive=int(ri[i]),
                running_batch=int(rb[i]),
                admission_limit=int(self.limit[i]),
                itl_ewma_s=self.local[i].itl_ewma_s,
                batch_tokens_per_s=float(self.global_batch_tokens[i] / period),
                draining=bool(self.status[i] == DRAINING),
                interactive_tokens_per_s=float(self.global_interactive_tokens[i] / period),
            )
            for i in np.flatnonzero((self.status == READY) | (self.status == DRAINING))
        )
        iq = self.iq
        interactive = LaneObservation(
            slo_class="interactive",
            queued=int(iq.size),
            oldest_wait_s=float(now - self.arrival[iq.first()]) if iq.size else 0.0,
            arrival_rate_per_s=self._arrivals_since_policy / period,
            arrival_tokens_per_s=self._arrival_tokens_since_policy / period,
        )
        s = self.settings
        live = np.flatnonzero(self.job_arrived & (self.unfinished_per_job > 0))
        groups = tuple(
            DeadlineGroup(
                deadline=float(self.job_deadline[j]),
                requests=int(self.unfinished_per_job[j]),
                predicted_tokens=float(self.unfinished_per_job[j] * s.batch_prior_mean_tokens),
                predicted_variance=float(self.unfinished_per_job[j] * s.batch_prior_var_tokens),
            )
            for j in live
        )
        batch = LaneObservation(
            slo_class="batch",
            queued=int(self.bq.size),
            oldest_wait_s=float(now - self._oldest_queued_batch_arrival()) if self.bq.size else 0.0,
            deadline_groups=groups,
        )
        return ClusterSnapshot(now=now, observed_at=now, complete=True, pools=pools, workers=workers, interactive=interactive, batch=batch)

    def _global_control(self, now: float, period: float) -> None:
        snap = self.snapshot(now, period)
        decisions, self.policy_state = self.policy.decide(snap, self.policy_state, self.config)
        running = self.n_run.copy()
        for d in decisions:
            if not d.is_change:
                continue
            self.decisions.append(d)
            self.decision_times.append(now)
            if d.target > d.current:
                self._launch(d.pool, d.target - d.current, now, now + self.settings.cold_start_s)
                running = np.concatenate([running, np.zeros(d.target - d.current, dtype=running.dtype)])
            else:
                self._retire(d.pool, d.current - d.target, now, running)
        self.global_batch_tokens[:] = 0
        self.global_interactive_tokens[:] = 0
        self._arrivals_since_policy = 0
        self._arrival_tokens_since_policy = 0.0

    def _record(self, now: float, period: float) -> None:
        billed = self.status != STOPPED
        tl = self.timeline
        tl["t"].append(now)
        for name, code in POOL_CODE.items():
            tl[name].append(int(np.sum(billed & (self.pool == code))))
        tl["arrivals_per_s"].append(self._arrivals_since / period)
        tl["batch_queued"].append(int(self.bq.size))
        self._arrivals_since = 0
