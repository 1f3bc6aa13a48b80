"""Redis clients for Sluice processes, with timeouts that survive a CPU-starved host.

redis-py 8 times a read out after 5 s by default; a worker whose host is busy
with vLLM steps can miss that and fail a request that was fine.  Sluice waits
longer and lets callers queue for a connection instead of failing under bursts.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

SOCKET_TIMEOUT_S = 30.0


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=10,
                                health_check_interval=30)


def async_client(url: str, max_connections: int = 64) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=10, health_check_interval=30)
    return aioredis.Redis(connection_pool=pool)
