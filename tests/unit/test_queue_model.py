"""The benchmark's noise-free queue model (bench/queue_model.py): pure, exact small cases."""

import numpy as np
import pytest

from bench.queue_model import WorkerModel, completion_times, modelled_mean_jct, shortest_first_ceiling


def test_one_at_a_time_serves_lowest_score_first():
    worker = WorkerModel("none", admission_limit=8, step_s=1.0)
    jct = completion_times(worker, np.array([0.0, 0.0]), np.array([2, 1]), scores=np.array([5.0, 1.0]))
    assert list(jct) == [3.0, 1.0]


def test_continuous_refills_a_slot_at_the_next_step():
    worker = WorkerModel("continuous", admission_limit=2, step_s=1.0)
    # Two slots: lengths 1 and 4 start at once; the third request joins when the short one leaves.
    jct = completion_times(worker, np.zeros(3), np.array([1, 4, 2]), scores=np.array([0.0, 1.0, 2.0]))
    assert list(jct) == [1.0, 4.0, 3.0]


def test_dynamic_batch_admits_nobody_until_it_finishes():
    worker = WorkerModel("dynamic", admission_limit=2, step_s=1.0)
    jct = completion_times(worker, np.zeros(3), np.array([1, 4, 2]), scores=np.array([0.0, 1.0, 2.0]))
    assert list(jct) == [1.0, 4.0, 6.0]  # the third waits for the whole first batch (4 steps), then runs 2


def test_idle_worker_waits_for_the_next_arrival():
    worker = WorkerModel("continuous", admission_limit=4, step_s=1.0)
    jct = completion_times(worker, np.array([0.0, 10.0]), np.array([1, 1]), scores=np.array([0.0, 10.0]))
    assert list(jct) == [1.0, 1.0]


def test_oracle_beats_fcfs_and_a_perfect_proxy_matches_oracle():
    rng = np.random.default_rng(0)
    true = rng.integers(10, 500, size=200)
    arrivals = np.sort(rng.uniform(0, 20, size=200))
    worker = WorkerModel("continuous", admission_limit=4, step_s=0.01)
    jct = modelled_mean_jct(worker, arrivals, predicted=true, true=true, aging_tokens_per_s=5.0)
    assert jct["oracle"] < jct["fcfs"]
    assert jct["ssjf"] == pytest.approx(jct["oracle"])
    backwards = modelled_mean_jct(worker, arrivals, predicted=600 - true, true=true, aging_tokens_per_s=5.0)
    assert backwards["ssjf"] > backwards["fcfs"]  # a proxy that ranks backwards does harm


def test_shortest_first_ceiling():
    assert shortest_first_ceiling([7, 7, 7]) == pytest.approx(1.0)  # equal lengths: order cannot matter
    # [1, 3]: shortest first completes at 1 and 4 (mean 2.5); random order's expected mean is 3.
    assert shortest_first_ceiling([3, 1]) == pytest.approx(2.5 / 3)


def test_bench_report_normalizes_by_throughput_and_prints_every_view():
    from bench.ssjf import POLICIES, format_table, normalize_by_throughput, reductions, summarize
    from bench.ssjf_stats import cut_intervals

    def replay(jct: float, tokens_per_s: float) -> list[dict]:
        return [{"jct_s": jct, "ttft_s": 0.1, "queue_wait_s": 0.0, "output_tokens": tokens_per_s * 10, "sent_at": 0.0,
                 "finished_at": 10.0, "predicted_output_tokens": 5.0, "score": 0.0, "prompt_id": "p"}]

    # FCFS ran on a slow machine, SSJF on a fast one: normalized, their JCTs are equal.
    mode = {"fcfs": summarize([replay(20.0, 50.0)]), "ssjf": summarize([replay(10.0, 100.0)]),
            "oracle": summarize([replay(10.0, 75.0)])}
    normalize_by_throughput(mode)
    assert mode["fcfs"]["throughput_normalized_mean_jct_s"] == pytest.approx(mode["ssjf"]["throughput_normalized_mean_jct_s"])
    mode.update(reductions({p: mode[p]["mean_jct_s"] for p in POLICIES}), capacity_rps=1.0, arrival_rate_rps=1.3,
                trace_time_scale=1.0, throughput_spread=1.0, policy_orders=[list(POLICIES)],
                throughput_normalized=reductions({p: mode[p]["throughput_normalized_mean_jct_s"] for p in POLICIES}),
                model={"step_s": 0.01, "mean_jct_s": {"fcfs": 3.0, "ssjf": 2.0, "oracle": 1.0},
                       **reductions({"fcfs": 3.0, "ssjf": 2.0, "oracle": 1.0})})
    assert mode["ssjf_mean_jct_reduction_vs_fcfs"] == pytest.approx(0.5)
    mode.update(rounds=1, requests_per_round=1, offered_load=1.31,
                ci95=cut_intervals({"fcfs": [20.0, 22.0], "ssjf": [10.0, 12.0], "oracle": [10.0, 10.0]}))
    config = {"prompts": "arena", "length_model": "gpt-4-0314", "capped_share": 0.5}
    table = format_table({"config": config, "modes": {"continuous": mode}, "proxy_kendall_tau": 0.5,
                          "shortest_first_ceiling": 0.7})
    assert "continuous, arena prompts (gpt-4-0314 lengths, capped share 0.5)" in table
    assert "offered load 1.31" in table
    assert "paired by round, 95% CI over 2 rounds: SSJF cut 47.7% [" in table
    assert "queue model (step 10.0 ms): SSJF 33.3% below FCFS, oracle 66.7%; SSJF gets 50%" in table
    assert "shortest-first would cut mean JCT on these lengths by 30%" in table
