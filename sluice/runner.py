"""`sluice run`: start every Sluice process in the foreground and stop them all together.

Every child, the embedded Valkey included, runs in its own session (core.processes), so a Ctrl-C in
the terminal reaches only this process. It then stops the children one after another in the reverse
of their start order: the API (no new requests), the workers or the scaler (in-flight requests
finish), Flower, and the embedded Valkey last, once nothing talks to it any more.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from core.embedded_valkey import EmbeddedValkey, start_embedded_valkey
from core.processes import Child, sluice_argv
from core.redis_urls import redact
from core.settings import Settings, settings_env

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    worker_count: int = 1
    scaler_policy: str | None = None  # set: the scaler starts and stops the workers (local actuator)
    flower: bool = True


def child_commands(plan: RunPlan) -> list[tuple[str, list[str]]]:
    """(name, `sluice` arguments) in start order; they stop in the reverse order."""
    commands = [("flower", ["flower"])] if plan.flower else []
    if plan.scaler_policy:
        commands.append(("scaler", ["scaler", "run", "--policy", plan.scaler_policy, "--actuator", "local"]))
    else:
        commands += [(f"worker-{index}", ["worker"]) for index in range(plan.worker_count)]
    commands.append(("api", ["api"]))
    return commands


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment without its SLUICE_* variables, plus the settings as variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLUICE_")}
    env.update(settings_env(settings))
    return env


class StopRequest:
    """SIGINT/SIGTERM set a flag; the runner looks at it between steps (a signal interrupts nothing)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.signum is None:
            log.info("received %s; stopping", signal.Signals(signum).name)
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


def run_foreground(settings: Settings, plan: RunPlan, stop: StopRequest) -> int:
    """Start Valkey (unless settings name a Redis) and the children; supervise them until ``stop`` or
    one exits; stop them all. Returns the exit status of `sluice run`: 0 when stopped by a signal."""
    valkey: EmbeddedValkey | None = None
    children: list[Child] = []
    status = 0
    try:
        if not settings.redis_url:
            valkey = start_embedded_valkey(settings.data_dir / "valkey")
            settings = settings.model_copy(update={"redis_url": valkey.connection_url + "/0"})
        log.info("Redis at %s", redact(settings.redis_url))
        env = child_env(settings)
        for name, args in child_commands(plan):
            if stop:
                break
            argv = sluice_argv(*args)
            log.info("starting %s: %s", name, " ".join(argv))
            children.append(Child(name, argv, env=env))
        if not stop:
            log.info("Sluice: API http://%s:%d%s  (Ctrl-C stops everything)", settings.api_host, settings.api_port,
                     f"  Flower http://{settings.flower_address}:{settings.flower_port}" if plan.flower else "")
        status = supervise(children + ([valkey.child] if valkey else []), stop)
    finally:
        for child in reversed(children):
            if child.alive():
                log.info("stopping %s (pid %d)", child.name, child.pid)
            child.stop(timeout=30.0)
        if valkey is not None:
            log.info("stopping the embedded Valkey")
            valkey.stop()
    return status


def supervise(children: list[Child], stop: StopRequest, interval_s: float = 0.5) -> int:
    """Block until ``stop`` (0) or a child exits (1)."""
    while not stop:
        exited = next((child for child in children if not child.alive()), None)
        if exited is not None:
            log.error("%s exited with status %s; stopping the rest", exited.name, exited.returncode)
            return 1
        time.sleep(interval_s)
    return 0
