"""Shared fixtures: real Redis servers (the machine's Redis 7 and an embedded Valkey) and process helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import redis

from core.processes import Child, free_port, sluice_argv

__all__ = ["MACHINE_REDIS_URL", "Process", "free_port", "redis_reachable", "require_redis", "wait_until"]

ROOT = Path(__file__).resolve().parent.parent
MACHINE_REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def require_redis(url: str) -> str:
    """``url`` if a Redis answers there; otherwise skip the test here, and fail it in CI (which starts one)."""
    if not redis_reachable(url):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the machine's Redis at {url}")
        pytest.skip(f"no Redis at {url}")
    return url


@pytest.fixture(scope="session")
def embedded_valkey_url():
    from core.embedded_valkey import start_embedded_valkey

    data_dir = Path(tempfile.mkdtemp(prefix="sluice-valkey-"))
    server = start_embedded_valkey(data_dir)
    yield server.connection_url + "/0"
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def machine_redis_url():
    return require_redis(MACHINE_REDIS_URL)


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


class Process(Child):
    """A `sluice` subprocess (core.processes.Child) logging to ``<log_dir>/<name>.log``, stopped at teardown."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        super().__init__(name, sluice_argv(*args), env=env, log_path=log_dir / f"{name}.log", cwd=ROOT)

    def stop(self, timeout: float = 30) -> int:
        # The whole group at once: a test's teardown need not wait for a worker to finish its requests.
        return super().stop(timeout, whole_group=True)


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


def engine_processes(pid: int) -> list[psutil.Process]:
    """The vLLM engine processes (EngineCore and its workers) under a Sluice worker's process."""
    return [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in p.name() or "VLLM" in p.name()]


@contextlib.contextmanager
def suspended(processes: list[psutil.Process]):
    """SIGSTOP ``processes`` for the block, SIGCONT after (one that is gone by then is skipped). Tests hold a
    worker or its engine this way where the tiny model would otherwise finish before the test could look."""
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()
