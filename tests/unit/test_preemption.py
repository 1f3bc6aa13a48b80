"""Mixed-instance preemption without a worker: the decision (workers.preemption), the bookkeeping it reads
(workers.inflight), the watch that runs it, and the admission limit it compares against (workers.admission)."""

from __future__ import annotations

import asyncio
import types

import pytest
from kombu.common import QoS

from core.settings import Settings
from workers.admission import Admission
from workers.inflight import InflightRequests
from workers.preemption import PreemptionWatch, RunningRequest, batch_requests_to_preempt, worker_preempts


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


# --- the bookkeeping a worker keeps for it (workers.inflight) and the watch that runs it -----------------
def hold_started(book: InflightRequests, request_id: str, lane: str, started_at: float, *, limit: int = 2,
                 preempts: bool = True, preemptible: bool = True):
    held, existing = book.hold(request_id, lane, preemptible)
    assert existing is None
    over_limit = book.count(held, 1, started_at, admission_limit=limit, preempts=preempts)
    return held, over_limit


def run_two_batch_requests(book: InflightRequests) -> dict:
    """Two batch requests on the engine loop, admitted: b-old started first, b-new second."""
    tasks = {}
    for request_id, started in (("b-old", 1.0), ("b-new", 2.0)):
        held, _ = hold_started(book, request_id, "batch", started)
        tasks[request_id] = asyncio.get_running_loop().create_task(asyncio.sleep(60))
        book.on_loop(held, tasks[request_id])
        book.admitted(held)
    return tasks


def test_a_request_id_already_held_is_a_spurious_redelivery_that_waits_for_the_first():
    book = InflightRequests()
    first, _ = hold_started(book, "r", "batch", 1.0)
    again, running = book.hold("r", "batch", True)
    assert again is None and running is first and not running.finished.is_set()
    book.release(first)
    assert first.finished.is_set()
    assert book.hold("r", "batch", True)[0] is not None  # free again once released


def test_only_started_requests_count_in_flight():
    book = InflightRequests()
    held, _ = book.hold("r", "interactive", True)
    assert book.counts() == ({"interactive": 0, "batch": 0}, 0)  # the ledger has not started it yet
    book.count(held, 1, 1.0, admission_limit=2, preempts=True)
    assert book.counts() == ({"interactive": 1, "batch": 0}, 0)
    book.release(held)
    assert book.counts() == ({"interactive": 0, "batch": 0}, 0)


@pytest.mark.parametrize("lane, preempts, expected", [
    ("interactive", True, True), ("interactive", False, False), ("batch", True, False)])
def test_only_an_interactive_request_on_a_full_preempting_worker_is_over_the_limit(lane, preempts, expected):
    book = InflightRequests()
    hold_started(book, "b-1", "batch", 1.0)
    hold_started(book, "b-2", "batch", 2.0)
    assert hold_started(book, "new", lane, 3.0, preempts=preempts)[1] is expected


def test_a_yielding_request_keeps_its_slot_but_no_longer_occupies_the_worker():
    async def scenario():
        book = InflightRequests()
        tasks = run_two_batch_requests(book)
        assert book.preempt("b-new", "test") is not None
        assert book.preempt("b-new", "again") is None  # told once only
        # Held still (its message is not requeued yet) ...
        assert book.counts() == ({"interactive": 0, "batch": 2}, 1)
        # ... but the worker has room: an interactive arrival is not over the limit.
        assert hold_started(book, "i", "interactive", 3.0)[1] is False
        candidates, inflight, owed, stuck = book.preemption_view()
        assert [c.request_id for c in candidates] == ["b-old"]
        assert inflight == {"interactive": 1, "batch": 1} and owed == 0
        assert stuck == [tasks["b-new"]]  # its cancellation is repeated until it takes
        for task in tasks.values():
            task.cancel()

    asyncio.run(scenario())


def test_owed_displacements_are_taken_by_one_decision():
    book = InflightRequests()
    hold_started(book, "b-1", "batch", 1.0)
    hold_started(book, "b-2", "batch", 2.0)
    hold_started(book, "i-1", "interactive", 3.0)
    assert book.preemption_view()[2] == 1
    assert book.preemption_view()[2] == 0


def test_a_request_that_ended_generating_is_not_a_candidate():
    async def scenario():
        book = InflightRequests()
        held, _ = hold_started(book, "b", "batch", 1.0)
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        book.on_loop(held, task)
        book.admitted(held)
        book.generation_ended(held)
        await task
        assert book.preemption_view()[0] == [] and book.preempt("b", "too late") is None

    asyncio.run(scenario())


def test_the_watch_makes_the_newest_batch_request_yield_for_an_interactive_request_over_the_limit():
    async def scenario():
        settings = Settings(preemption=True, worker_pool="mixed", admission_limit=2)
        book = InflightRequests()
        admission = Admission(settings, call_on_loop=lambda callback, *args: callback(*args))
        watch = PreemptionWatch(settings, book, admission)
        tasks = run_two_batch_requests(book)
        assert hold_started(book, "i", "interactive", 3.0)[1] is True
        assert await watch.check(look_at_lane=False) == ["b-new"]  # the arrival itself: no lane read
        await asyncio.sleep(0)
        assert tasks["b-new"].cancelled() and not tasks["b-old"].done()
        assert book.counts()[1] == 1
        assert await watch.check(look_at_lane=False) == []  # settled: nothing owed, no longer full
        tasks["b-old"].cancel()

    asyncio.run(scenario())


def test_the_admission_limit_is_clamped_and_applied_to_the_consumer_prefetch():
    applied = []
    consumer = types.SimpleNamespace(qos=QoS(lambda prefetch_count: applied.append(prefetch_count), 0))
    admission = Admission(Settings(admission_limit=4, max_admission_limit=8), call_on_loop=None)
    admission.attach_consumer(consumer)
    assert applied == [4]
    assert admission.set_limit(100) == 8 and admission.set_limit(0) == 1 and applied == [4, 8, 1]


def test_dynamic_batching_resizes_its_gate_on_the_engine_loop_and_none_stays_at_one():
    on_loop = []
    dynamic = Admission(Settings(batching_mode="dynamic", admission_limit=4),
                        call_on_loop=lambda callback, *args: on_loop.append((callback, args)))
    dynamic.set_limit(6)
    assert dynamic.gate.batch_size == 4  # not from this thread ...
    [(callback, args)] = on_loop
    callback(*args)
    assert dynamic.gate.batch_size == 6  # ... but on the loop
    single = Admission(Settings(batching_mode="none", admission_limit=4), call_on_loop=None)
    assert single.limit == 1 and single.set_limit(16) == 1
