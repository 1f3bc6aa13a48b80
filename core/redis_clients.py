"""Redis clients for Sluice processes, with timeouts that survive a CPU-starved host and retries that
ride through a Redis outage.

redis-py 8 times a read out after 5 s by default; a worker whose host is busy
with vLLM steps can miss that and fail a request that was fine.  Sluice waits
longer and lets callers queue for a connection instead of failing under bursts.

A Redis restart or failover is an expected state (docs/operations.md): every client retries
connection errors and timeouts with redis-py's own ``Retry`` and capped exponential backoff (with
jitter), and pings a connection idle for ``HEALTH_CHECK_INTERVAL_S`` before using it.  How long a
client keeps trying is its caller's choice (``ride_through_s``): a worker rides through a blink so its
running requests survive; the API's request path gives up fast and answers 503 with ``Retry-After``.

A ``redis+sentinel://`` URL (core.redis_urls) gives a client of the Sentinel group's current master:
redis-py's Sentinel connection pool asks the sentinels where the master is on every new connection,
so after a failover the clients reconnect to the promoted replica by themselves (with the same retries).
"""

from __future__ import annotations

import math

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from core.redis_urls import is_sentinel_url, parse_sentinel_url

SOCKET_TIMEOUT_S = 30.0
HEALTH_CHECK_INTERVAL_S = 10
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
RETRIED_ERRORS = (redis.ConnectionError, redis.TimeoutError)
# The API's request path: a few quick tries, then 503 + Retry-After (a client that waits is better served).
FAIL_FAST_S = 0.5


def retry_attempts(ride_through_s: float, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> int:
    """Retries whose backoff adds up to about ``ride_through_s``: doubling from ``base_s`` up to ``cap_s``,
    then ``cap_s`` each (the jitter shortens a wait by up to half, so the window is at least half this)."""
    if ride_through_s <= 0:
        return 0
    attempts, total, wait = 0, 0.0, base_s
    while total < ride_through_s and wait < cap_s:
        attempts, total, wait = attempts + 1, total + wait, wait * 2
    return attempts + max(0, math.ceil((ride_through_s - total) / cap_s))


def retry_options(ride_through_s: float, *, asynchronous: bool = False) -> dict:
    """The keyword arguments of a redis-py client (or pool) that retry through an outage."""
    retry_cls = AsyncRetry if asynchronous else Retry
    return {
        "retry": retry_cls(EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retry_attempts(ride_through_s),
                           supported_errors=RETRIED_ERRORS),
        "retry_on_error": list(RETRIED_ERRORS),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def sync_client(url: str, ride_through_s: float = FAIL_FAST_S) -> redis.Redis:
    if is_sentinel_url(url):
        return _sentinel_master(url, Sentinel, redis.Redis, **retry_options(ride_through_s))
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=10,
                                **retry_options(ride_through_s))


class _BlockingSentinelPool(AsyncSentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel master's pool that, like ``async_client``'s plain one, makes callers wait for a free
    connection rather than fail when all are in use."""


def async_client(url: str, max_connections: int = 64, ride_through_s: float = FAIL_FAST_S) -> aioredis.Redis:
    if is_sentinel_url(url):
        return _sentinel_master(url, AsyncSentinel, aioredis.Redis, connection_pool_class=_BlockingSentinelPool,
                                max_connections=max_connections, timeout=SOCKET_TIMEOUT_S,
                                **retry_options(ride_through_s, asynchronous=True))
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=10, **retry_options(ride_through_s, asynchronous=True))
    return aioredis.Redis(connection_pool=pool)


def _sentinel_master(url: str, sentinel_class, redis_class, **pool_kwargs):
    parsed = parse_sentinel_url(url)
    # The same options as the plain clients above (keep the two in step).
    timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": 10}
    # Sentinels answer at once or not at all: a short timeout moves on to the next one quickly.
    sentinel_kwargs = {"socket_timeout": 2, "socket_connect_timeout": 2, **parsed.sentinel_kwargs()}
    sentinel = sentinel_class(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs, **timeouts)
    return sentinel.master_for(parsed.service_name, redis_class=redis_class, **timeouts, **parsed.master_kwargs(),
                               **pool_kwargs)
