"""The live Chiron scaler on this machine: real workers added under load, removed after, admission limits adapted,
no request lost (the same code as `sluice bench scale`, with a shorter ramp)."""

from __future__ import annotations

import pytest

from bench.scale import run_scale_bench
from tests.conftest import MACHINE_REDIS_URL, require_redis

pytestmark = pytest.mark.integration


def test_load_ramp_scales_out_then_in_without_losing_requests(tmp_path):
    url = MACHINE_REDIS_URL.rsplit("/", 1)[0] + "/8"
    require_redis(url)
    # settle_s is the most it waits after the load: it ends as soon as the scaler is back to one worker.
    report = run_scale_bench(low_rps=0.5, high_rps=6.0, ramp_s=20, high_s=40, cool_s=30, settle_s=240,
                             redis_url=url, json_out=str(tmp_path / "scale.json"), progress=False)
    assert report["requests"] > 100
    assert report["completed_ok"] == report["requests"], report["lost_or_failed"][:5]
    actions = [(a["from"], a["to"]) for a in report["scale_actions"] if a["pool"] == "mixed"]
    assert (1, 2) in actions, actions  # scaled out under load
    assert (2, 1) in actions[actions.index((1, 2)):], actions  # then back in
    assert report["final_workers"] == 1
    assert report["admission_limit_changes"] > 0 and len(report["admission_limits_seen"]) > 1
