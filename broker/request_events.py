"""A request's event stream (``sluice:events:<id>``): what a worker tells the API following the request.

Each entry has one field, ``event``: a JSON object with a ``type`` — ``start``, ``delta``, ``done``,
``error`` or ``preempted`` — and the ``attempt`` it belongs to (api/events.py reads them).  Workers
publish ``start`` and ``delta`` with :func:`publish`; the terminal events (``done``, ``error``,
``preempted``) are written by the request ledger (:mod:`broker.ledger`) in the same atomic step as the
request's state, with :func:`encode_event`.

A ``delta`` also carries its ``offset``: the tokens its attempt published before it.  ``publish`` is not
idempotent (a client retry after a lost reply appends the event again), so readers drop the repeats by it.
"""

from __future__ import annotations

import json

from core import keys

EVENTS_TTL_S = 3600
EVENT_FIELD = "event"


def encode_event(event: dict) -> str:
    """The value of a stream entry's ``event`` field."""
    return json.dumps(event)


def decode_event(fields: dict) -> dict:
    """The event of a stream entry as XREAD returns it (bytes keys and values)."""
    return json.loads(fields[EVENT_FIELD.encode()])


async def publish(client, request_id: str, event: dict) -> None:
    """Append one event to the request's stream (a ``redis.asyncio`` client) and renew the stream's TTL."""
    key = keys.request_events_key(request_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {EVENT_FIELD: encode_event(event)})
        pipe.expire(key, EVENTS_TTL_S)
        await pipe.execute()
