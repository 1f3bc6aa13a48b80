"""`sluice run`: start every Sluice process in the foreground and stop them all together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    process: subprocess.Popen


def sluice_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sluice.cli", *args]


class ProcessGroup:
    """Children started in their own sessions so Ctrl-C reaches them only through us, in order."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, command: list[str]) -> Child:
        log.info("starting %s: %s", name, " ".join(command))
        process = subprocess.Popen(command, env=self.env, start_new_session=True)
        child = Child(name, process)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if child.process.poll() is not None), None)

    def stop(self, timeout_s: float = 30.0) -> None:
        # Reverse start order: the API stops taking requests before workers drain theirs.
        for child in reversed(self.children):
            if child.process.poll() is None:
                log.info("stopping %s (pid %d)", child.name, child.process.pid)
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()

    def wait(self) -> int:
        """Block until Ctrl-C/SIGTERM or a child exits; return the exit status for `sluice run`."""
        stopping = {"signal": None}

        def on_signal(signum, _frame):
            stopping["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while stopping["signal"] is None:
            exited = self.first_exited()
            if exited is not None:
                log.error("%s exited with status %s; stopping the rest", exited.name, exited.process.returncode)
                return 1
            time.sleep(0.5)
        log.info("received %s; stopping", signal.Signals(stopping["signal"]).name)
        return 0
