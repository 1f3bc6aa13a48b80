"""Redis clients for Sluice processes, with timeouts that survive a CPU-starved host.

redis-py 8 times a read out after 5 s by default; a worker whose host is busy
with vLLM steps can miss that and fail a request that was fine.  Sluice waits
longer and lets callers queue for a connection instead of failing under bursts.

A ``redis+sentinel://`` URL (core.redis_urls) gives a client of the Sentinel group's current master:
redis-py's Sentinel connection pool asks the sentinels where the master is on every new connection,
so after a failover the clients reconnect to the promoted replica by themselves.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import Sentinel

from core.redis_urls import is_sentinel_url, parse_sentinel_url

SOCKET_TIMEOUT_S = 30.0


def sync_client(url: str) -> redis.Redis:
    if is_sentinel_url(url):
        return _sentinel_master(url, Sentinel, redis.Redis)
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=10,
                                health_check_interval=30)


class _BlockingSentinelPool(AsyncSentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel master's pool that, like ``async_client``'s plain one, makes callers wait for a free
    connection rather than fail when all are in use."""


def async_client(url: str, max_connections: int = 64) -> aioredis.Redis:
    if is_sentinel_url(url):
        return _sentinel_master(url, AsyncSentinel, aioredis.Redis, connection_pool_class=_BlockingSentinelPool,
                                max_connections=max_connections, timeout=SOCKET_TIMEOUT_S)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=10, health_check_interval=30)
    return aioredis.Redis(connection_pool=pool)


def _sentinel_master(url: str, sentinel_class, redis_class, **pool_kwargs):
    parsed = parse_sentinel_url(url)
    # The same options as the plain clients above (keep the two in step).
    timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": 10}
    # Sentinels answer at once or not at all: a short timeout moves on to the next one quickly.
    sentinel_kwargs = {"socket_timeout": 2, "socket_connect_timeout": 2, **parsed.sentinel_kwargs()}
    sentinel = sentinel_class(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs, **timeouts)
    return sentinel.master_for(parsed.service_name, redis_class=redis_class, health_check_interval=30,
                               **timeouts, **parsed.master_kwargs(), **pool_kwargs)
