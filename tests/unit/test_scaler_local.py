from scaler.config import LocalAutoscalerConfig
from scaler.local_autoscaler import LocalObservation, LocalState, next_batch_size

CFG = LocalAutoscalerConfig(additive_increase=4, multiplicative_decrease=0.5, min_batch_size=8, max_batch_size=64)


def obs(itl, tps=1000.0, running=10, slo=0.1):
    return LocalObservation(itl_s=itl, tokens_per_s=tps, running=running, itl_slo_s=slo)


def test_grows_additively_under_slo():
    state, decision = next_batch_size(LocalState(batch_limit=32), obs(0.05), CFG)
    assert state.batch_limit == 36 and decision.backpressure < 1


def test_halves_when_itl_exceeds_slo_and_respects_floor():
    state, _ = next_batch_size(LocalState(batch_limit=32), obs(0.2), CFG)
    assert state.batch_limit == 16
    state, _ = next_batch_size(LocalState(batch_limit=10, itl_ewma_s=0.3), obs(0.3), CFG)
    assert state.batch_limit == 8


def test_ceiling():
    state, _ = next_batch_size(LocalState(batch_limit=62), obs(0.01), CFG)
    assert state.batch_limit == 64


def test_ewma_smooths_single_spike():
    cfg = CFG.model_copy(update={"itl_ewma_alpha": 0.3})
    state, decision = next_batch_size(LocalState(batch_limit=32, itl_ewma_s=0.03), obs(0.2), cfg)
    assert decision.backpressure < 1 and state.batch_limit == 36


def test_throughput_backpressure_after_increase_when_saturated():
    state, _ = next_batch_size(LocalState(batch_limit=32), obs(0.03, tps=1000, running=32), CFG)
    assert state.batch_limit == 36 and state.throughput_before_increase == 1000
    state, decision = next_batch_size(state, obs(0.03, tps=700, running=36), CFG)
    assert decision.inputs["tbp"] > 1 and state.batch_limit == 18


def test_throughput_drop_from_less_demand_is_ignored():
    state, _ = next_batch_size(LocalState(batch_limit=32), obs(0.03, tps=1000, running=32), CFG)
    state, decision = next_batch_size(state, obs(0.03, tps=500, running=20), CFG)
    assert decision.inputs["tbp"] == 0 and state.batch_limit == 40


def test_batch_only_worker_has_no_latency_pressure():
    state, decision = next_batch_size(LocalState(batch_limit=32, itl_ewma_s=0.5), obs(0.5, slo=None), CFG)
    assert decision.inputs["lbp"] == 0 and state.batch_limit == 36
