"""Pure parts of the broker and worker plumbing."""

from __future__ import annotations

import asyncio

import pytest

from core import keys
from broker import lanes
from broker.transport import SCORE_HEADER, lane_order, message_score
from workers.batching import DynamicBatchGate, make_gate
from broker.celery_app import broker_url


def test_lane_order_is_configured_priority_not_declaration_order():
    assert lane_order({"batch", "interactive"}, ("interactive", "batch")) == ["interactive", "batch"]
    assert lane_order({"batch", "interactive"}, ("batch", "interactive")) == ["batch", "interactive"]
    assert lane_order({"zz.reply", "batch", "interactive"}, ("interactive", "batch")) == ["interactive", "batch", "zz.reply"]


def test_message_score_defaults_to_arrival_and_sticks():
    message = {"headers": {}}
    score = message_score(message)
    assert message["headers"][SCORE_HEADER] == score
    assert message_score({"headers": {SCORE_HEADER: 3}}) == 3.0


def test_lane_keys_round_trip():
    assert keys.queue_of_lane_key(keys.lane_key("batch").encode()) == "batch"


def test_signal_keys_round_trip():
    assert keys.queue_of_signal_key(keys.lane_signal_key("batch").encode()) == "batch"
    assert keys.lane_signal_key("batch") != keys.lane_key("batch")


def test_pop_call_names_the_lanes_in_priority_order_then_the_woken_lane_if_not_consumed():
    call_keys, args = lanes.pop_call([("interactive", True), ("r.reply", False)], "batch", "w@x", 2.5)
    assert call_keys == [keys.UNACKED, keys.UNACKED_INDEX, keys.UNACKED_OWNER,
                         keys.lane_key("interactive"), keys.lane_signal_key("interactive"),
                         keys.lane_key("r.reply"), keys.lane_signal_key("r.reply"),
                         keys.lane_key("batch"), keys.lane_signal_key("batch")]
    assert args == ["2.5", "w@x", 2, "1", ""]
    # The woken lane among those consumed (or no token: a timed-out wait) adds nothing; no worker id: ''.
    assert lanes.pop_call([("batch", True)], "batch", None, 1.0)[0][3:] == [keys.lane_key("batch"),
                                                                             keys.lane_signal_key("batch")]
    assert lanes.pop_call([("batch", True)], None, None, 1.0)[1][1] == ""


def test_broker_url():
    assert broker_url("redis://h:1/2") == "sluice://h:1/2"
    with pytest.raises(ValueError):
        broker_url("amqp://h")


def test_dynamic_gate_runs_closed_batches():
    async def scenario():
        gate = DynamicBatchGate(batch_size=2, collect_timeout_s=0.05)
        started, finished = [], []

        async def request(name, duration):
            async with gate.admit():
                started.append((name, len(finished)))
                await asyncio.sleep(duration)
                finished.append(name)

        tasks = [asyncio.create_task(request("a", 0.1)), asyncio.create_task(request("b", 0.2))]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(request("c", 0.01)))  # arrives mid-batch: must wait for a and b
        await asyncio.gather(*tasks)
        return started

    started = asyncio.run(scenario())
    assert sorted(started[:2]) == [("a", 0), ("b", 0)]
    assert started[2] == ("c", 2)


def test_dynamic_gate_releases_a_partial_batch_after_the_timeout():
    async def scenario():
        gate = DynamicBatchGate(batch_size=8, collect_timeout_s=0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with gate.admit():
            return loop.time() - t0

    # Released after the timeout, not at once and not never (the upper bound only leaves room for a host stall).
    assert 0.04 <= asyncio.run(scenario()) < 30.0


def test_none_mode_is_one_at_a_time():
    gate = make_gate("none", 32, 0.1)
    assert isinstance(gate, DynamicBatchGate) and gate.batch_size == 1
