"""Shared fixtures: real Redis servers (the machine's Redis 7 and an embedded Valkey) and process helpers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
MACHINE_REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_reachable(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def embedded_valkey_url():
    from sluice.embedded_redis import start_embedded_valkey

    data_dir = Path(tempfile.mkdtemp(prefix="sluice-valkey-"))
    server = start_embedded_valkey(data_dir)
    yield server.connection_url + "/0"
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def machine_redis_url():
    if not redis_reachable(MACHINE_REDIS_URL):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the machine's Redis at {MACHINE_REDIS_URL}")
        pytest.skip(f"no Redis at {MACHINE_REDIS_URL}")
    return MACHINE_REDIS_URL


@pytest.fixture(params=["redis7", "valkey"])
def any_redis_url(request):
    """Each broker test runs against the machine's Redis 7 and the embedded Valkey, on an empty database."""
    url = request.getfixturevalue("machine_redis_url" if request.param == "redis7" else "embedded_valkey_url")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def model_dir():
    from sluice.model_init import build_default_model

    target = ROOT / "var" / "models" / "sluice-tiny-llama"
    return build_default_model(target)


class Process:
    """A `sluice` subprocess with its output in a log file, stopped (and reaped) at teardown."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "sluice.cli", *args], env=env, cwd=ROOT,
                                      stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def descendants(self) -> list:
        import psutil

        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_group(self, signum) -> None:
        # vLLM's engine processes outlive a SIGKILLed parent; remember them so stop() can reap them.
        self._known_descendants = getattr(self, "_known_descendants", []) + self.descendants()
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30) -> None:
        import psutil

        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait()
        for leftover in getattr(self, "_known_descendants", []):
            try:
                leftover.kill()
            except psutil.NoSuchProcess:
                pass
        self.log_file.close()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, process: Process | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and not process.alive():
            raise AssertionError(f"{process.name} exited while waiting for {what}:\n{process.log_tail()}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f"\n{process.log_tail()}" if process else ""))


@pytest.fixture(scope="session")
def log_dir():
    path = Path(tempfile.mkdtemp(prefix="sluice-test-logs-"))
    yield path
