"""The mixed-instance preemption decision (workers.preemption), without a worker."""

from __future__ import annotations

import pytest

from workers.preemption import RunningRequest, batch_requests_to_preempt, worker_preempts


def running(*specs) -> list[RunningRequest]:
    """specs: (request id, lane, started_at[, attempt])."""
    return [RunningRequest(*spec) for spec in specs]


FULL_OF_BATCH = running(("b-old", "batch", 10.0), ("b-mid", "batch", 20.0), ("b-new", "batch", 30.0))
FULL = {"interactive": 0, "batch": 3}


def test_full_mixed_worker_preempts_newest_batch_request_per_queued_interactive():
    assert batch_requests_to_preempt("mixed", 3, FULL, 1, FULL_OF_BATCH) == ["b-new"]
    assert batch_requests_to_preempt("mixed", 3, FULL, 2, FULL_OF_BATCH) == ["b-new", "b-mid"]


def test_never_more_than_the_batch_requests_running():
    assert batch_requests_to_preempt("mixed", 3, FULL, 10, FULL_OF_BATCH) == ["b-new", "b-mid", "b-old"]


def test_interactive_requests_are_never_preempted():
    mixed = running(("i-1", "interactive", 40.0), ("b-1", "batch", 10.0), ("i-2", "interactive", 50.0))
    assert batch_requests_to_preempt("mixed", 3, {"interactive": 2, "batch": 1}, 5, mixed) == ["b-1"]
    only_interactive = running(("i-1", "interactive", 40.0), ("i-2", "interactive", 50.0))
    assert batch_requests_to_preempt("mixed", 2, {"interactive": 2, "batch": 0}, 5, only_interactive) == []


def test_nothing_queued_nothing_preempted():
    assert batch_requests_to_preempt("mixed", 3, FULL, 0, FULL_OF_BATCH) == []


@pytest.mark.parametrize("inflight", [{"interactive": 0, "batch": 2}, {"interactive": 1, "batch": 1}, {}])
def test_a_worker_with_a_free_slot_preempts_nothing(inflight):
    assert batch_requests_to_preempt("mixed", 3, inflight, 4, FULL_OF_BATCH) == []


def test_full_counts_every_lane():
    work = running(("b-1", "batch", 10.0), ("b-2", "batch", 20.0))
    assert batch_requests_to_preempt("mixed", 3, {"interactive": 1, "batch": 2}, 1, work) == ["b-2"]


@pytest.mark.parametrize("pool", ["interactive", "batch"])
def test_only_mixed_workers_preempt(pool):
    assert batch_requests_to_preempt(pool, 3, FULL, 2, FULL_OF_BATCH) == []


def test_an_interactive_request_taken_over_the_limit_displaces_one_batch_request():
    over = {"interactive": 1, "batch": 3}  # the headroom slot in use
    assert batch_requests_to_preempt("mixed", 3, over, 0, FULL_OF_BATCH, interactive_over_limit=1) == ["b-new"]
    # ... plus one for each interactive request still queued in the lane
    assert batch_requests_to_preempt("mixed", 3, over, 1, FULL_OF_BATCH, interactive_over_limit=1) == [
        "b-new", "b-mid"]


def test_a_lowered_limit_alone_preempts_nothing():
    """Requests above a limit the local autoscaler just lowered drain; they are not aborted."""
    assert batch_requests_to_preempt("mixed", 1, FULL, 0, FULL_OF_BATCH) == []


def test_a_streamed_batch_request_is_never_preempted():
    work = [RunningRequest("b-plain", "batch", 10.0), RunningRequest("b-streamed", "batch", 30.0, preemptible=False)]
    assert batch_requests_to_preempt("mixed", 2, {"batch": 2}, 2, work) == ["b-plain"]
    assert batch_requests_to_preempt("mixed", 2, {"batch": 2}, 1, work[1:]) == []


def test_a_request_on_its_last_allowed_attempt_is_left_alone():
    work = running(("b-old", "batch", 10.0, 1), ("b-again", "batch", 30.0, 4))
    assert batch_requests_to_preempt("mixed", 2, {"batch": 2}, 2, work, max_attempts=4) == ["b-old"]
    assert batch_requests_to_preempt("mixed", 2, {"batch": 2}, 2, work, max_attempts=5) == ["b-again", "b-old"]


def test_preemption_settings():
    from sluice.config import Settings

    assert Settings().preemption is True and Settings(preemption=False).preemption is False
    assert Settings().preemption_check_interval_s == pytest.approx(0.1)



@pytest.mark.parametrize("enabled, pool, lanes, expected", [
    (True, "mixed", ["interactive", "batch"], True),
    (True, "mixed", ["batch", "interactive"], True),
    (False, "mixed", ["interactive", "batch"], False),  # SLUICE_PREEMPTION=false
    (True, "batch", ["interactive", "batch"], False),
    (True, "interactive", ["interactive", "batch"], False),
    (True, "mixed", ["batch"], False),
])
def test_only_a_mixed_worker_on_both_lanes_with_preemption_on_watches(enabled, pool, lanes, expected):
    assert worker_preempts(enabled, pool, lanes) is expected
