"""A lane's writes and its consume step: the sorted set, its wake-up signal, and the pop that records.

A lane (``sluice:lane:<queue>``, a sorted set of kombu messages) has a *signal* list beside it
(``sluice:signal:<queue>``): every write that puts a message into the lane (the ledger's enqueue, the
transport's plain publish and restore, a dead worker's redelivery) pushes one token onto it in the same
atomic step, and trims it to ``SIGNAL_TOKENS_KEPT`` tokens.  A consumer blocks on the signals with
``BLPOP`` (no polling), then runs :data:`POP` once: over the lanes it may consume, in priority order, it
takes the lowest-score message of the first non-empty lane AND records it as unacked (kombu's ack
emulation: the message under its delivery tag, the time, and the worker that holds it) in one script.
There is no moment at which a popped message is held by a process only: a consumer killed right after the
pop leaves its message in the unacked records, where ``broker.redelivery`` finds it.

A token is a hint, not a message: a consumer woken for nothing (another took the message) finds the lanes
empty and blocks again, and a consumer's blocking wait has a timeout after which it runs the pop anyway
(the safety net for a token lost with a consumer that died between its ``BLPOP`` and its pop).  The pop
script keeps each lane it looks at between one token (lane not empty) and as many tokens as messages.
"""

from __future__ import annotations

import hashlib

from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

from core import keys

# Tokens a lane's signal keeps at most: beyond this many waiting messages a token wakes nobody new (a
# consumer that pops re-arms the signal while the lane is not empty).
SIGNAL_TOKENS_KEPT = 1000
TOKEN = "1"

# Lua: push one token onto a lane's signal, capped (used inside every script that adds to a lane).
SIGNAL_LUA = """
local function signal_lane(signal, kept)
  redis.call('LPUSH', signal, '%s')
  redis.call('LTRIM', signal, 0, tonumber(kept) - 1)
end
""" % TOKEN

# KEYS: lane, signal.  ARGV: score, message, tokens kept.
PUT = SIGNAL_LUA + """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
signal_lane(KEYS[2], ARGV[3])
return 1
"""

# KEYS: unacked (hash), unacked index (zset), unacked owner (hash), then (lane, signal) per lane: first the
#       lanes to consume, in priority order, then (when it is not one of them) the lane whose token woke the
#       consumer, whose signal is re-armed but which is not popped.
# ARGV: now, worker id ('' for none), number of lanes to consume, then per lane to consume '1' to record
#       its message as unacked ('' for a no-ack consumer).
# Returns {lane key, message} or nil.  The unacked record is kombu's ack emulation's (QoS.append):
# delivery tag -> [message, exchange, routing key], delivery tag -> now in the index, and the owner.
POP = """
local specs = {KEYS[1], 'hash', KEYS[2], 'zset', KEYS[3], 'hash'}
for i = 4, #KEYS, 2 do
  table.insert(specs, KEYS[i]); table.insert(specs, 'zset')
  table.insert(specs, KEYS[i + 1]); table.insert(specs, 'list')
end
for i = 1, #specs, 2 do
  local found = redis.call('TYPE', specs[i])['ok']
  if found ~= 'none' and found ~= specs[i + 1] then
    return redis.error_reply('WRONGTYPE ' .. specs[i] .. ' holds a ' .. found .. ', the lane pop needs a ' .. specs[i + 1])
  end
end
local consumed = tonumber(ARGV[3])
local popped, member
for i = 1, consumed do
  local got = redis.call('ZPOPMIN', KEYS[2 + 2 * i])
  if got[1] then
    popped, member = i, got[1]
    break
  end
end
-- Each lane looked at keeps between one token (not empty) and as many tokens as it has messages.
for i = 1, (#KEYS - 3) / 2 do
  local lane, signal = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local size = redis.call('ZCARD', lane)
  local tokens = redis.call('LLEN', signal)
  if size == 0 then
    if tokens > 0 then redis.call('DEL', signal) end
  elseif tokens == 0 then
    redis.call('LPUSH', signal, '%s')
  elseif tokens > size then
    redis.call('LTRIM', signal, 0, size - 1)
  end
end
if not member then return nil end
if ARGV[3 + popped] == '1' then
  local ok, message = pcall(cjson.decode, member)
  local properties = ok and type(message) == 'table' and message['properties']
  local tag = type(properties) == 'table' and properties['delivery_tag']
  if type(tag) == 'string' then
    local info = properties['delivery_info']
    if type(info) ~= 'table' then info = {} end
    local exchange, routing_key = info['exchange'], info['routing_key']
    if exchange == nil then exchange = cjson.null end
    if routing_key == nil then routing_key = cjson.null end
    -- The message text as it was stored (no decode/encode round trip: Lua numbers would lose digits).
    redis.call('HSET', KEYS[1], tag,
               '[' .. member .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], tag, ARGV[2]) end
  end
end
return {KEYS[2 + 2 * popped], member}
""" % TOKEN


def signal(pipe, queue: str) -> None:
    """Add the wake-up token for a message added to ``queue``'s lane in the same transaction (``pipe``)."""
    key = keys.lane_signal_key(queue)
    pipe.lpush(key, TOKEN)
    pipe.ltrim(key, 0, SIGNAL_TOKENS_KEPT - 1)


def pop_call(lanes: list[tuple[str, bool]], woken: str | None, worker_id: str | None, now: float,
             unacked: str = keys.UNACKED, unacked_index: str = keys.UNACKED_INDEX,
             unacked_owner: str = keys.UNACKED_OWNER) -> tuple[list[str], list]:
    """The keys and arguments of one :data:`POP` over ``lanes`` ((queue, record as unacked), in priority
    order); ``woken``: the queue whose token woke the consumer (None after a timeout)."""
    call_keys = [unacked, unacked_index, unacked_owner]
    for queue, _record in lanes:
        call_keys += [keys.lane_key(queue), keys.lane_signal_key(queue)]
    if woken is not None and woken not in {queue for queue, _record in lanes}:
        call_keys += [keys.lane_key(woken), keys.lane_signal_key(woken)]
    args = [repr(float(now)), worker_id or "", len(lanes), *("1" if record else "" for _queue, record in lanes)]
    return call_keys, args


class OnceScript:
    """A Lua script run exactly once per call: EVALSHA (EVAL when the server lacks it) sent and read on one
    connection, without redis-py's retries.  A retried pop whose first reply was lost would pop a second
    message, and the first would stay recorded as held by a worker that never received it."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client, call_keys: list[str], args: list):
        """Run on ``client``'s own connection (kombu's polling client holds one) or one from its pool; on a
        connection error the connection is dropped (the next use reconnects) and the error raised."""
        own = getattr(client, "connection", None)
        connection = own or client.connection_pool.get_connection()
        try:
            try:
                connection.send_command("EVALSHA", self.sha, len(call_keys), *call_keys, *args)
                return client.parse_response(connection, "EVALSHA")
            except NoScriptError:  # a restarted or new server: EVAL loads it (cached for the next EVALSHA)
                connection.send_command("EVAL", self.source, len(call_keys), *call_keys, *args)
                return client.parse_response(connection, "EVAL")
        except (ConnectionError, TimeoutError):
            connection.disconnect()
            raise
        finally:
            if own is None:
                client.connection_pool.release(connection)
