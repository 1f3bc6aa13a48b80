"""`sluice profile` against the real stack: it measures the worker, stores the profile, and the scaler's
observation of the cluster carries it."""

from __future__ import annotations

import json

import pytest

from broker.capacity import read_profile
from scaler.observe import read_raw
from tests.conftest import Process
from tests.integration.conftest import wait_for_idle

pytestmark = pytest.mark.integration


def test_sluice_profile_stores_the_capacity_the_scaler_reads(stack, tmp_path):
    wait_for_idle(stack)
    out = tmp_path / "profile.json"
    # A generous ITL SLO: the test checks the measurement's path, not this machine's speed.
    env = {"SLUICE_SCALER__SLO__ITL_S": "5"}
    process = stack.start("profile", ["profile", "--url", stack.base_url, "--concurrency", "1,4",
                                      "--step-s", "6", "--max-tokens", "12", "--prompt-words", "30",
                                      "--json", str(out)], **env)
    assert process.wait(timeout=300) == 0, process.log_tail()
    measured = json.loads(out.read_text())
    assert [step["concurrency"] for step in measured["steps"]] == [1, 4]
    assert all(step["requests"] > 0 and step["itl_p90_s"] is not None for step in measured["steps"])
    stored = read_profile(stack.redis, measured["model"])
    assert stored is not None and stored.tokens_per_s == measured["tokens_per_s"] > 0
    assert stored.workers == 1 and stored.itl_slo_s == 5.0
    assert read_raw(stack.redis, pools={}).profiled_capacity_tokens_per_s == stored.tokens_per_s
    stack.redis.delete(f"sluice:capacity:{measured['model']}")
