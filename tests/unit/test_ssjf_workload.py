"""The SSJF bench's workloads: held-out prompt sets, capped clients, run sizing and offered load."""

import numpy as np
import pytest

from bench.ssjf import offered_load, requests_per_round
from bench.workload import CLIENT_CAPS, LENGTH_MODELS, BenchRequest, validation_requests
from predictor import data


def test_arena_held_out_prompts_are_split_by_the_same_hash_and_never_in_train():
    train, held_out = data.split_arena_prompt_ids()
    assert set(train).isdisjoint(held_out) and len(train) + len(held_out) == 298
    assert all(data.is_validation_prompt(pid) for pid in held_out)
    assert not any(data.is_validation_prompt(pid) for pid in train)
    assert data.split_prompt_ids(train + held_out) == (train, held_out)


@pytest.mark.parametrize("prompts", sorted(LENGTH_MODELS))
def test_bench_replays_only_held_out_prompts_with_the_set_length_model(prompts):
    requests = validation_requests(50, prompts=prompts, length_model=LENGTH_MODELS[prompts])
    split = data.split_arena_prompt_ids() if prompts == "arena" else data.split_prompt_ids()
    assert {r.prompt_id for r in requests} <= set(split[1])
    lengths = data.load_arena_output_tokens() if prompts == "arena" else data.load_output_tokens()
    for r in requests:
        assert r.max_tokens == 2048 - 64 - r.prompt_tokens  # no client cap: the context's room
        assert r.true_output_tokens == min(lengths[r.prompt_id][LENGTH_MODELS[prompts]], r.max_tokens)


def test_a_share_of_capped_clients_send_a_cap_that_bounds_the_answer():
    requests = validation_requests(1000, prompts="arena", length_model="gpt-4-0314", capped_share=0.3, seed=7)
    capped = [r for r in requests if r.max_tokens in CLIENT_CAPS]
    assert 0.25 < len(capped) / len(requests) < 0.35
    assert {r.max_tokens for r in capped} == set(CLIENT_CAPS)
    assert all(r.true_output_tokens <= r.max_tokens for r in requests)
    assert any(r.true_output_tokens == r.max_tokens for r in capped)  # some answers are cut by the cap
    again = validation_requests(1000, prompts="arena", length_model="gpt-4-0314", capped_share=0.3, seed=7)
    assert again == requests  # deterministic
    assert validation_requests(1000, prompts="arena", length_model="gpt-4-0314", capped_share=0.3, seed=8) != requests


def test_a_round_is_sized_from_capacity_so_the_replays_fit_the_time_left():
    # 1000 tokens/s, mean 500 tokens (2 req/s), 16 slots: tail 4 s + 3 s; 4 rounds x 3 replays in 600 s
    # leave 50 - 7 = 43 s of work a replay: 86 requests.
    assert requests_per_round(1000.0, 500.0, 16, 600.0, 4, floor=16) == 86
    assert requests_per_round(1000.0, 500.0, 16, 60.0, 4, floor=16) == 16  # never under the floor
    assert requests_per_round(2000.0, 500.0, 16, 600.0, 4, floor=16) > 2 * 86  # twice the capacity


def test_offered_load_is_the_arrivals_tokens_over_capacity():
    requests = [BenchRequest(str(i), "p", 1, 100) for i in range(11)]
    offsets = np.linspace(0, 10, 11)  # 1 request/s of 100 tokens: 100 tokens/s offered
    assert offered_load(requests, offsets, 80.0) == pytest.approx(1.25)


def test_proxy_tau_is_of_what_ssjf_ranks_by_the_prediction_capped_at_max_tokens(monkeypatch):
    from bench import ssjf
    from predictor import predictor

    class SamePrediction:  # a proxy that tells prompts apart not at all
        def predict(self, prompts):
            return [500.0] * len(prompts)

    monkeypatch.setattr(predictor.LengthPredictor, "load", classmethod(lambda cls, *a, **k: SamePrediction()))
    requests = [BenchRequest("a", "a", 1, 64, max_tokens=64), BenchRequest("b", "b", 1, 128, max_tokens=128),
                BenchRequest("c", "c", 1, 900, max_tokens=1900), BenchRequest("d", "d", 1, 256, max_tokens=256)]
    # Capped at 64, 128, 256 and (uncapped) 500: the caps alone rank the four as their true lengths do.
    assert ssjf.kendall_tau_of_proxy(requests) == pytest.approx(1.0)


def test_a_slow_host_gets_shorter_answers_so_a_round_still_queues_beyond_the_slots():
    from bench.ssjf import QUEUE_ROUND_SLOTS, round_size_and_length_scale

    # A fast host: its rounds hold more than 6 x 16 full-length requests.
    fast = round_size_and_length_scale(4000.0, 500.0, 16, 600.0, 4)
    assert fast[1] == 1.0 and fast[0] >= QUEUE_ROUND_SLOTS * 16  # nothing scaled
    # The 2026-12-07 host: 302 tokens/s, mean 471 tokens, ~400 s left -> 16 full-length requests a round.
    per_round, scale = round_size_and_length_scale(302.0, 471.0, 16, 400.0, 4)
    assert 0.1 < scale < 0.25
    assert per_round >= QUEUE_ROUND_SLOTS * 16 * 0.9  # the tail term is not scaled away entirely
    # An explicit scale is kept (within its bounds).
    assert round_size_and_length_scale(302.0, 471.0, 16, 400.0, 4, requested_scale=1.0) == (16, 1.0)


def test_scaling_lengths_keeps_what_the_client_sends_and_at_least_one_token():
    from bench.ssjf import scale_lengths

    requests = [BenchRequest("a", "p", 3, 400, max_tokens=512), BenchRequest("b", "p", 3, 3, max_tokens=None)]
    assert scale_lengths(requests, 0.1) == [BenchRequest("a", "p", 3, 40, max_tokens=512),
                                            BenchRequest("b", "p", 3, 1, max_tokens=None)]
    assert scale_lengths(requests, 1.0) == requests
