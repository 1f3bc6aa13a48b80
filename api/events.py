"""Follow a request's event stream in Redis until it finishes, fails, or its worker is lost.

Workers publish ``start``, ``delta``, ``done`` and ``error`` events, each tagged
with the delivery attempt.  A request whose worker died is redelivered and
starts again as a new attempt: a follower that has already handed tokens of
the old attempt to a client cannot rewind them, so it ends with a clear error
(:class:`WorkerLost`); one that has not yet sent anything simply follows the
new attempt.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from broker import keys

POLL_BLOCK_MS = 1000


class WorkerLost(Exception):
    pass


class RequestFailed(Exception):
    pass


class RequestTimedOut(Exception):
    pass


async def follow(client: aioredis.Redis, request_id: str, *, timeout_s: float,
                 tokens_sent=lambda: False, liveness_check_s: float = 2.0) -> AsyncIterator[dict]:
    """Yield the current attempt's ``start``/``delta`` events, then its ``done`` event."""
    stream = keys.request_events_key(request_id)
    last_id = "0"
    attempt = None
    worker = None
    deadline = time.monotonic() + timeout_s
    next_liveness_check = time.monotonic() + liveness_check_s
    while True:
        if time.monotonic() > deadline:
            raise RequestTimedOut(f"request {request_id} did not finish within {timeout_s:.0f}s")
        reply = await client.xread({stream: last_id}, count=256, block=POLL_BLOCK_MS)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                event = json.loads(fields[b"event"])
                kind = event["type"]
                if kind == "start":
                    if attempt is not None and event["attempt"] != attempt and tokens_sent():
                        raise WorkerLost(
                            f"worker {worker} was lost mid-generation; the request is being re-run on another "
                            "worker but a stream cannot be rewound — retry the request")
                    attempt, worker = event["attempt"], event["worker"]
                    yield event
                elif attempt is not None and event.get("attempt") != attempt:
                    continue  # a stale attempt still draining after its redelivery
                elif kind == "delta":
                    yield event
                elif kind == "done":
                    yield event
                    return
                elif kind == "error":
                    raise RequestFailed(event.get("message", "generation failed"))
        if worker is not None and time.monotonic() >= next_liveness_check:
            next_liveness_check = time.monotonic() + liveness_check_s
            if tokens_sent() and not await client.exists(keys.worker_key(worker)):
                raise WorkerLost(
                    f"worker {worker} stopped responding mid-generation; the request will be re-run on another "
                    "worker but a stream cannot be rewound — retry the request")
        await asyncio.sleep(0)
