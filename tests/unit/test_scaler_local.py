from core.scaler_config import LocalAutoscalerConfig
from scaler.local_autoscaler import LocalObservation, LocalState, next_admission_limit

CFG = LocalAutoscalerConfig(additive_increase=4, multiplicative_decrease=0.5, min_admission_limit=8, max_admission_limit=64)


def obs(itl, tps=1000.0, running=10, slo=0.1):
    return LocalObservation(itl_s=itl, tokens_per_s=tps, running=running, itl_slo_s=slo)


def test_grows_additively_under_slo():
    state, decision = next_admission_limit(LocalState(admission_limit=32), obs(0.05), CFG)
    assert state.admission_limit == 36 and decision.backpressure < 1


def test_halves_when_itl_exceeds_slo_and_respects_floor():
    state, _ = next_admission_limit(LocalState(admission_limit=32), obs(0.2), CFG)
    assert state.admission_limit == 16
    state, _ = next_admission_limit(LocalState(admission_limit=10, itl_ewma_s=0.3), obs(0.3), CFG)
    assert state.admission_limit == 8


def test_ceiling():
    state, _ = next_admission_limit(LocalState(admission_limit=62), obs(0.01), CFG)
    assert state.admission_limit == 64


def test_ewma_smooths_single_spike():
    cfg = CFG.model_copy(update={"itl_ewma_alpha": 0.3})
    state, decision = next_admission_limit(LocalState(admission_limit=32, itl_ewma_s=0.03), obs(0.2), cfg)
    assert decision.backpressure < 1 and state.admission_limit == 36


def test_throughput_backpressure_after_increase_when_saturated():
    state, _ = next_admission_limit(LocalState(admission_limit=32), obs(0.03, tps=1000, running=32), CFG)
    assert state.admission_limit == 36 and state.throughput_before_increase == 1000
    state, decision = next_admission_limit(state, obs(0.03, tps=700, running=36), CFG)
    assert decision.inputs["tbp"] > 1 and state.admission_limit == 18


def test_throughput_drop_from_less_demand_is_ignored():
    state, _ = next_admission_limit(LocalState(admission_limit=32), obs(0.03, tps=1000, running=32), CFG)
    state, decision = next_admission_limit(state, obs(0.03, tps=500, running=20), CFG)
    assert decision.inputs["tbp"] == 0 and state.admission_limit == 40


def test_batch_only_worker_has_no_latency_pressure():
    state, decision = next_admission_limit(LocalState(admission_limit=32, itl_ewma_s=0.5), obs(0.5, slo=None), CFG)
    assert decision.inputs["lbp"] == 0 and state.admission_limit == 36


# --- the live scaler's local loop, against a real Redis ---------------------------------------------
def test_live_local_round_records_admission_limit_decisions_and_leaves_draining_workers_alone(machine_redis_url):
    import redis

    from broker.celery_app import create_app
    from broker.decisions import read_decisions
    from broker.heartbeat import WorkerHeartbeat
    from core.scaler_config import ScalerConfig
    from core.settings import Settings
    from scaler.service import ScalerService

    client = redis.Redis.from_url(machine_redis_url)
    client.flushdb()
    config = ScalerConfig(local=CFG)
    # No worker answers the control message: the broadcast waits out its 2-s reply timeout and returns [].
    service = ScalerService(client, create_app(Settings(redis_url=machine_redis_url)), actuator=None,
                            policy_name="chiron", config=config, itl_slo_s=0.1)
    fast = dict(pool="mixed", lanes=("interactive", "batch"), admission_limit=32, inflight=10, itl_s=0.01,
                tokens_per_s=1000.0)
    service.local_round({"serving@h": WorkerHeartbeat(worker_id="serving@h", **fast),
                         "leaving@h": WorkerHeartbeat(worker_id="leaving@h", draining=True, **fast)})
    [decision] = read_decisions(client)
    assert (decision["kind"], decision["worker"], decision["action"], decision["from"], decision["to"]) == \
        ("admission_limit", "serving@h", "grow", 32, 36)
    assert set(service.local_states) == {"serving@h"}  # a draining worker's limit no longer matters
    client.flushdb()
