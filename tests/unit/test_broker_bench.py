"""A tiny run of the broker benchmark: both transports, both phases, the JSON shape (a few seconds)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.broker_bench import broker_command


def test_broker_bench_tiny_run(machine_redis_url, tmp_path):
    url = machine_redis_url.rsplit("/", 1)[0] + "/11"
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(broker_command, [
        "--redis-url", url, "--messages", "50", "--rounds", "1", "--rate", "200", "--duration", "0.5",
        "--no-progress", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "stock/sluice" in result.output
    data = json.loads(out.read_text())
    assert set(data["transports"]) == {"sluice", "stock"}
    for name in ("sluice", "stock"):
        stats = data["transports"][name]
        assert stats["end_to_end_msgs_per_s"] > 0
        assert stats["latency"]["samples"] > 0 and stats["latency"]["lost"] == 0
    assert data["ratios"]["throughput_stock_over_sluice"] == pytest.approx(
        data["transports"]["stock"]["end_to_end_msgs_per_s"] / data["transports"]["sluice"]["end_to_end_msgs_per_s"])
    assert 900 <= data["config"]["task_body_bytes"] <= 1200


def test_help_says_which_db_is_flushed():
    result = CliRunner().invoke(broker_command, ["--help"])
    assert result.exit_code == 0
    assert "FLUSHDB" in result.output and "db 11" in result.output
