"""Explicit wiring: a child started with settings_env(settings) builds the same Settings; `sluice run`'s
children and their order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import Settings, settings_env
from sluice.runner import RunPlan, child_commands, child_env

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**sluice) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(sluice)
    return env


def settings_in_child(env: dict[str, str]) -> dict:
    probe = "from core.settings import Settings; print(Settings().model_dump_json())"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)


def test_child_builds_the_same_settings(monkeypatch):
    for name in [name for name in os.environ if name.startswith("SLUICE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLUICE_SCALER__SLO__ITL_S", "0.25")  # a nested variable...
    monkeypatch.setenv("SLUICE_API_PORT", "9001")
    settings = Settings(api_port=9100, worker_lanes=["batch"], predict_lengths=True, model=Path("/models/m"),
                        lane_queue_limits={"interactive": 5, "batch": 7}, redis_url="redis://h:1/2")
    assert settings.api_port == 9100  # ...flags beat variables
    env = settings_env(settings)
    assert env["SLUICE_API_PORT"] == "9100" and env["SLUICE_PREDICT_LENGTHS"] == "true"
    assert "SLUICE_QUEUE_POLICY" not in env  # fields nobody gave stay out: the child's defaults apply
    assert settings_in_child(clean_env(**env)) == json.loads(settings.model_dump_json())
    assert Settings.model_validate_json(json.dumps(settings_in_child(clean_env(**env)))).scaler.slo.itl_s == 0.25


def test_child_env_replaces_the_parents_sluice_variables(monkeypatch):
    monkeypatch.setenv("SLUICE_API_PORT", "1234")
    monkeypatch.setenv("SLUICE_WORKER_ID", "from-the-parent-env")
    monkeypatch.setenv("UNRELATED", "kept")
    env = child_env(Settings(api_port=4321).model_copy(update={"redis_url": "redis://127.0.0.1:7/0"}))
    assert env["SLUICE_API_PORT"] == "4321" and env["SLUICE_REDIS_URL"] == "redis://127.0.0.1:7/0"
    assert env["SLUICE_WORKER_ID"] == "from-the-parent-env"  # given (by a variable): passed on as given
    assert env["UNRELATED"] == "kept"


def test_run_stops_api_first_and_flower_last():
    names = [name for name, _ in child_commands(RunPlan(worker_count=2))]
    assert list(reversed(names)) == ["api", "worker-1", "worker-0", "flower"]  # stop order; Valkey after all
    scaled = child_commands(RunPlan(scaler_policy="chiron", flower=False))
    assert scaled == [("scaler", ["scaler", "run", "--policy", "chiron", "--actuator", "local"]), ("api", ["api"])]
