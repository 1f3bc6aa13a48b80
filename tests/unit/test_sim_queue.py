"""scaler.sim.queue.RankedQueue against the plain sorted list it replaces (random operations)."""

import numpy as np
import pytest

from scaler.sim.queue import RankedQueue


@pytest.mark.parametrize("seed", range(5))
def test_ranked_queue_matches_a_sorted_list(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    rank = rng.permutation(n)  # any total order, as EDF ranks are
    queue, model = RankedQueue(rank, capacity=16), []
    fresh = list(rng.permutation(n))
    for _ in range(3000):
        op = rng.integers(0, 3)
        if op == 0 and fresh:  # arrivals: either later than everything queued or merged in
            ids = np.array([fresh.pop() for _ in range(min(len(fresh), int(rng.integers(1, 30))))])
            queue.add(ids)
            model.extend(ids.tolist())
        elif op == 1:  # take the head, put part of it back (refused or preempted requests)
            k = int(rng.integers(0, 40))
            taken = queue.take(k)
            model.sort(key=lambda i: rank[i])
            assert taken.tolist() == model[:k]
            del model[:k]
            back = taken[rng.random(taken.size) < 0.4]
            queue.add_front(back)
            model.extend(back.tolist())
        else:
            model.sort(key=lambda i: rank[i])
            assert len(queue) == len(model)
            assert queue.items().tolist() == model
            if model:
                assert queue.first() == model[0]
    model.sort(key=lambda i: rank[i])
    assert queue.take(len(model) + 5).tolist() == model
    assert len(queue) == 0


def test_take_never_reads_past_the_tail():
    rank = np.arange(100)
    queue = RankedQueue(rank)
    queue.add(np.arange(10, 20))
    queue.add_front(np.array([3, 5]))
    assert queue.take(50).tolist() == [3, 5, *range(10, 20)]
    assert len(queue) == 0
