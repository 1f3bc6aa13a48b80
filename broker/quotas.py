"""Per-key quotas: a request bucket and a token bucket, checked and charged together in one Lua script.

Each bucket holds up to one minute's worth (``per_minute``) and refills continuously at
``per_minute / 60`` per second.  A request costs 1 from the request bucket and ``prompt tokens +
max_tokens`` from the token bucket (its worst case, known at admission; nothing is refunded when the
answer is shorter).  It is admitted only when *both* buckets hold its cost, and then both are charged;
otherwise neither is, and the answer is the time until both would hold it: a bucket only fills, so
that is the longer of the two waits (``Retry-After``, rounded up to whole seconds).  A cost larger than a
bucket's size can never be admitted (``never``).

:func:`decide` is the decision, pure; ``_SCRIPT`` is the same arithmetic in Lua, so that reading the
buckets, deciding and charging are one atomic step (one round trip) with any number of API processes.
``tests/unit/test_quotas.py`` checks the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core import keys


@dataclass(frozen=True)
class Bucket:
    level: float  # tokens in the bucket when it was last filled
    at: float  # when that was (Unix seconds)


@dataclass(frozen=True)
class Limit:
    per_minute: int  # also the bucket's size
    cost: float

    @property
    def rate_per_s(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait_s: float  # 0 when allowed; math.inf when the cost exceeds a bucket's size
    buckets: tuple[Bucket, ...]  # the buckets after the decision (charged only when allowed)

    @property
    def retry_after_s(self) -> int:
        return retry_after(self.wait_s)


def retry_after(wait_s: float) -> int:
    """``Retry-After``: whole seconds, rounded up, so a client that waits that long gets in."""
    return max(1, math.ceil(wait_s - 1e-9))


def fill(bucket: Bucket | None, limit: Limit, now: float) -> float:
    """The bucket's level at ``now``: a new bucket is full; time running backwards (clocks of several API
    hosts) adds nothing."""
    if bucket is None:
        return float(limit.per_minute)
    return min(float(limit.per_minute), bucket.level + max(0.0, now - bucket.at) * limit.rate_per_s)


def decide(buckets: list[Bucket | None], limits: list[Limit], now: float) -> Decision:
    """Admit a request costing ``limit.cost`` from each bucket (``None``: never used), or say how long to wait."""
    levels = [fill(bucket, limit, now) for bucket, limit in zip(buckets, limits)]
    wait = 0.0
    for level, limit in zip(levels, limits):
        if limit.cost > limit.per_minute:
            wait = math.inf
        elif level < limit.cost:
            wait = max(wait, (limit.cost - level) / limit.rate_per_s)
    if wait > 0:
        return Decision(False, wait, tuple(Bucket(level, now) for level in levels))
    return Decision(True, 0.0, tuple(Bucket(level - limit.cost, now) for level, limit in zip(levels, limits)))


# KEYS: the key's quota hash.  ARGV: now, then per bucket: name, per_minute, cost.
# Fields "<name>:level" and "<name>:at".  Returns {1} or {0, wait seconds as a string, -1 for never}.
_SCRIPT = """
local now = tonumber(ARGV[1])
local levels, wait = {}, 0
local n = (#ARGV - 1) / 3
for i = 1, n do
  local name, size, cost = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local level = tonumber(redis.call('HGET', KEYS[1], name .. ':level') or '')
  local at = tonumber(redis.call('HGET', KEYS[1], name .. ':at') or '')
  if level == nil or at == nil then
    level = size
  else
    level = math.min(size, level + math.max(0, now - at) * size / 60)
  end
  levels[i] = level
  if cost > size then
    wait = -1
  elseif wait >= 0 and level < cost then
    wait = math.max(wait, (cost - level) * 60 / size)
  end
end
if wait ~= 0 then return {0, tostring(wait)} end
for i = 1, n do
  local name, cost = ARGV[3 * i - 1], tonumber(ARGV[3 * i + 1])
  redis.call('HSET', KEYS[1], name .. ':level', tostring(levels[i] - cost), name .. ':at', ARGV[1])
end
-- A bucket left alone for a minute is full again: nothing to keep.
redis.call('EXPIRE', KEYS[1], 120)
return {1}
"""


@dataclass(frozen=True)
class QuotaVerdict:
    allowed: bool
    wait_s: float  # math.inf: the request is larger than a bucket

    @property
    def retry_after_s(self) -> int:
        return retry_after(self.wait_s)


class Quotas:
    """The atomic check-and-charge (asyncio client): one EVALSHA per request."""

    def __init__(self, client):
        self._script = client.register_script(_SCRIPT)

    async def charge(self, digest: str, limits: dict[str, Limit], now: float) -> QuotaVerdict:
        if not limits:
            return QuotaVerdict(True, 0.0)
        args: list = [repr(float(now))]
        for name, limit in limits.items():
            args += [name, limit.per_minute, repr(float(limit.cost))]
        reply = await self._script(keys=[keys.quota_key(digest)], args=args)
        if int(reply[0]):
            return QuotaVerdict(True, 0.0)
        wait = float(reply[1].decode() if isinstance(reply[1], bytes) else reply[1])
        return QuotaVerdict(False, math.inf if wait < 0 else wait)
