"""The SSJF bench's intervals on synthetic rounds with a known answer."""

import numpy as np
import pytest

from bench.ssjf_stats import cut_intervals, fieller_ratio_interval, t_interval


def _rounds(rng, n, ssjf_factor, oracle_factor, noise=0.05, drift=0.3):
    # Each round has its own machine speed (drift), shared by its three paired replays.
    speed = 1 + drift * rng.standard_normal(n)
    fcfs = 20 * speed * (1 + noise * rng.standard_normal(n))
    return {"fcfs": list(fcfs),
            "ssjf": list(20 * ssjf_factor * speed * (1 + noise * rng.standard_normal(n))),
            "oracle": list(20 * oracle_factor * speed * (1 + noise * rng.standard_normal(n)))}


def test_t_interval_matches_a_hand_computed_case():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert high - mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    assert t_interval([1.0]) is None


def test_identical_policies_give_cut_intervals_that_contain_zero():
    rng = np.random.default_rng(1)
    misses = 0
    for _ in range(200):
        rounds = _rounds(rng, 6, 1.0, 1.0)
        result = cut_intervals(rounds)
        low, high = result["ssjf_cut_ci"]
        misses += not (low <= 0 <= high)
    assert misses <= 20  # 95% coverage: about 10 misses in 200


def test_a_known_cut_is_recovered_despite_drift_between_rounds():
    rng = np.random.default_rng(2)
    result = cut_intervals(_rounds(rng, 6, 0.7, 0.6, noise=0.03))
    low, high = result["ssjf_cut_ci"]
    assert low <= 0.3 <= high and low > 0.2 and high < 0.4
    low, high = result["oracle_cut_ci"]
    assert low <= 0.4 <= high and low > 0.3
    low, high = result["ssjf_share_of_oracle_cut_ci"]
    assert low <= 0.75 <= high and low > 0.5 and high < 1.0


def test_share_interval_covers_the_true_share_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(300):
        cut = cut_intervals(_rounds(rng, 5, 0.8, 0.6, noise=0.05))["ssjf_share_of_oracle_cut_ci"]
        covered += cut is not None and cut[0] <= 0.5 <= cut[1]
    assert 0.88 <= covered / 300 <= 0.99


def test_a_share_with_no_clear_oracle_cut_is_unbounded():
    ratio, low, high = fieller_ratio_interval([0.1, 0.0, -0.1, 0.05], [0.1, -0.1, 0.05, -0.02])
    assert low is None and high is None
    assert cut_intervals({"fcfs": [10.0], "ssjf": [8.0], "oracle": [6.0]})["ssjf_cut_ci"] is None
