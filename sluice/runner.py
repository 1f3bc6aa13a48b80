"""`sluice run`: start every Sluice process in the foreground and stop them all together.

Every child, the embedded Valkey included, runs in its own session (core.processes), so a Ctrl-C in
the terminal reaches only this process. It then stops the children one after another in the reverse
of their start order: the API (no new requests), the workers or the scaler (in-flight requests
finish), Flower, and the embedded Valkey last, once nothing talks to it any more.

A child that exits on its own is a crash: the runner logs it, kills what is left of its process group
(a worker's engine processes), and starts it again, at once or after a backoff; it stops the stack only
when the child keeps crashing (sluice/supervision.py decides, from the crash history and the time).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from core.embedded_valkey import EmbeddedValkey, start_embedded_valkey
from core.processes import Child, sluice_argv
from core.redis_urls import redact
from core.settings import Settings, settings_env
from sluice.supervision import RestartPolicy, restart_decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    worker_count: int = 1
    scaler_policy: str | None = None  # set: the scaler starts and stops the workers (local actuator)
    flower: bool = True
    restart_policy: RestartPolicy = RestartPolicy()


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


@dataclass
class Supervised:
    """A child `sluice run` keeps running: how to start it again, and when it crashed."""

    name: str
    start: Callable[[], Child]
    child: Child
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None  # set while a restart waits out its backoff

    @classmethod
    def started(cls, name: str, start: Callable[[], Child]) -> "Supervised":
        return cls(name, start, start())


def run_foreground(settings: Settings, plan: RunPlan, stop: StopRequest, banner: str = "") -> int:
    """Start Valkey (unless settings name a Redis) and the children; supervise them until ``stop`` or
    one exits; stop them all. Returns the exit status of `sluice run`: 0 when stopped by a signal."""
    valkey: EmbeddedValkey | None = None
    children: list[Supervised] = []
    status = 0
    try:
        if not settings.redis_url:
            valkey = start_embedded_valkey(settings.data_dir / "valkey")
            settings = settings.model_copy(update={"redis_url": valkey.connection_url + "/0"})
            # Restarted on the same port and files (append-only: the queues survive its crash).
            valkey_supervised = Supervised(
                "valkey", lambda: start_embedded_valkey(valkey.data_dir, valkey.port).child, valkey.child)
        log.info("Redis at %s", redact(settings.redis_url))
        env = child_env(settings)
        for name, args in child_commands(plan):
            if stop:
                break
            argv = sluice_argv(*args)
            log.info("starting %s: %s", name, " ".join(argv))
            children.append(Supervised.started(name, lambda name=name, argv=argv: Child(name, argv, env=env)))
        if not stop:
            log.info("Sluice: API http://%s:%d%s  (Ctrl-C stops everything)", settings.api_host, settings.api_port,
                     f"  Flower http://{settings.flower_address}:{settings.flower_port}" if plan.flower else "")
            if banner:
                log.info("Sluice: %s", banner)
        status = supervise(children + ([valkey_supervised] if valkey else []), stop, plan.restart_policy)
    finally:
        for entry in reversed(children):
            if entry.child.alive():
                log.info("stopping %s (pid %d)", entry.name, entry.child.pid)
            entry.child.stop(timeout=30.0)
        if valkey is not None:
            log.info("stopping the embedded Valkey")
            valkey_supervised.child.stop(timeout=10.0)  # SIGTERM: Valkey flushes its append-only file
    return status


def supervise(children: list[Supervised], stop: StopRequest, policy: RestartPolicy = RestartPolicy(),
              interval_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> int:
    """Restart crashed children until ``stop`` (returns 0) or one crashes too often (returns 1)."""
    while not stop:
        now = clock()
        for entry in children:
            if entry.restart_at is not None:
                if now >= entry.restart_at:
                    restart(entry)
                continue
            if entry.child.alive():
                continue
            entry.crashes.append(now)
            # What is left of its process group goes first (a worker's engine processes, whatever killed it).
            entry.child.kill()
            decision = restart_decision(entry.crashes, now, policy)
            if decision.action == "give_up":
                log.error("%s exited with status %s: %s; giving up and stopping the rest", entry.name,
                          entry.child.returncode, decision.reason)
                return 1
            log.warning("%s (pid %d) exited with status %s; restarting it %s (%s)", entry.name, entry.child.pid,
                        entry.child.returncode, f"in {decision.delay_s:.0f} s" if decision.delay_s else "now",
                        decision.reason)
            entry.restart_at = now + decision.delay_s
            if decision.delay_s == 0:
                restart(entry)
        time.sleep(interval_s)
    return 0


def restart(entry: Supervised) -> None:
    entry.restart_at = None
    try:
        entry.child = entry.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        # Counted as another crash at the next look (the old child is still the dead one).
        log.error("could not restart %s: %s", entry.name, exc)
        return
    log.info("restarted %s (pid %d)", entry.name, entry.child.pid)
