"""`sluice bench scale`'s pure pieces: the pressure episode's milestones and the load's phases."""

from bench.scale import episode, phases


def _sample(t, workers, queued):
    return {"t": t, "workers": {f"w{i}": {} for i in range(workers)}, "queued": queued}


def test_episode_finds_the_queue_peak_the_scale_out_the_added_worker_recovery_and_the_scale_in():
    started = 1000.0
    timeline = [_sample(1000 + t, w, q) for t, w, q in
                [(0, 1, 0), (30, 1, 5), (60, 1, 40), (90, 1, 80), (120, 2, 60), (150, 2, 0), (300, 2, 0), (330, 1, 0)]]
    actions = [
        {"pool": "mixed", "from": 0, "to": 1, "at": 990.0, "reason": "first"},
        {"pool": "mixed", "from": 1, "to": 2, "at": 1045.0, "reason": "interactive queue waited 2.6 s"},
        {"pool": "mixed", "from": 2, "to": 1, "at": 1310.0, "reason": "requirement stayed <= 1"},
    ]
    e = episode(timeline, actions, started)
    assert e["max_queued"] == 80 and e["max_queued_at_s"] == 90
    assert e["scale_out_at_s"] == 45 and "queue" in e["scale_out_reason"]  # not the initial 0 -> 1
    assert e["added_worker_ready_at_s"] == 120
    assert e["queue_recovered_at_s"] == 150 and e["workers_when_queue_recovered"] == 2
    assert e["scale_in_at_s"] == 310


def test_episode_without_a_scale_out_says_so():
    e = episode([_sample(1000, 1, 3), _sample(1010, 1, 0)], [], 1000.0)
    assert e["scale_out_at_s"] is None and e["added_worker_ready_at_s"] is None and e["scale_in_at_s"] is None
    assert e["max_queued"] == 3 and e["queue_recovered_at_s"] == 10


def test_phases_trickle_ramp_peak_and_cool_down():
    steps = phases(0.5, 6.0, ramp_s=40, high_s=60, cool_s=90)
    assert steps[0] == (10, 0.5) and steps[-2] == (60, 6.0) and steps[-1] == (90, 0.25)
    assert [rate for _, rate in steps[1:4]] == sorted(rate for _, rate in steps[1:4])
