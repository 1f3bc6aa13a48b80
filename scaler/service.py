"""The live scaler: observe Redis, run the pure policies, act through an actuator and control messages.

Two loops in one process, as in Chiron:
* local (every ``local.control_period_s``): each worker's admission limit from its latency and
  throughput backpressure (``scaler.local_autoscaler``), applied with the Celery control command
  ``sluice_set_admission_limit``;
* global (every policy period): instance counts per pool from a ClusterSnapshot (``scaler.policies``),
  applied by the actuator (local processes, Docker, Kubernetes).
Every decision is logged with its inputs and reason, kept in Redis (``broker.decisions``) for
``sluice scaler status`` and ``GET /v1/scaler/decisions``, and counted for Prometheus.
"""

from __future__ import annotations

import logging
import time

import redis

from broker.decisions import read_action_counts, read_decisions, record_decision
from broker.heartbeat import WorkerHeartbeat, read_heartbeats
from core.names import POOLS, SET_ADMISSION_LIMIT
from core.scaler_config import ScalerConfig
from scaler.local_autoscaler import LocalObservation, LocalState, next_admission_limit
from scaler.observe import RawObservation, build_snapshot, default_token_variance, read_raw
from scaler.policies import get_policy
from scaler.state import ClusterSnapshot, PoolObservation

log = logging.getLogger(__name__)


class ScalerService:
    def __init__(self, client: redis.Redis, celery_app, actuator, policy_name: str, config: ScalerConfig,
                 itl_slo_s: float):
        self.client = client
        self.celery = celery_app
        self.actuator = actuator
        self.policy_name = policy_name
        self.policy = get_policy(policy_name)
        self.policy_state = self.policy.initial_state()
        self.config = config
        self.itl_slo_s = itl_slo_s
        self.local_states: dict[str, LocalState] = {}
        self.previous_raw = None
        self._next_global = 0.0

    # --- local loop: admission limits ----------------------------------------------------------
    def local_round(self, heartbeats: dict[str, WorkerHeartbeat]) -> None:
        for worker_id, beat in heartbeats.items():
            if beat.draining:
                # It admits nothing more, and its control channel may already be closed (a broadcast
                # to it would wait out the reply timeout).
                continue
            state = self.local_states.get(worker_id) or LocalState(admission_limit=beat.admission_limit)
            observation = LocalObservation(
                itl_s=beat.itl_s, tokens_per_s=beat.tokens_per_s, running=beat.inflight,
                itl_slo_s=self.itl_slo_s if "interactive" in beat.lanes else None)
            new_state, decision = next_admission_limit(state, observation, self.config.local)
            self.local_states[worker_id] = new_state
            if decision.admission_limit != decision.previous_limit:
                reply = self.celery.control.broadcast(
                    SET_ADMISSION_LIMIT, arguments={"limit": decision.admission_limit},
                    destination=[worker_id], reply=True, timeout=2)
                log.info("admission limit %s: %d -> %d: %s %s", worker_id, decision.previous_limit,
                         decision.admission_limit, decision.reason, reply)
                record_decision(self.client, "admission_limit", {
                    "pool": beat.pool, "worker": worker_id,
                    "action": "grow" if decision.admission_limit > decision.previous_limit else "shrink",
                    "from": decision.previous_limit, "to": decision.admission_limit,
                    "reason": decision.reason, "inputs": decision.inputs})
        for gone in set(self.local_states) - {w for w, beat in heartbeats.items() if not beat.draining}:
            del self.local_states[gone]

    # --- global loop: instance counts ---------------------------------------------------------
    def pools(self) -> dict[str, PoolObservation]:
        return {pool: self.actuator.current(pool) for pool in POOLS}

    def observe(self) -> RawObservation:
        """One read of the cluster: the actuator's pool counts and what Redis holds."""
        return read_raw(self.client, self.pools())

    def snapshot(self, raw: RawObservation) -> ClusterSnapshot:
        """What the policies see of ``raw`` (rates against the previous global round's read)."""
        return build_snapshot(raw, self.previous_raw, max_heartbeat_age_s=self.config.max_observation_age_s,
                              token_variance_per_request=default_token_variance())

    def global_round(self, raw: RawObservation) -> list:
        snapshot = self.snapshot(raw)
        decisions, self.policy_state = self.policy.decide(snapshot, self.policy_state, self.config)
        for decision in decisions:
            if decision.is_change:
                result = self.actuator.scale(decision.pool, decision.target)
                log.info("%s -> %s", decision.describe(), result.describe())
            else:
                log.debug(decision.describe())
            record_decision(self.client, "instances", {
                "policy": self.policy_name, "pool": decision.pool, "action": decision.action,
                "from": decision.current, "to": decision.target, "reason": decision.reason,
                "inputs": decision.inputs})
        return decisions

    def step(self, now: float) -> None:
        try:
            raw = self.observe()
        except redis.RedisError:
            log.exception("could not observe the cluster: holding")
            return
        self.local_round(raw.heartbeats)
        if now >= self._next_global:
            self._next_global = now + self.policy.period_s(self.config)
            self.global_round(raw)
            self.previous_raw = raw

    def run(self, stop_event=None) -> None:
        period = self.config.local.control_period_s
        log.info("scaler: policy %s, local period %.1fs, global period %.1fs", self.policy_name, period,
                 self.policy.period_s(self.config))
        while stop_event is None or not stop_event.is_set():
            started = time.monotonic()
            self.step(time.time())
            time.sleep(max(0.0, period - (time.monotonic() - started)))


def describe_status(client: redis.Redis, limit: int = 20) -> dict:
    """What ``sluice scaler status`` prints: each live worker, the decision counters, the newest decisions."""
    workers = {worker_id: {"pool": beat.pool, "admission_limit": beat.admission_limit, "inflight": beat.inflight,
                           "draining": beat.draining, "itl_s": beat.itl_s, "tokens_per_s": beat.tokens_per_s,
                           "kv_cache_usage": beat.kv_cache_usage}
               for worker_id, beat in read_heartbeats(client).items()}
    return {"workers": workers, "actions": read_action_counts(client), "decisions": read_decisions(client, limit)}
