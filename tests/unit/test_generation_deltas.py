"""The worker's delta coalescing (workers.generation.DeltaCoalescer): the first token at once, later ones gathered."""

from workers.generation import DeltaCoalescer


def test_first_token_goes_out_at_once_then_deltas_are_gathered_per_interval():
    deltas = DeltaCoalescer(0.05)
    assert deltas.add("a", 1, now=10.0) == {"text": "a", "tokens": 1, "offset": 0}
    assert deltas.add("b", 1, now=10.01) is None
    assert deltas.add("c", 2, now=10.04) is None
    assert deltas.add("d", 1, now=10.05) == {"text": "bcd", "tokens": 4, "offset": 1}
    assert deltas.add("e", 1, now=10.06) is None
    assert deltas.take(now=10.07) == {"text": "e", "tokens": 1, "offset": 5}  # what is left at the end
    assert deltas.take(now=10.08) is None


def test_interval_zero_publishes_every_delta():
    deltas = DeltaCoalescer(0.0)
    assert [deltas.add(t, 1, now=1.0) for t in "xyz"] == [{"text": t, "tokens": 1, "offset": i}
                                                          for i, t in enumerate("xyz")]
