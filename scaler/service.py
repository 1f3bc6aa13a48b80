"""The live scaler: observe Redis, run the pure policies, act through an actuator and control messages.

Two loops in one process, as in Chiron:
* local (every ``local.control_period_s``): each worker's batch-size limit from its latency and
  throughput backpressure (``scaler.local_autoscaler``), applied with a Celery control message;
* global (every policy period): instance counts per pool from a ClusterSnapshot (``scaler.policies``),
  applied by the actuator (local processes, Docker, Kubernetes).
Every decision is logged with its inputs and reason, kept in Redis for ``sluice scaler status`` and
``GET /v1/scaler/decisions``, and counted for Prometheus.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import redis

from broker import keys
from scaler.config import ScalerConfig
from scaler.local_autoscaler import LocalObservation, LocalState, next_batch_size
from scaler.observe import build_snapshot, default_token_variance, read_raw
from scaler.policies import get_policy
from scaler.state import PoolObservation

log = logging.getLogger(__name__)
DECISIONS_KEPT = 1000
POOLS = ("interactive", "mixed", "batch")


def record_decision(client: redis.Redis, kind: str, payload: dict) -> None:
    entry = json.dumps({"kind": kind, "at": time.time(), **payload}, default=str)
    with client.pipeline() as pipe:
        pipe.lpush(keys.SCALER_DECISIONS, entry)
        pipe.ltrim(keys.SCALER_DECISIONS, 0, DECISIONS_KEPT - 1)
        pipe.hincrby(keys.SCALER_ACTIONS, f"{kind}:{payload.get('pool', '')}:{payload.get('action', '')}", 1)
        pipe.execute()


def read_decisions(client: redis.Redis, limit: int = 50) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(keys.SCALER_DECISIONS, 0, limit - 1)]


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

    # --- local loop: batch sizes -----------------------------------------------------------
    def local_round(self, heartbeats: dict[str, dict[str, str]]) -> None:
        for worker_id, fields in heartbeats.items():
            state = self.local_states.get(worker_id) or LocalState(batch_limit=int(fields.get("admission_limit", 1)))
            itl = fields.get("itl_s", "")
            serves_interactive = "interactive" in fields.get("lanes", "")
            observation = LocalObservation(
                itl_s=float(itl) if itl else None, tokens_per_s=float(fields.get("tokens_per_s", 0) or 0),
                running=int(fields.get("inflight", 0) or 0), itl_slo_s=self.itl_slo_s if serves_interactive else None)
            new_state, decision = next_batch_size(state, observation, self.config.local)
            self.local_states[worker_id] = new_state
            if decision.batch_limit != decision.previous_limit:
                reply = self.celery.control.broadcast(
                    "sluice_set_batch_size", arguments={"batch_size": decision.batch_limit},
                    destination=[worker_id], reply=True, timeout=2)
                log.info("batch size %s: %d -> %d: %s %s", worker_id, decision.previous_limit, decision.batch_limit,
                         decision.reason, reply)
                record_decision(self.client, "batch_size", {
                    "pool": fields.get("pool"), "worker": worker_id, "action": "grow" if decision.batch_limit >
                    decision.previous_limit else "shrink", "from": decision.previous_limit, "to": decision.batch_limit,
                    "reason": decision.reason, "inputs": decision.inputs})
        for gone in set(self.local_states) - set(heartbeats):
            del self.local_states[gone]

    # --- global loop: instance counts ---------------------------------------------------------
    def pools(self) -> dict[str, PoolObservation]:
        observed = {}
        for pool in POOLS:
            observed[pool] = PoolObservation(pool=pool, **dataclasses.asdict(self.actuator.current(pool)))
        return observed

    def global_round(self, raw) -> list:
        snapshot = build_snapshot(raw, self.previous_raw, max_heartbeat_age_s=self.config.max_observation_age_s,
                                  token_variance_per_request=default_token_variance())
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
            raw = read_raw(self.client, self.pools())
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
    workers = {}
    for worker_id in (w.decode() for w in client.zrange(keys.WORKERS, 0, -1)):
        beat = {k.decode(): v.decode() for k, v in client.hgetall(keys.worker_key(worker_id)).items()}
        if beat:
            workers[worker_id] = {k: beat.get(k) for k in ("pool", "admission_limit", "inflight", "itl_s",
                                                            "tokens_per_s", "kv_cache_usage")}
    actions = {k.decode(): int(v) for k, v in client.hgetall(keys.SCALER_ACTIONS).items()}
    return {"workers": workers, "actions": actions, "decisions": read_decisions(client, limit)}

