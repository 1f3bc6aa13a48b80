import numpy as np
import pytest

from core.scaler_config import ScalerConfig
from scaler.sim.cluster import ClusterSimulation, SimSettings
from scaler.sim.latency import engine
from scaler.sim.workload import Requests


def test_latency_model_sanity_llama3_8b_h100():
    e = engine("llama-3-8b", "h100-80gb", 1)
    step = float(e.decode_step_s(64, 64 * 1200))
    assert 0.010 <= step <= 0.020
    assert 300_000 < e.kv_capacity_tokens < 500_000


def test_70b_needs_tensor_parallel():
    with pytest.raises(ValueError):
        _ = engine("llama-3-70b", "h100-80gb", 1).kv_capacity_tokens


def requests(n, start, rate, ctx=500, gen=100, deadline=np.inf, job=-1):
    t = start + np.arange(n) / rate
    return Requests(t, np.full(n, ctx), np.full(n, gen), np.full(n, deadline), np.full(n, job))


def test_small_cluster_serves_light_load_within_slo():
    cfg = ScalerConfig()
    cfg.static.counts = {"mixed": 2, "batch": 0, "interactive": 0}
    inter = requests(200, 0.0, 4.0)
    batch = requests(100, 10.0, 1e6, ctx=1000, gen=20, deadline=600.0, job=0)
    sim = ClusterSimulation("static", cfg, engine("llama-3-8b", "h100-80gb", 1), inter, batch, 300.0, SimSettings())
    r = sim.run()
    assert np.all(r.interactive_ttft_s < 2.0)
    assert np.nanmax(r.interactive_itl_s) < 0.1
    assert np.all(r.batch_finish_s <= r.batch_deadline_s)
    assert r.gpu_seconds == pytest.approx(2 * 300.0)
