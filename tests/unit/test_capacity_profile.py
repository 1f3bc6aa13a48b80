"""The capacity profile, pure: which load step sets the capacity, its record's encoding, and how Chiron's
measure_capacity ranks it against online measurement and the prior."""

from __future__ import annotations

import dataclasses

import pytest

from broker.capacity import CapacityProfile, ProfileStep
from core.scaler_config import ScalerConfig
from scaler.capacity_profile import NoStepWithinSLO, capacity_at_slo, should_stop
from scaler.policies.chiron import ChironState, measure_capacity
from scaler.state import ClusterSnapshot
from scaler.profiler import summarize

STEPS = [ProfileStep(1, 20, 40.0, 0.030, 0.1), ProfileStep(4, 60, 150.0, 0.060, 0.2),
         ProfileStep(16, 90, 310.0, 0.095, 0.5), ProfileStep(32, 80, 380.0, 0.180, 1.5)]


def test_the_busiest_step_within_the_itl_slo_sets_the_capacity():
    assert capacity_at_slo(STEPS, itl_slo_s=0.100).concurrency == 16
    assert capacity_at_slo(STEPS, itl_slo_s=0.050).concurrency == 1
    assert capacity_at_slo(STEPS, itl_slo_s=1.0).concurrency == 32
    with pytest.raises(NoStepWithinSLO):
        capacity_at_slo(STEPS, itl_slo_s=0.010)
    assert [should_stop(step, 0.100) for step in STEPS] == [False, False, False, True]


def test_a_step_counts_requests_finished_after_the_warm_up_per_worker():
    finished = [{"at": 0.5, "tokens": 100, "itl_s": 0.5, "ttft_s": 9.0},  # warm-up: not counted
                {"at": 3.0, "tokens": 40, "itl_s": 0.02, "ttft_s": 0.2},
                {"at": 9.0, "tokens": 40, "itl_s": 0.04, "ttft_s": 0.4},
                {"at": 11.0, "tokens": 40, "itl_s": 0.04, "ttft_s": 0.4}]  # after the step: not counted
    step = summarize(4, finished, step_s=10.0, warmup_s=2.0, workers=2)
    assert (step.requests, step.tokens_per_s) == (2, 80 / 8 / 2)
    assert step.itl_p90_s == pytest.approx(0.038) and step.ttft_p50_s == pytest.approx(0.3)


def test_a_profile_survives_its_redis_encoding():
    profile = CapacityProfile(model="m", tokens_per_s=310.0, itl_slo_s=0.1, concurrency=16, workers=1,
                              measured_at=1.8e9, steps=tuple(STEPS))
    raw = {k.encode(): v.encode() for k, v in profile.to_redis().items()}
    assert CapacityProfile.from_redis(raw) == profile


def snapshot(profiled: float | None) -> ClusterSnapshot:
    return ClusterSnapshot(now=1000.0, observed_at=1000.0, complete=True, profiled_capacity_tokens_per_s=profiled)


def test_chiron_uses_the_profile_until_it_measures_online_and_the_prior_without_either():
    config = ScalerConfig()
    prior = config.chiron.interactive_capacity_tokens_per_s_prior
    step = measure_capacity(snapshot(None), ChironState(), config)
    assert step.value.used == prior and "prior" in step.reason
    step = measure_capacity(snapshot(310.0), ChironState(), config)
    assert step.value.used == 310.0 and "sluice profile" in step.reason
    measured = dataclasses.replace(ChironState(), capacity_tokens_per_s=500.0)
    assert measure_capacity(snapshot(310.0), measured, config).value.used == 500.0
