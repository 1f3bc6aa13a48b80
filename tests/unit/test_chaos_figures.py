"""The chaos benchmark's recovery figures (bench.chaos.recovery_figures), on made-up client records."""

from bench.chaos import Outcome, Replicas, recovery_figures, victim_recovery


def outcome(index: int, sent: float, accepted: float | None, answered: float | None, *errors: str) -> Outcome:
    return Outcome(index=index, kind="whole", lane="interactive", sent_at=sent, accepted_at=accepted,
                   answered_at=answered, errors=list(errors))


def test_an_outage_recovers_when_a_window_of_requests_succeeds_again():
    outcomes = [outcome(0, 0.0, 0.1, 1.0), outcome(1, 1.0, 1.1, 1.5),  # before the fault: all succeed
                # the fault at 2.0: refused for a while (503s until given up), then accepted and answered late
                outcome(2, 2.0, None, None, "not_accepted_in_time"), outcome(3, 3.0, None, None, "http_500"),
                outcome(4, 4.0, 6.5, 9.0), outcome(5, 5.0, 6.6, 9.5), outcome(6, 6.0, 6.7, 10.0)]
    [figures] = recovery_figures(outcomes, [{"fault": "redis", "at_s": 2.0}], window_s=2.5)
    assert figures["fault"] == "redis"
    assert figures["first_accepted_after_s"] == 4.5  # request 4, accepted at 6.5
    assert figures["first_completed_after_s"] == 7.0  # request 4's answer at 9.0
    assert figures["success_rate_back_after_s"] == 2.0  # requests sent from 4.0 on all succeed
    assert figures["max_latency_around_s"] == 5.0  # request 4: sent 4.0, answered 9.0 (within 2.5 s of the fault)


def test_no_recovery_is_none_not_zero():
    outcomes = [outcome(0, 0.0, 0.1, 1.0), outcome(1, 3.0, None, None, "http_500")]
    [figures] = recovery_figures(outcomes, [{"fault": "worker", "at_s": 2.0}], window_s=5.0)
    assert figures["first_accepted_after_s"] is None
    assert figures["first_completed_after_s"] is None
    assert figures["success_rate_back_after_s"] is None


def test_the_balancer_skips_a_replica_that_is_down_and_avoids_the_one_asked():
    replicas = Replicas(["a", "b"])
    assert [replicas.pick(), replicas.pick(), replicas.pick()] == ["a", "b", "a"]
    replicas.mark_down("a", 60)
    assert {replicas.pick() for _ in range(4)} == {"b"}
    assert Replicas(["a", "b"]).pick(avoid="a") == "b"


def test_victim_recovery_counts_the_killed_workers_requests_that_ran_again():
    from broker.ledger import RequestRecord, RequestStatus

    def record(request_id, attempt, started_at, finished_at, status=RequestStatus.done):
        return RequestRecord(request_id=request_id, status=status, attempt=attempt, started_at=started_at,
                             finished_at=finished_at)

    records = {"a": record("a", 2, 105.0, 108.0),  # started on the victim, ran again elsewhere: a victim
               "b": record("b", 1, 99.0, 101.0),  # finished on the victim before the kill: not one
               "c": record("c", 1, 102.0, 103.0),  # only ever on the survivor
               "d": record("d", 2, 106.0, None, RequestStatus.running)}  # a victim not done yet
    started_by = {"a": [("w2@chaos", 1), ("w1@chaos", 2)], "b": [("w2@chaos", 1)], "c": [("w1@chaos", 1)],
                  "d": [("w2@chaos", 1), ("w1@chaos", 2)]}
    figures = victim_recovery("w2@chaos", 100.0, records, started_by)
    assert figures == {"victim_requests": 2, "victim_requests_done": 1, "victim_requests_restarted_after_s": 6.0,
                       "victim_requests_done_after_s": 8.0}
    assert victim_recovery("w3@chaos", 100.0, records, started_by)["victim_requests_done_after_s"] is None
