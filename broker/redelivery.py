"""Redeliver the requests of workers that died.

kombu's Redis transport only redelivers an unacked message after its
visibility timeout, which must be longer than the longest generation (hours).
Sluice workers publish a heartbeat with a short TTL instead; when it lapses,
every message the worker held goes back to its lane with its original score.
Any process may run this sweep (the API and every worker do): the restore is a
WATCH/MULTI transaction, so a message is put back once however many sweepers
race for it.
"""

from __future__ import annotations

import logging

import time

import redis
from celery import bootsteps
from celery.worker import state as worker_state
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from broker import lanes
from broker.transport import message_score
from core import keys

log = logging.getLogger(__name__)


def dead_owner_tags(client: redis.Redis) -> dict[str, str]:
    """delivery_tag -> worker id, for unacked messages whose worker has no live heartbeat."""
    owners = {bytes_to_str(tag): bytes_to_str(owner) for tag, owner in client.hgetall(keys.UNACKED_OWNER).items()}
    if not owners:
        return {}
    distinct = sorted(set(owners.values()))
    with client.pipeline(transaction=False) as pipe:
        for worker_id in distinct:
            pipe.exists(keys.worker_key(worker_id))
        alive = dict(zip(distinct, pipe.execute()))
    return {tag: owner for tag, owner in owners.items() if not alive[owner]}


def restore_unacked(client: redis.Redis, delivery_tag: str, dead_owner: str | None = None) -> bool:
    """Put one unacked message back on its lane at its original score; False if it was already gone.

    With ``dead_owner``, only if that worker still holds it: another sweeper may
    have restored it already and a live worker taken it again (same delivery tag).
    """
    restored = False

    def transaction(pipe):
        nonlocal restored
        restored = False
        raw = pipe.hget(keys.UNACKED, delivery_tag)
        owner = pipe.hget(keys.UNACKED_OWNER, delivery_tag)
        if dead_owner is not None and (owner is None or bytes_to_str(owner) != dead_owner):
            return
        pipe.multi()
        pipe.zrem(keys.UNACKED_INDEX, delivery_tag)
        pipe.hdel(keys.UNACKED, delivery_tag)
        pipe.hdel(keys.UNACKED_OWNER, delivery_tag)
        if raw:
            payload, _exchange, routing_key = loads(bytes_to_str(raw))
            headers = payload.setdefault("headers", {})
            headers["redelivered"] = True
            # When it went back: the worker that takes it reports how long redelivery took.
            headers["sluice_redelivered_at"] = time.time()
            payload.get("properties", {}).get("delivery_info", {})["redelivered"] = True
            # Sluice declares every lane with routing key == queue name.
            pipe.zadd(keys.lane_key(routing_key), {dumps(payload): message_score(payload)})
            lanes.signal(pipe, routing_key)  # wakes a consumer blocked on the lane
            restored = True

    # WATCH both hashes: a concurrent restore or a new delivery of the same tag aborts and re-checks.
    client.transaction(transaction, keys.UNACKED, keys.UNACKED_OWNER)
    return restored


def redeliver_from_dead_workers(client: redis.Redis) -> list[str]:
    """One sweep: restore every message held by a worker whose heartbeat lapsed."""
    restored = []
    for tag, owner in dead_owner_tags(client).items():
        if restore_unacked(client, tag, dead_owner=owner):
            log.warning("worker %s stopped beating: redelivered message %s", owner, tag)
            restored.append(tag)
    return restored


def redeliver_unheld(client: redis.Redis, worker_id: str, held_tags: set[str]) -> list[str]:
    """Restore the messages recorded as this live worker's that it does not hold (``held_tags``).

    After its broker connection broke (a Redis failover, a network cut), Celery drops the messages the
    worker had received but not started; the transport's unacked records still name the worker, so
    neither the dead-worker sweep nor anything but kombu's visibility timeout (hours) would bring them
    back.  Run when the consumer (re)connects (:class:`RedeliverUnheld`)."""
    restored = []
    for tag, owner in client.hgetall(keys.UNACKED_OWNER).items():
        tag, owner = bytes_to_str(tag), bytes_to_str(owner)
        if owner == worker_id and tag not in held_tags and restore_unacked(client, tag, dead_owner=worker_id):
            log.warning("worker %s no longer holds message %s (its connection was lost): redelivered",
                        worker_id, tag)
            restored.append(tag)
    return restored


class RedeliverUnheld(bootsteps.StartStopStep):
    """A consumer step: each time the consumer (re)connects, ``redeliver_unheld`` for this worker (its
    ``worker_id`` transport option), keeping the tasks it is still running."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer):
        worker_id = consumer.app.conf.broker_transport_options.get("worker_id")
        if not worker_id:
            return
        held = {request.message.delivery_tag for request in [*worker_state.active_requests,
                                                             *worker_state.reserved_requests]}
        redeliver_unheld(consumer.connection.default_channel.client, worker_id, held)
