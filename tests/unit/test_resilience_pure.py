"""Pure parts of issue 13's resilience work: heartbeat states, the Redis clients' retry budget."""

from broker.heartbeat import READY, STARTING, WorkerHeartbeat, _ready_only
from core.redis_clients import BACKOFF_BASE_S, BACKOFF_CAP_S, retry_attempts, retry_options


def test_a_heartbeat_without_a_state_is_ready():
    # Workers of heartbeat version 2 beat only once ready, and wrote no state.
    beat = WorkerHeartbeat.from_redis({b"worker_id": b"w", b"version": b"2", b"updated_at": b"1.0"})
    assert (beat.state, beat.ready_s) == (READY, None)


def test_state_and_time_to_ready_round_trip():
    starting = WorkerHeartbeat(worker_id="w", state=STARTING)
    assert WorkerHeartbeat.from_redis(starting.to_redis()).state == STARTING
    assert WorkerHeartbeat.from_redis(starting.to_redis()).ready_s is None
    ready = WorkerHeartbeat(worker_id="w", state=READY, ready_s=41.25)
    assert WorkerHeartbeat.from_redis(ready.to_redis()).ready_s == 41.25


def test_fleet_readers_see_ready_workers_only_unless_asked():
    beats = {"a": WorkerHeartbeat(worker_id="a", state=STARTING), "b": WorkerHeartbeat(worker_id="b")}
    assert list(_ready_only(beats, starting=False)) == ["b"]
    assert list(_ready_only(beats, starting=True)) == ["a", "b"]


def test_retry_budget_covers_the_ride_through_window():
    assert retry_attempts(0) == 0
    for window in (0.5, 5.0, 30.0):
        attempts = retry_attempts(window)
        waits = [min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** i) for i in range(attempts)]
        assert sum(waits) >= window  # without jitter; equal jitter keeps at least half of each wait
        assert sum(waits[:-1]) < window  # and no retry more than needed


def test_clients_retry_connection_errors_and_check_health():
    options = retry_options(30.0)
    assert options["health_check_interval"] > 0
    assert {error.__name__ for error in options["retry_on_error"]} == {"ConnectionError", "TimeoutError"}
    assert options["retry"].get_retries() == retry_attempts(30.0)
