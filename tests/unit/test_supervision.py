"""`sluice run`'s restart decision (sluice/supervision.py): pure, from the crash history and now."""

from sluice.supervision import RestartPolicy, restart_decision

POLICY = RestartPolicy(max_crashes=5, window_s=60.0, backoff_base_s=1.0, backoff_cap_s=4.0)


def test_first_crash_restarts_at_once():
    decision = restart_decision([100.0], 100.0, POLICY)
    assert (decision.action, decision.delay_s) == ("restart", 0.0)


def test_repeated_crashes_back_off_exponentially_up_to_the_cap():
    delays = [restart_decision([100.0 + i for i in range(n)], 100.0 + n - 1, POLICY).delay_s for n in (2, 3, 4)]
    assert delays == [1.0, 2.0, 4.0]
    policy = RestartPolicy(max_crashes=10, window_s=60.0, backoff_base_s=1.0, backoff_cap_s=4.0)
    assert restart_decision([100.0 + i for i in range(8)], 107.0, policy).delay_s == 4.0


def test_delay_counts_from_the_latest_crash():
    decision = restart_decision([100.0, 110.0, 111.0], 112.5, POLICY)  # 3 crashes: 2 s after 111
    assert decision.action == "restart" and decision.delay_s == 0.5


def test_gives_up_after_max_crashes_within_the_window():
    decision = restart_decision([100.0, 101.0, 102.0, 103.0, 104.0], 104.0, POLICY)
    assert decision.action == "give_up"
    assert "5 crashes within 60 s" in decision.reason


def test_crashes_outside_the_window_are_forgotten():
    crashes = [10.0, 11.0, 12.0, 13.0, 100.0]  # four long ago, one now
    decision = restart_decision(crashes, 100.0, POLICY)
    assert (decision.action, decision.delay_s) == ("restart", 0.0)


# --- the supervisor loop, with real (small) processes -------------------------------------------
import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from core.processes import Child  # noqa: E402
from sluice.runner import Supervised, supervise  # noqa: E402

FAST = RestartPolicy(max_crashes=3, window_s=60.0, backoff_base_s=0.1, backoff_cap_s=0.2)


class Flag:
    def __init__(self):
        self.event = threading.Event()

    def __bool__(self):
        return self.event.is_set()


def starter(tmp_path, code: str):
    starts = []

    def start() -> Child:
        starts.append(1)
        return Child("flaky", [sys.executable, "-c", code], log_path=tmp_path / f"flaky-{len(starts)}.log")
    return start, starts


def test_a_child_that_keeps_crashing_is_restarted_then_given_up(tmp_path, caplog):
    start, starts = starter(tmp_path, "import sys; sys.exit(3)")
    caplog.set_level(logging.INFO, logger="sluice.runner")
    status = supervise([Supervised.started("flaky", start)], Flag(), FAST, interval_s=0.05)
    assert status == 1
    assert len(starts) == 3  # the first start and two restarts; the third crash gives up
    assert "flaky (pid" in caplog.text and "restarting it now" in caplog.text
    assert "giving up" in caplog.text


def test_a_crashed_child_is_restarted_and_the_stack_stays_up(tmp_path, caplog):
    # Crashes on its first run only (a marker file tells the second run apart), then runs until stopped.
    marker = tmp_path / "crashed-once"
    code = (f"import pathlib, sys, time\nm = pathlib.Path({str(marker)!r})\n"
            "if not m.exists():\n    m.touch(); sys.exit(1)\ntime.sleep(60)")
    start, starts = starter(tmp_path, code)
    stop = Flag()
    caplog.set_level(logging.INFO, logger="sluice.runner")
    entry = Supervised.started("flaky", start)
    result = {}
    thread = threading.Thread(target=lambda: result.update(status=supervise([entry], stop, FAST, interval_s=0.05)))
    thread.start()
    try:
        deadline = 200
        while not (len(starts) == 2 and entry.child.alive()) and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        assert len(starts) == 2
        assert entry.child.wait(0.5) is None  # the restarted one runs and stays up
    finally:
        stop.event.set()
        thread.join(10)
        entry.child.kill()
    assert result["status"] == 0
    assert "restarted flaky" in caplog.text
