"""The real Sluice processes a benchmark drives (Redis/Valkey, workers, APIs), on core.processes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


from core import keys
from core.embedded_valkey import start_embedded_valkey
from core.processes import Child, free_port, http_ok, sluice_argv, wait_for
from core.redis_clients import sync_client

log = logging.getLogger(__name__)


class BenchCluster:
    """A Redis (the given URL, or an embedded Valkey) plus `sluice` children started on demand, each
    logging to ``<log_dir>/<name>.log``."""

    def __init__(self, redis_url: str | None = None, log_dir: Path | None = None, extra_env: dict | None = None):
        # Children run in their own sessions; turn SIGTERM into SystemExit so `finally: stop()` still reaps them.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="sluice-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._valkey = None
        if redis_url is None:
            self._valkey = start_embedded_valkey(self.log_dir / "valkey")
            redis_url = self._valkey.connection_url + "/0"
        self.redis_url = redis_url
        self.redis = sync_client(redis_url)  # a redis+sentinel:// URL too, where this build has them
        self.redis.flushdb()
        # The children's settings: this Redis, the model and data dir the bench was given, and extra_env.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        self.env.update(SLUICE_REDIS_URL=redis_url, **(extra_env or {}))
        for name in ("SLUICE_MODEL", "SLUICE_DATA_DIR"):
            if name in os.environ:
                self.env[name] = os.environ[name]
        self.processes: list[Child] = []

    def start(self, name: str, args: list[str], **env) -> Child:
        process = Child(name, sluice_argv(*args), env={**self.env, **{k: str(v) for k, v in env.items()}},
                        log_path=self.log_dir / f"{name}.log")
        self.processes.append(process)
        return process

    def wait(self, predicate, timeout: float, what: str, process: Child | None = None) -> None:
        wait_for(predicate, timeout, what, child=process)

    def start_worker(self, worker_id: str, *args: str, **env) -> Child:
        process = self.start(worker_id.split("@")[0], ["worker", "--worker-id", worker_id, *args], **env)
        self.wait(lambda: self.redis.hget(keys.worker_key(worker_id), "state") == b"ready", 300,
                  f"worker {worker_id}", process)
        return process

    def start_api(self, name: str = "api", **env) -> tuple[Child, str]:
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
            process.stop(timeout=60)
        self.processes.clear()

    def stop(self) -> None:
        self.stop_processes()
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
