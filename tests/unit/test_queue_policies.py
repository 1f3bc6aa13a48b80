"""Queue policies, their factory, and the aging bound that keeps SSJF from starving long requests."""

from __future__ import annotations

import random

import pydantic
import pytest

from broker.queue_policies import (
    QUEUE_POLICIES, FCFSPolicy, OraclePolicy, QueuePolicy, ScoreInput, SSJFPolicy, make_queue_policy,
    predicts_lengths,
)
from core.settings import Settings


def entry(arrival: float, predicted: float | None = None, true: float | None = None) -> ScoreInput:
    return ScoreInput(arrival_time=arrival, predicted_output_tokens=predicted, true_output_tokens=true)


def test_fcfs_is_arrival_order_whatever_the_lengths():
    policy = FCFSPolicy()
    assert policy.score(entry(10.0, predicted=5, true=5)) < policy.score(entry(11.0, predicted=1, true=1))
    assert policy.score(entry(10.0)) == 10.0  # needs no length at all
    assert policy.overtaking_window_s(entry(10.0, predicted=10**6)) == 0.0
    assert not policy.needs_prediction and not policy.needs_true_length


def test_ssjf_serves_predicted_shortest_first_among_simultaneous_arrivals():
    policy = SSJFPolicy(aging_tokens_per_s=10)
    assert policy.score(entry(0.0, predicted=50)) < policy.score(entry(0.0, predicted=500))
    assert policy.score(entry(0.0, predicted=50)) == 5.0
    # The true length is not the proxy's business.
    assert policy.score(entry(0.0, predicted=50, true=9000)) == 5.0
    assert policy.needs_prediction and not policy.needs_true_length


def test_ssjf_needs_a_prediction():
    with pytest.raises(ValueError, match="no prediction"):
        SSJFPolicy().score(entry(0.0, true=10))


def test_oracle_orders_by_the_true_length_and_ignores_the_prediction():
    policy = OraclePolicy(aging_tokens_per_s=10)
    assert policy.score(entry(0.0, predicted=1, true=9)) == 0.9
    assert policy.score(entry(0.0, predicted=1000, true=9)) < policy.score(entry(0.0, predicted=1, true=90))
    with pytest.raises(ValueError, match="states none"):
        policy.score(entry(0.0, predicted=1))
    assert policy.needs_true_length and not policy.needs_prediction


def test_negative_lengths_do_not_jump_ahead_of_earlier_arrivals():
    assert SSJFPolicy().score(entry(5.0, predicted=-100)) == 5.0


def test_factory_builds_each_policy_with_its_parameters():
    assert make_queue_policy("fcfs") == FCFSPolicy()
    assert make_queue_policy("ssjf", aging_tokens_per_s=5, max_predicted_tokens=100) == SSJFPolicy(5, 100)
    assert make_queue_policy("oracle", aging_tokens_per_s=7) == OraclePolicy(7, 4096.0)
    for name, cls in QUEUE_POLICIES.items():
        policy = make_queue_policy(name)
        assert type(policy) is cls and policy.name == name and isinstance(policy, QueuePolicy)
    with pytest.raises(ValueError, match="unknown queue policy 'lifo'"):
        make_queue_policy("lifo")


def test_every_settings_policy_name_has_a_class():
    """The Settings literal and the factory's table must not drift apart."""
    names = Settings.model_fields["queue_policy"].annotation.__args__
    assert set(names) == set(QUEUE_POLICIES)
    for name in names:
        make_queue_policy(name)


def test_ssjf_is_the_default_policy():
    assert Settings().queue_policy == "ssjf"
    assert predicts_lengths(make_queue_policy(Settings().queue_policy), Settings().predict_lengths)


def test_predict_lengths_unset_follows_the_policy_and_true_makes_every_policy_predict():
    for name in QUEUE_POLICIES:
        policy = make_queue_policy(name)
        assert predicts_lengths(policy, None) == policy.needs_prediction
        assert predicts_lengths(policy, True)
    assert not predicts_lengths(FCFSPolicy(), False)
    assert not predicts_lengths(OraclePolicy(), False)


def test_a_policy_that_needs_predictions_cannot_run_without_them():
    with pytest.raises(ValueError, match="predict_lengths cannot be false"):
        predicts_lengths(SSJFPolicy(), False)
    with pytest.raises(pydantic.ValidationError, match="predict_lengths cannot be false"):
        Settings(queue_policy="ssjf", predict_lengths=False)


def test_aging_bound_no_request_is_overtaken_by_later_arrivals_beyond_its_window():
    """Simulate a stream of arrivals: any request served before R arrived within R's window."""
    policy = SSJFPolicy(aging_tokens_per_s=20, max_predicted_tokens=2000)
    rng = random.Random(3)
    arrivals = sorted((rng.uniform(0, 600), rng.lognormvariate(5, 1.2)) for _ in range(3000))
    scored = sorted((policy.score(entry(t, length)), t, length) for t, length in arrivals)
    served_before = {}
    latest_arrival_seen = float("-inf")
    for _score, arrival, length in scored:
        served_before[(arrival, length)] = latest_arrival_seen
        latest_arrival_seen = max(latest_arrival_seen, arrival)
    for (arrival, length), latest in served_before.items():
        assert latest - arrival <= policy.overtaking_window_s(entry(arrival, length)) + 1e-9
    # And the bound is reached: some long request really is overtaken (the test can fail).
    assert any(latest > arrival for (arrival, _l), latest in served_before.items())


def test_prediction_cap_bounds_the_worst_case():
    policy = SSJFPolicy(aging_tokens_per_s=20, max_predicted_tokens=1000)
    assert policy.overtaking_window_s(entry(0.0, 10**9)) == 50.0
    assert policy.score(entry(0.0, 10**9)) == 50.0


def test_ssjf_scores_by_the_prediction_capped_at_max_tokens():
    """No answer is longer than its max_tokens: a long prediction with a small cap is a short job."""
    policy = SSJFPolicy(aging_tokens_per_s=20.0)
    capped = ScoreInput(arrival_time=0.0, predicted_output_tokens=900.0, max_output_tokens=64)
    uncapped = ScoreInput(arrival_time=0.0, predicted_output_tokens=300.0, max_output_tokens=2048)
    assert policy.score(capped) == 64 / 20.0 < policy.score(uncapped) == 300 / 20.0
    assert policy.score(ScoreInput(arrival_time=0.0, predicted_output_tokens=900.0)) == 900 / 20.0
    # The oracle already knows the true length; FCFS ignores lengths.
    assert OraclePolicy().score(ScoreInput(0.0, 900.0, true_output_tokens=10, max_output_tokens=64)) == 10 / 20.0
    assert FCFSPolicy().score(capped) == 0.0
