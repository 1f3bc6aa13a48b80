"""Cursor pagination over a sorted-set index (the Files and Batches lists): OpenAI's ``after`` and ``limit``."""

from __future__ import annotations

from typing import Literal


class UnknownCursor(LookupError):
    """A listing's ``after`` names no entry of that listing."""


# Rank of the cursor and the page after it in one step, so a concurrent insert or delete cannot shift it.
_PAGE_SCRIPT = """
local start = 0
if ARGV[1] ~= '' then
  local rank
  if ARGV[3] == 'desc' then rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  else rank = redis.call('ZRANK', KEYS[1], ARGV[1]) end
  if not rank then return {0, {}} end
  start = rank + 1
end
local stop = start + tonumber(ARGV[2]) - 1
if ARGV[3] == 'desc' then return {1, redis.call('ZREVRANGE', KEYS[1], start, stop)} end
return {1, redis.call('ZRANGE', KEYS[1], start, stop)}
"""


class IndexPager:
    """Pages of member ids of a sorted set (asyncio client), after a cursor member, by score."""

    def __init__(self, client):
        self._page = client.register_script(_PAGE_SCRIPT)

    async def ids(self, index: str, *, limit: int, after: str | None = None,
                  order: Literal["asc", "desc"] = "desc") -> tuple[list[str], bool]:
        """Up to ``limit`` ids after ``after`` and whether there are more; ``UnknownCursor`` when the index
        has no ``after``."""
        found, ids = await self._page(keys=[index], args=[after or "", limit + 1, order])
        if not found:
            raise UnknownCursor(after)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        return ids[:limit], len(ids) > limit
