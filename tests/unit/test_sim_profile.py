"""The simulator's load-test capacity (scaler.sim.profile) on the latency model and the conv trace's lengths."""

import pytest

from core.scaler_config import ScalerConfig
from scaler.sim.cluster import SimSettings
from scaler.sim.latency import engine, instance_profile
from scaler.sim.profile import pool_attainment, sustained_profile
from scaler.sim.workload import load_trace


def test_sustained_capacity_is_a_load_test_result_below_the_analytic_one():
    conv, eng, config = load_trace("conv"), engine(), ScalerConfig()
    analytic = instance_profile(eng, conv.context_tokens, conv.generated_tokens, config.slo.itl_s,
                                config.local.max_admission_limit)
    settings = SimSettings(interactive_prior_mean_tokens=float(conv.generated_tokens.mean()))
    args = (eng, config, settings, conv.context_tokens, conv.generated_tokens)
    # Well below capacity the pool meets the SLO; at the analytic (mean-ITL) capacity it does not.
    assert pool_attainment(*args, 0.3 * analytic.interactive_rps, instances=2, minutes=5, seed=1) >= 0.99
    assert pool_attainment(*args, analytic.interactive_rps, instances=2, minutes=5, seed=1) < 0.9
    profile = sustained_profile(*args, analytic.interactive_rps, instances=2, minutes=5, bisections=5)
    assert 0.2 < profile.share_of_analytic < 0.9
    passed = [rate for rate, got in profile.steps if got >= 0.99]
    assert profile.requests_per_s == pytest.approx(max(passed), abs=1e-3)  # the highest rate that met the SLO
    assert profile.tokens_per_s > 0
