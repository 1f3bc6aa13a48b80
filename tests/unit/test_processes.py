"""core.processes and core.embedded_valkey against real (small) processes."""

from __future__ import annotations

import os
import sys
import time

import psutil
import redis

from core.embedded_valkey import start_embedded_valkey
from core.processes import Child, wait_for

SIGTERM_EXITS_CLEANLY = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
# A grandchild in a session of its own: only the harness's memory of descendants can reap it.
escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print("grandchild", escaped.pid, flush=True)
while True:
    time.sleep(0.1)
"""

IGNORES_SIGTERM = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_child_runs_in_its_own_session_logs_and_stops_cleanly(tmp_path):
    child = Child("clean", [sys.executable, "-c", SIGTERM_EXITS_CLEANLY], log_path=tmp_path / "clean.log")
    try:
        line = wait_for(lambda: next((l for l in child.log_tail().splitlines() if l.startswith("grandchild")), None),
                        30, "the grandchild", interval=0.1, child=child)
        grandchild = psutil.Process(int(line.split()[1]))
        assert os.getsid(child.pid) == child.pid != os.getsid(0)  # Ctrl-C in our terminal does not reach it
        assert child.stop(timeout=10) == 0
        assert "got SIGTERM" in child.log_tail()
        psutil.wait_procs([grandchild], timeout=5)
        assert not grandchild.is_running()
    finally:
        child.kill()


def test_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    child = Child("stubborn", [sys.executable, "-c", IGNORES_SIGTERM], log_path=tmp_path / "stubborn.log")
    wait_for(lambda: "ready" in child.log_tail(), 30, "the child", interval=0.1, child=child)
    started = time.monotonic()
    assert child.stop(timeout=1.0) == -9
    assert time.monotonic() - started >= 1.0


def test_embedded_valkey_in_its_own_session_keeps_data_across_a_restart(tmp_path):
    valkey = start_embedded_valkey(tmp_path / "valkey")
    try:
        assert os.getsid(valkey.child.pid) == valkey.child.pid
        redis.Redis.from_url(valkey.connection_url + "/0").set("queued", "survives")
    finally:
        valkey.stop()
    assert not valkey.child.alive() and valkey.child.returncode == 0  # SIGTERM: a clean shutdown
    again = start_embedded_valkey(tmp_path / "valkey")
    try:
        assert redis.Redis.from_url(again.connection_url + "/0").get("queued") == b"survives"
    finally:
        again.stop()
