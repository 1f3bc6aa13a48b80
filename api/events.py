"""Follow requests' event streams in Redis until they finish, fail, or their worker is lost.

Workers publish ``start``, ``delta``, ``done`` and ``error`` events, each tagged
with the delivery attempt, to one Redis stream per request.  An API process
reads all the streams it follows with ONE blocking ``XREAD`` (the
:class:`EventHub`), so a thousand open requests cost one Redis connection, not
a thousand; a subscription wakes the reader through a private wake-up stream.

A request whose worker died is redelivered and starts again as a new attempt:
a follower that has already handed tokens of the old attempt to a client
cannot rewind them, so it ends with a clear error (:class:`WorkerLost`); one
that has sent nothing simply follows the new attempt.

Events arrive at least once: a worker's publish that Redis applied just before a restart, and whose reply
was lost, is retried by its client and lands twice.  A follower therefore skips a repeated ``start`` of its
attempt and a ``delta`` whose ``offset`` (the tokens its attempt published before it) it has passed.

A Redis outage is an expected state: the hub keeps each stream's last event id and, once Redis answers
again, reads on from there, so a follower misses nothing.  A follower whose events have been unreadable
for ``outage_s`` ends with :class:`EventsUnavailable` (a clear SSE error) instead of waiting on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aioredis

from broker.request_events import decode_event
from core import keys

log = logging.getLogger(__name__)
READ_BLOCK_MS = 1000


class WorkerLost(Exception):
    pass


class RequestFailed(Exception):
    pass


class RequestTimedOut(Exception):
    pass


class EventsUnavailable(Exception):
    """Redis has been unreachable for too long to keep a client waiting."""


def redis_down(error: BaseException) -> bool:
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError))


class EventHub:
    def __init__(self, client: aioredis.Redis, outage_s: float = 30.0):
        self.client = client
        self.outage_s = outage_s
        self.unreachable_since: float | None = None  # monotonic; set while reads fail on a Redis outage
        self.wake_key = f"{keys.PREFIX}:api-wake:{uuid.uuid4().hex}"
        self._followers: dict[str, list] = {}  # stream key -> [last id, queue]
        self._wake_pending = False

    def subscribe(self, request_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._followers[keys.request_events_key(request_id)] = ["0", queue]
        return queue

    async def wake(self) -> None:
        # One wake-up per read round is enough: the reader picks up every subscription made meanwhile.
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            await self.client.xadd(self.wake_key, {"w": "1"}, maxlen=16, approximate=True)
        except redis.RedisError as exc:
            if not redis_down(exc):
                raise
            # Nothing lost: the reader's next round (within READ_BLOCK_MS of Redis being back) reads it too.
            self._wake_pending = False

    def unreachable_for(self, now: float) -> float:
        """Seconds the hub has been unable to read from Redis (0 while it reads)."""
        return 0.0 if self.unreachable_since is None else now - self.unreachable_since

    def unsubscribe(self, request_id: str) -> None:
        self._followers.pop(keys.request_events_key(request_id), None)

    async def run(self) -> None:
        wake_id = "$"
        while True:
            self._wake_pending = False
            streams = {self.wake_key: wake_id, **{key: entry[0] for key, entry in self._followers.items()}}
            try:
                reply = await self.client.xread(streams, count=512, block=READ_BLOCK_MS)
            except redis.RedisError as exc:
                if not redis_down(exc):
                    log.exception("event hub read failed; retrying")
                elif self.unreachable_since is None:
                    self.unreachable_since = time.monotonic()
                    log.warning("event hub: Redis unreachable (%s); following %d streams from their last event "
                                "ids once it is back", exc, len(self._followers))
                await asyncio.sleep(0.5)
                continue
            if self.unreachable_since is not None:
                log.info("event hub: Redis reachable again after %.1f s; streams resumed",
                         time.monotonic() - self.unreachable_since)
                self.unreachable_since = None
            for stream, entries in reply or []:
                stream = stream.decode()
                if stream == self.wake_key:
                    wake_id = entries[-1][0]
                    continue
                follower = self._followers.get(stream)
                if follower is None:
                    continue
                for entry_id, fields in entries:
                    follower[0] = entry_id
                    follower[1].put_nowait(decode_event(fields))

    async def close(self) -> None:
        try:
            await self.client.delete(self.wake_key)
        except redis.RedisError as exc:  # a stop during an outage; the stream is capped and harmless
            log.warning("could not delete %s: %s", self.wake_key, exc)


async def follow(hub: EventHub, request_id: str, *, timeout_s: float, tokens_sent=lambda: False,
                 liveness_check_s: float = 1.0, worker_absent_grace_s: float = 0.0) -> AsyncIterator[dict]:
    """Yield the current attempt's ``start``/``delta`` events, then its ``done`` event.

    After tokens were sent, the request is lost when another attempt starts, or when its worker's heartbeat
    key has stayed absent for ``worker_absent_grace_s``: a host stall longer than the heartbeat TTL lets
    the key expire under a live worker, which writes it again as soon as it runs."""
    queue = hub.subscribe(request_id)
    await hub.wake()
    attempt = None
    worker = None
    next_offset = 0  # tokens of the current attempt yielded so far
    worker_absent_since = None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimedOut(f"request {request_id} did not finish within {timeout_s:.0f}s")
            try:
                event = await asyncio.wait_for(queue.get(), min(liveness_check_s, remaining))
            except asyncio.TimeoutError:
                now = time.monotonic()
                if hub.unreachable_for(now) >= hub.outage_s:
                    raise EventsUnavailable(
                        f"Redis has been unreachable for {hub.unreachable_for(now):.0f} s; the events of request "
                        f"{request_id} cannot be read (it may still finish: GET /v1/sluice/requests/{request_id})"
                    ) from None
                if hub.unreachable_since is not None:
                    continue  # a worker's heartbeat cannot be read either: wait for Redis before judging it
                try:
                    worker_present = (worker is None or not tokens_sent()
                                      or await hub.client.exists(keys.worker_key(worker)))
                except redis.RedisError as exc:
                    if not redis_down(exc):
                        raise
                    continue
                if worker_present:
                    worker_absent_since = None
                    continue
                if worker_absent_since is None:
                    worker_absent_since = now
                if now - worker_absent_since >= worker_absent_grace_s:
                    raise WorkerLost(
                        f"worker {worker} stopped responding mid-generation; the request will be re-run on another "
                        "worker, but a stream cannot be rewound: retry the request") from None
                continue
            worker_absent_since = None
            kind = event["type"]
            if kind == "start":
                if attempt is not None and event["attempt"] <= attempt:
                    continue  # the same start written twice (a retried publish), or a stale attempt's
                if attempt is not None and tokens_sent():
                    raise WorkerLost(
                        f"worker {worker} was lost mid-generation; the request is being re-run on another "
                        "worker, but a stream cannot be rewound: retry the request")
                attempt, worker, next_offset = event["attempt"], event["worker"], 0
                yield event
            elif attempt is not None and event.get("attempt") != attempt:
                continue  # a stale attempt still draining after its redelivery
            elif kind == "delta":
                offset = event.get("offset", next_offset)
                if offset < next_offset:
                    continue  # a delta written twice (a retried publish): its tokens went out already
                next_offset = offset + event["tokens"]
                yield event
            elif kind == "done":
                yield event
                return
            elif kind == "error":
                raise RequestFailed(event.get("message", "generation failed"))
    finally:
        hub.unsubscribe(request_id)
