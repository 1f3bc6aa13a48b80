"""Start and stop the real Sluice processes a benchmark drives (Redis/Valkey, workers, APIs)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from broker import keys

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 200; False while the server is not up yet."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class BenchProcess:
    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "sluice.cli", *args], env=env,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 60) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


class BenchCluster:
    """A Redis (the given URL, or an embedded Valkey) plus Sluice processes started on demand."""

    def __init__(self, redis_url: str | None = None, log_dir: Path | None = None, extra_env: dict | None = None):
        # Children run in their own sessions; turn SIGTERM into SystemExit so `finally: stop()` still reaps them.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="sluice-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._valkey = None
        if redis_url is None:
            from sluice.embedded_redis import start_embedded_valkey

            self._valkey = start_embedded_valkey(self.log_dir / "valkey")
            redis_url = self._valkey.connection_url + "/0"
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.redis.flushdb()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        self.env.update(SLUICE_REDIS_URL=redis_url, **(extra_env or {}))
        for name in ("SLUICE_MODEL", "SLUICE_DATA_DIR"):
            if name in os.environ:
                self.env[name] = os.environ[name]
        self.processes: list[BenchProcess] = []

    def start(self, name: str, args: list[str], **env) -> BenchProcess:
        process = BenchProcess(name, args, {**self.env, **{k: str(v) for k, v in env.items()}}, self.log_dir)
        self.processes.append(process)
        return process

    def wait(self, predicate, timeout: float, what: str, process: BenchProcess | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if process is not None and not process.alive():
                raise RuntimeError(f"{process.name} exited while waiting for {what}; see {process.log_path}")
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}")

    def start_worker(self, worker_id: str, *args: str, **env) -> BenchProcess:
        process = self.start(worker_id.split("@")[0], ["worker", "--worker-id", worker_id, *args], **env)
        self.wait(lambda: self.redis.exists(keys.worker_key(worker_id)), 300, f"worker {worker_id}", process)
        return process

    def start_api(self, name: str = "api", **env) -> tuple[BenchProcess, str]:
        port = free_port()
        process = self.start(name, ["api", "--port", str(port)], **env)
        base_url = f"http://127.0.0.1:{port}"

        self.wait(lambda: http_ok(base_url + "/healthz"), 300, f"API {name}", process)
        return process, base_url

    def wait_idle(self, timeout: float = 600) -> None:
        def idle():
            return (self.redis.zcard(keys.lane_key("interactive")) == 0 and self.redis.zcard(keys.lane_key("batch")) == 0
                    and self.redis.hlen(keys.UNACKED) == 0)

        self.wait(idle, timeout, "the queues to drain")

    def stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def stop(self) -> None:
        self.stop_processes()
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
