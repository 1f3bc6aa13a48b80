"""The worker's side of a client that left: which held requests the watch asks about, and marking one aborted."""

from __future__ import annotations

import asyncio

from workers.inflight import InflightRequests


def _started(inflight: InflightRequests, request_id: str, batch_id: str | None = None):
    held, _ = inflight.hold(request_id, "interactive", preemptible=False, batch_id=batch_id)
    inflight.count(held, attempt=1, started_at=0.0, admission_limit=8, preempts=False)
    return held


def test_only_started_followed_requests_are_watched():
    inflight = InflightRequests()
    _started(inflight, "chat-1")
    _started(inflight, "batch_1-0", batch_id="batch_1")
    inflight.hold("chat-2", "interactive", preemptible=False)  # held, not started: no attempt to abort yet
    assert inflight.followed_ids() == ["chat-1"]


def test_abort_request_marks_once_and_returns_the_running_task():
    async def scenario():
        inflight = InflightRequests()
        held = _started(inflight, "chat-1")
        task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        inflight.on_loop(held, task)
        assert inflight.abort_request("chat-1", "cancelled") is held
        assert inflight.aborted_as(held) == "cancelled"
        assert inflight.abort_request("chat-1", "cancelled") is None  # told once
        assert inflight.followed_ids() == []
        assert inflight.abort_request("unknown", "cancelled") is None
        task.cancel()

    asyncio.run(scenario())


def test_a_request_not_on_the_loop_yet_is_marked_without_a_task():
    inflight = InflightRequests()
    held = _started(inflight, "chat-1")
    assert inflight.abort_request("chat-1", "cancelled") is None  # no task to cancel
    assert inflight.aborted_as(held) == "cancelled"  # PreemptibleEngine ends it at its first output
