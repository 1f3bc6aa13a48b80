"""How the predictor cuts a batch of prompts into forward passes (predictor.predictor.pack_by_length)."""

import random

from predictor.predictor import pack_by_length


def test_chunks_cover_every_prompt_once_in_length_order_within_the_padding_bound():
    rng = random.Random(0)
    lengths = [rng.choice([5, 12, 24, 30, 60, 128]) + rng.randrange(4) for _ in range(97)]
    chunks = pack_by_length(lengths, max_size=16, max_padding=0.2)
    flat = [i for chunk in chunks for i in chunk]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for chunk in chunks:
        assert 1 <= len(chunk) <= 16
        real = sum(lengths[i] for i in chunk)
        assert len(chunk) * max(lengths[i] for i in chunk) <= 1.2 * real


def test_similar_lengths_share_a_pass_and_an_outlier_gets_its_own():
    assert pack_by_length([10, 11, 10, 128, 12], max_size=16, max_padding=0.2) == [[0, 2, 1, 4], [3]]
    assert pack_by_length([7] * 40, max_size=16) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert pack_by_length([]) == []
