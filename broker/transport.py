"""A kombu transport whose queues are Redis sorted sets.

Built on kombu's Redis transport: everything but the queue data structure
(connection handling, fanout/pidbox over pub/sub, ack emulation, the async
event loop integration Celery uses) is kombu's.  What changes:

* publish is ``ZADD lane score message``; the score travels in the message
  headers (``sluice_score``) so that a redelivered message goes back to the
  place it had; a message published with the ``sluice_ledger`` header (every
  request the API publishes) is instead enqueued by the request ledger
  (:mod:`broker.ledger`), which adds it to its lane and records the request in
  one atomic step;
* every write into a lane also pushes a wake-up token onto the lane's signal
  list (:mod:`broker.lanes`); a consumer blocks with ``BLPOP signal1 signal2
  ...`` (lanes in an explicit priority order), and once woken (or when the
  wait times out: a safety net) runs one script that pops the lowest-score
  message of the first non-empty lane in that order AND records it as unacked
  under its delivery tag, with the worker that holds it.  No popped message is
  ever held by a process alone: a worker killed right after the pop leaves it
  in the unacked records, and kombu's ``QoS.append`` writes nothing more;
* each unacked message records which worker holds it, so that the messages of
  a worker whose heartbeat stopped can be redelivered at once
  (:mod:`broker.redelivery`) rather than after kombu's visibility timeout;
* optional *headroom*: a worker full to its prefetch limit, and holding work
  from other lanes, may still take ``headroom`` more messages from its headroom
  lanes (the interactive lane of a preempting mixed worker), so an interactive
  request is received the moment it arrives, not after a batch request has
  given its slot back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time

import redis
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis import sentinel as redis_sentinel

from broker import lanes as lane_ops
from broker.ledger import LEDGER_HEADER, SCORE_HEADER, Ledger, LedgerEntry, ReplicaWait
from core import keys

HEADROOM_POLL_S = 0.25  # a full consumer's wait on its headroom lanes alone, before it looks at all lanes again
BULK_PUT_REQUESTS = 500  # requests per pipeline of a bulk publish: ~1 MB of messages a round trip
_POP = lane_ops.OnceScript(lane_ops.POP)


def message_score(message: dict) -> float:
    """The schedule position of a kombu message; arrival time when none was given."""
    headers = message.setdefault("headers", {})
    score = headers.get(SCORE_HEADER)
    if score is None:
        score = time.time()
        headers[SCORE_HEADER] = score
    return float(score)


def message_body(message: dict) -> bytes | str:
    """A stored message's body as published: base64-decoded when the message says so (kombu's default
    encoding, and this transport's before it stored bodies as JSON text)."""
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        return base64.b64decode(body)
    return body


def request_payload(message: dict) -> dict:
    """The request a task message carries (the first argument of ``sluice.generate``)."""
    return json.loads(message_body(message))[0][0]


def lane_order(active_queues, lane_priority) -> list[str]:
    """Active queues, the configured lanes first in their priority order, then the rest by name."""
    rank = {lane: index for index, lane in enumerate(lane_priority)}
    return sorted(active_queues, key=lambda queue: (rank.get(queue, len(rank)), queue))


class QoS(kombu_redis.QoS):
    def held(self) -> int:
        """Messages delivered to this consumer and not yet acknowledged."""
        return len(self._delivered) - len(self._dirty)

    def full(self) -> bool:
        """At the prefetch limit: from here on only headroom lanes are consumed."""
        return bool(self.prefetch_count) and self.held() >= self.prefetch_count

    def can_consume(self):
        if not self.prefetch_count:
            return True
        held = self.held()
        # Called on every poll: the headroom (which scans held messages) only matters once full.
        return held < self.prefetch_count or held < self.prefetch_count + self.channel.usable_headroom()

    def append(self, message, delivery_tag):
        if self.channel.recorded_tag == delivery_tag:
            # The channel's pop recorded it as unacked in the same script (broker.lanes.POP).
            virtual.QoS.append(self, message, delivery_tag)
            return
        # Any other delivery (kombu's rejection of a message no consumer wants): kombu's writes, with the owner.
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            if self.channel.worker_id:
                pipe.hset(keys.UNACKED_OWNER, delivery_tag, self.channel.worker_id)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag, pipe=None):
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        if self.channel.worker_id:  # only consumers with an id recorded an owner
            pipe = pipe.hdel(keys.UNACKED_OWNER, delivery_tag)
        return pipe


class Channel(kombu_redis.Channel):
    QoS = QoS

    # One sorted set per queue; kombu's priority sub-queues are not used.
    priority_steps = [0]
    # Message bodies are JSON text (the only serializer Sluice accepts), stored as they are: kombu's default
    # base64 (for binary serializers) makes every queued request a third bigger.  A consumer decodes each
    # message by its own body_encoding property, so messages published before this change still read.
    body_encoding = None
    unacked_key = keys.UNACKED
    unacked_index_key = keys.UNACKED_INDEX
    unacked_mutex_key = keys.UNACKED_MUTEX
    lane_priority: tuple[str, ...] = ("interactive", "batch")
    worker_id: str | None = None
    # Lanes a full consumer still takes from, and how many messages beyond its prefetch limit.
    headroom_lanes: tuple[str, ...] = ()
    headroom: int = 0
    # Enqueue waits for this many replicas to have each publish (Redis WAIT; 0: no wait), at most wait_timeout_ms.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    _shared_client = None
    _ledger_of_client = None
    # While a bulk publish collects (``collect_requests``): the requests ``_put`` was given, not yet sent.
    _collected: list | None = None
    # The delivery tag this channel's pop just recorded as unacked, while that message is being delivered.
    recorded_tag: str | None = None

    from_transport_options = kombu_redis.Channel.from_transport_options + (
        "lane_priority", "worker_id", "headroom_lanes", "headroom", "wait_replicas", "wait_timeout_ms")

    def __init__(self, *args, **kwargs):
        self._no_ack_queues: set[str] = set()  # consumed without acks: their pops record nothing
        self._get_no_ack = False  # basic_get's no_ack, for the _get it calls
        self._put_script = None
        super().__init__(*args, **kwargs)

    @property
    def replica_wait(self) -> ReplicaWait:
        return ReplicaWait(int(self.wait_replicas or 0), int(self.wait_timeout_ms))

    def usable_headroom(self) -> int:
        """Headroom exists to displace other lanes' work: none while this consumer holds only headroom-lane
        messages (a worker full of interactive requests takes the next one in queue order, not early)."""
        if not self.headroom or not any(lane in self.active_queues for lane in self.headroom_lanes):
            return 0
        dirty = self.qos._dirty
        held_lanes = {message.delivery_info.get("routing_key") for tag, message in list(self.qos._delivered.items())
                      if tag not in dirty}
        return self.headroom if held_lanes - set(self.headroom_lanes) else 0

    def consumable_lanes(self) -> list[str]:
        """The lanes to pop from now, in priority order: only headroom lanes while the consumer is full."""
        lanes = lane_order(self.active_queues, self.lane_priority)
        if self.qos.full():
            lanes = [lane for lane in lanes if lane in self.headroom_lanes]
        return lanes

    @contextlib.contextmanager
    def conn_or_acquire(self, client=None):
        # kombu builds a fresh redis.Redis per call (two per message); one per channel, over the same
        # thread-safe pool, does the same work (measured: bench/broker_bench.py, docs/bench-broker.md).
        if client:
            yield client
            return
        # A closing or closed channel keeps its client: kombu drops the channel's pool first, and building
        # one again fails once the connection is gone (a broker connection lost: Celery closes the channel,
        # and the tasks still running acknowledge their messages on it after the reconnect).
        if self._shared_client is None or (not (self._closing or self.closed)
                                           and self._shared_client.connection_pool is not self.pool):
            self._shared_client = self._create_client()
        yield self._shared_client

    @property
    def do_restore(self) -> bool:
        """kombu puts a channel's unacknowledged messages back in their lanes when the channel closes, which
        it also does when the broker connection is lost: a worker would then see requests it is still running
        redelivered.  A worker's messages are tagged with its id and go back through broker.redelivery once
        its heartbeat is gone (a clean exit retires it at once), so its channels restore nothing; an untagged
        consumer keeps kombu's behaviour."""
        return not self.worker_id

    def _q_for_pri(self, queue, pri):
        return keys.lane_key(queue)

    def _ledger(self, client) -> Ledger:
        if self._ledger_of_client is None or self._ledger_of_client.client is not client:
            self._ledger_of_client = Ledger(client)
        return self._ledger_of_client

    @contextlib.contextmanager
    def collect_requests(self):
        """Publish many requests in few round trips: inside this block ``_put`` collects each request
        (everything Celery's ``send_task`` built: the message as it would be stored), and at its end
        they go to the ledger in pipelines of ``BULK_PUT_REQUESTS`` (each still enters whole or not
        at all).  Yields a list that the block's end fills with each request's enqueue result."""
        self._collected = []
        results: list[bool] = []
        try:
            yield results
            collected, self._collected = self._collected, None
            with self.conn_or_acquire() as client:
                ledger = self._ledger(client)
                for start in range(0, len(collected), BULK_PUT_REQUESTS):
                    results.extend(ledger.enqueue_many(collected[start:start + BULK_PUT_REQUESTS],
                                                       wait=self.replica_wait))
        finally:
            self._collected = None

    def _put(self, queue, message, **kwargs):
        kwargs.pop("_publish_batch", None)
        entry = message.get("headers", {}).get(LEDGER_HEADER)
        if entry is not None:
            # Not stored with the message (a redelivered copy must not enqueue again), and not stripped
            # from the caller's headers either: kombu publishes that same dict again when it retries.
            headers = {name: value for name, value in message["headers"].items() if name != LEDGER_HEADER}
            message = {**message, "headers": headers}
        score = message_score(message)
        if entry is not None and self._collected is not None:
            self._collected.append((queue, dumps(message), score, LedgerEntry.from_header(entry)))
            return
        wait = self.replica_wait
        with self.conn_or_acquire() as client:
            if entry is not None:
                # A request: into its lane and the request ledger in one atomic step (broker.ledger).
                if wait:
                    self._ledger(client).enqueue_many([(queue, dumps(message), score, LedgerEntry.from_header(entry))],
                                                      wait=wait)
                else:
                    self._ledger(client).enqueue(queue, dumps(message), score, LedgerEntry.from_header(entry))
            elif wait:
                with client.pipeline(transaction=False) as pipe:  # WAIT on the connection that wrote
                    self._put_plain(client, queue, message, score, pipe)
                    wait.add_to(pipe)
                    wait.check(pipe.execute()[-1], 1)
            else:
                self._put_plain(client, queue, message, score)

    def _put_plain(self, client, queue, message, score, pipe=None):
        """ZADD into the lane and push its wake-up token, in one script (broker.lanes.PUT)."""
        if self._put_script is None:
            self._put_script = client.register_script(lane_ops.PUT)
        self._put_script(keys=[keys.lane_key(queue), keys.lane_signal_key(queue)],
                         args=[repr(float(score)), dumps(message), lane_ops.SIGNAL_TOKENS_KEPT], client=pipe or client)

    def basic_consume(self, queue, no_ack, *args, **kwargs):
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue, no_ack=False, **kwargs):
        self._get_no_ack = no_ack
        try:
            return super().basic_get(queue, no_ack, **kwargs)
        finally:
            self._get_no_ack = False
            self.recorded_tag = None

    def _pop(self, client, lanes: list[str], woken: str | None = None, no_ack: bool = False):
        """One atomic pop (broker.lanes.POP) over ``lanes`` in order: the first non-empty lane's lowest-score
        message, recorded as unacked (with this worker as its owner) unless it is taken without an ack
        (``no_ack``, or its lane consumed so).  Returns (queue, message dict) and notes the recorded
        delivery tag, or raises Empty."""
        record = {lane: not no_ack and lane not in self._no_ack_queues for lane in lanes}
        call_keys, args = lane_ops.pop_call(list(record.items()), woken, self.worker_id, time.time(),
                                            self.unacked_key, self.unacked_index_key, keys.UNACKED_OWNER)
        popped = _POP(client, call_keys, args)
        if not popped:
            raise virtual.Empty()
        lane, member = popped
        queue = keys.queue_of_lane_key(lane)
        message = loads(bytes_to_str(member))
        if record[queue]:
            self.recorded_tag = message.get("properties", {}).get("delivery_tag")
        return queue, message

    def _get(self, queue):
        if queue not in self.consumable_lanes():
            raise virtual.Empty()
        with self.conn_or_acquire() as client:
            _queue, message = self._pop(client, [queue], no_ack=self._get_no_ack)
        return message

    def _size(self, queue):
        with self.conn_or_acquire() as client:
            return client.zcard(keys.lane_key(queue))

    def _purge(self, queue):
        with self.conn_or_acquire() as client:
            with client.pipeline() as pipe:
                size, _ = pipe.zcard(keys.lane_key(queue)).delete(keys.lane_key(queue),
                                                                  keys.lane_signal_key(queue)).execute()
        return size

    def _brpop_start(self, timeout=None):
        if timeout is None:
            timeout = self.brpop_timeout
        # A full consumer with headroom waits on its headroom lanes alone, briefly: a slot that frees
        # meanwhile widens the next wait to every lane, and the wait bounds how long it stays idle.
        queues = self.consumable_lanes()
        if not queues:
            return
        if self.qos.full():
            timeout = min(timeout or HEADROOM_POLL_S, HEADROOM_POLL_S)
        # Block on the lanes' wake-up signals (broker.lanes), in priority order; the pop is _brpop_read's.
        command = ["BLPOP", *[keys.lane_signal_key(queue) for queue in queues], timeout or 0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        try:
            try:
                woken = self.client.parse_response(self.client.connection, "BLPOP", **options)
                # Woken by a token, or the wait timed out (then the pop is the safety net for a lost token):
                # pop and record as unacked in one script, on this same connection.
                lanes = self.consumable_lanes()
                if not lanes:
                    raise virtual.Empty()
                queue, message = self._pop(self.client, lanes, keys.queue_of_signal_key(woken[0]) if woken else None)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            self.connection._deliver(message, queue)
            return True
        finally:
            self.recorded_tag = None
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type, **options):
        if type == "BRPOP":
            type = "BLPOP"
        return super()._poll_error(type, **options)

    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        # Back to the original score, so a redelivered request keeps its place.
        try:
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        except KeyError:
            pass
        score = message_score(payload)
        for queue in self._lookup(exchange, routing_key):
            pipe.zadd(keys.lane_key(queue), {dumps(payload): score})
            lane_ops.signal(pipe, queue)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The lanes channel on a Sentinel group's master: its connection pools are redis-py Sentinel pools
    (kombu's SentinelChannel), which find the master through the sentinels on each new connection, so
    after a failover publishers and consumers reconnect to the promoted replica.  Unlike kombu's, the
    sentinels come from the ``sentinels`` transport option (a list of [host, port]), which
    broker.celery_app fills from the ``redis+sentinel://`` URL (core.redis_urls)."""

    from_transport_options = kombu_redis.SentinelChannel.from_transport_options + (
        "lane_priority", "worker_id", "headroom_lanes", "headroom", "wait_replicas", "wait_timeout_ms", "sentinels")
    sentinels: tuple = ()

    def _sentinel_managed_pool(self, asynchronous=False):
        params = self._connparams(asynchronous)
        host, port = params.pop("host", None), params.pop("port", None)
        sentinels = [tuple(address) for address in self.sentinels] or [(host, port)]
        manager = redis_sentinel.Sentinel(sentinels, min_other_sentinels=getattr(self, "min_other_sentinels", 0),
                                          sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **params)
        # Kept so that kombu's _disconnect_pools closes the connections to the sentinels too.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        if getattr(self, "master_name", None) is None:
            raise ValueError("the 'master_name' transport option must be given for a Sentinel broker")
        auth = {name: params[name] for name in ("username", "password") if name in params}
        return manager.master_for(self.master_name, redis.Redis, **auth).connection_pool


class Transport(kombu_redis.Transport):
    Channel = Channel
    driver_type = "redis"
    driver_name = "redis"

    @property
    def supports_batch_publish(self):
        return False


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = 26379


def register() -> None:
    """Make ``sluice://`` (and ``sluicesentinel://``) broker URLs resolve to this transport."""
    TRANSPORT_ALIASES.setdefault("sluice", "broker.transport:Transport")
    TRANSPORT_ALIASES.setdefault("sluicesentinel", "broker.transport:SentinelTransport")


register()
