"""The chaos benchmark, short: one worker SIGKILL (of two: the other takes its requests), one Redis restart (append-only,
fsync always) and one API replica SIGKILL, under a small mixed load (streaming, whole, async; both
lanes).  Nothing accepted is lost, nothing is answered twice, no 5xx (a 503 with Retry-After during
the outage is the documented answer and is only counted).  docs/operations.md, "Chaos benchmark"."""

from __future__ import annotations

import os

import pytest

from bench.chaos import ChaosOptions, run_chaos

# Opt-in (SLUICE_TEST_CHAOS=1) for now: in the first CI run with it, the three test_fleet tests after the first
# failed behind it (they pass without it), and it adds ~4-5 minutes to a suite near its 20-minute budget.
# docs/operations.md, "Chaos benchmark".
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.environ.get("SLUICE_TEST_CHAOS"), reason="set SLUICE_TEST_CHAOS=1 to run it")]


# Starting two APIs and two vLLM workers on a loaded 2-core machine can take minutes (the suite's limit is 600 s).
@pytest.mark.timeout(1200)
def test_a_worker_kill_a_redis_restart_and_an_api_replica_kill_lose_nothing(model_dir, log_dir, monkeypatch):
    monkeypatch.setenv("SLUICE_MODEL", str(model_dir))
    monkeypatch.setenv("SLUICE_DATA_DIR", str(log_dir / "chaos-data"))
    options = ChaosOptions(rate=1.0, max_tokens=128, baseline_s=6, gap_s=6, outage_s=2, drain_s=120,
                           faults=("worker", "redis", "api"), workers=2, replace_killed=False)
    report = run_chaos(options, echo=print)
    summary = {name: report[name] for name in ("requests_sent", "accepted", "completed", "lost", "answered_twice",
                                               "http_5xx", "http_503", "client_errors")}
    detail = f"{summary}; faults {report['faults']}; logs in {report['logs']}"
    print(detail)
    assert [fault["fault"] for fault in report["faults"]] == ["worker", "redis", "api"], detail
    assert report["accepted"] > 0, detail
    assert report["lost"] == 0, detail
    assert report["answered_twice"] == 0, detail
    assert report["http_5xx"] == 0, detail
    assert report["completed"] == report["accepted"], detail
    assert report["requests_sent"] <= report["accepted"] + sum(report["client_errors"].values()), detail
    # Every fault was followed by a request that got its answer (the stack recovered from each).
    assert all(fault["first_completed_after_s"] is not None for fault in report["faults"]), detail
