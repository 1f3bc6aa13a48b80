"""The chaos benchmark, short: one worker SIGKILL (of two: the other takes its requests), one Redis restart (append-only,
fsync always) and one API replica SIGKILL, under a small mixed load (streaming, whole, async; both
lanes).  Nothing accepted is lost, nothing is answered twice, no 5xx (a 503 with Retry-After during
the outage is the documented answer and is only counted).  docs/operations.md, "Chaos benchmark"."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from bench.chaos import ChaosOptions, run_chaos

pytestmark = pytest.mark.integration


def stop_leftovers(data_dir: str) -> list[str]:
    """Kill what the run left running (the suite's next modules share this machine's 2 cores and memory):
    every process it started has its SLUICE_DATA_DIR, engine processes reparented to init included.
    Returns what was found."""
    found = []
    for process in psutil.process_iter(["pid", "name"]):
        try:
            if (process.pid != os.getpid() and process.environ().get("SLUICE_DATA_DIR") == data_dir
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    _gone, alive = psutil.wait_procs(found, timeout=10)  # a stop's last moments
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return [f"{process.pid} {process.info['name']}" for process in alive]


# Starting two APIs and two vLLM workers on a loaded 2-core machine can take minutes (the suite's limit is 600 s).
@pytest.mark.timeout(1200)
def test_a_worker_kill_a_redis_restart_and_an_api_replica_kill_lose_nothing(model_dir, log_dir, monkeypatch):
    monkeypatch.setenv("SLUICE_MODEL", str(model_dir))
    data_dir = str(log_dir / "chaos-data")
    monkeypatch.setenv("SLUICE_DATA_DIR", data_dir)
    options = ChaosOptions(rate=1.0, max_tokens=128, baseline_s=6, gap_s=6, outage_s=2, drain_s=120,
                           faults=("worker", "redis", "api"), workers=2, replace_killed=False)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        report = run_chaos(options, echo=print)
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # bench.processes.BenchCluster sets its own (for the CLI)
        left = stop_leftovers(data_dir)
    assert not left, f"still running after the chaos run (killed now): {left}"
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
