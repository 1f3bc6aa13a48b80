"""Fair share inside a lane (broker/fair_share.py): the pure decision, and its starvation bound on a simulated
lane (the enqueue script that mirrors it on real Redis: tests/integration/test_fair_share.py)."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

import pytest

from broker.fair_share import FairClock, FairShareConfig, FairTicket, decide
from broker.messages import GenerationRequest, SamplingOptions
from broker.queue_policies import FCFSPolicy, ScoreInput, SSJFPolicy
from core.settings import Settings

RATE = 20.0  # tokens per second: the aging rate, the unit of scores
T0 = 1_800_000_000.0


@dataclass(order=True)
class Queued:
    score: float
    name: str
    tenant: str | None = field(compare=False)
    base: float = field(compare=False)
    start: float | None = field(compare=False, default=None)
    cost_s: float = field(compare=False, default=0.0)


class Lane:
    """A sorted set and the fair-share clocks, as the enqueue script keeps them (pure, for the bound)."""

    def __init__(self, round_s: float, fair: bool = True, policy=None):
        self.policy = policy or SSJFPolicy(aging_tokens_per_s=RATE)
        self.round_s = round_s
        self.fair = fair
        self.queued: list[Queued] = []
        self.clocks: dict[str, FairClock] = {}

    def enqueue(self, name: str, tenant: str | None, arrival: float, tokens: float, weight: float = 1.0) -> Queued:
        base = self.policy.score(ScoreInput(arrival, predicted_output_tokens=tokens))
        if tenant is None or not self.fair:
            item = Queued(base, name, tenant, base)
        else:
            ticket = FairTicket(tenant, weight, arrival, tokens / RATE, self.round_s)
            old = self.clocks.get(tenant, FairClock())
            clock = FairClock(self.queued[0].score if self.queued else None, old.finish, old.round_start,
                              old.round_arrival)
            decision = decide(clock, ticket, base)
            self.clocks[tenant] = FairClock(None, decision.finish, decision.round_start, decision.round_arrival)
            item = Queued(decision.score, name, tenant, base, decision.start, ticket.cost_s)
        bisect.insort(self.queued, item)
        return item

    def pop(self) -> Queued:
        return self.queued.pop(0)


def make_request(tenant: str | None, predicted: float | None = 64.0, max_tokens: int = 100,
                 weight: float = 1.0) -> GenerationRequest:
    return GenerationRequest(request_id="r", model="m", kind="completion", prompt_token_ids=[1],
                             sampling=SamplingOptions(max_tokens=max_tokens), enqueued_at=T0, score=T0,
                             predicted_output_tokens=predicted, tenant=tenant, tenant_weight=weight)


def test_a_request_without_a_tenant_gets_no_ticket_and_keeps_its_policy_score():
    config = FairShareConfig(tokens_per_s=RATE)
    assert config.ticket(make_request(None)) is None
    lane = Lane(round_s=0)
    assert lane.enqueue("x", None, T0, 64).score == T0 + 64 / RATE


def test_the_ticket_costs_the_capped_expected_length_in_score_seconds():
    config = FairShareConfig(tokens_per_s=RATE, max_cost_tokens=50, round_tokens=100)
    ticket = config.ticket(make_request("acme", predicted=80, max_tokens=70, weight=3))
    assert (ticket.tenant, ticket.weight, ticket.arrival) == ("acme", 3.0, T0)
    assert ticket.cost_s == 50 / RATE and ticket.round_s == 100 / RATE
    assert config.ticket(make_request("acme", predicted=None, max_tokens=30)).cost_s == 30 / RATE


@pytest.mark.parametrize("bad", [{"weight": 0.0}, {"cost_s": -1.0}, {"round_s": math.nan}])
def test_a_ticket_that_the_script_cannot_use_is_refused(bad):
    with pytest.raises(ValueError):
        FairTicket(**{"tenant": "t", "weight": 1.0, "arrival": T0, "cost_s": 1.0, "round_s": 0.0, **bad})


def test_a_tenant_alone_in_an_empty_lane_is_scored_as_the_policy_scores_it():
    decision = decide(FairClock(), FairTicket("a", 1.0, T0, 3.2, 100.0), base_score=T0 + 3.2)
    assert decision.score == T0 + 3.2 and decision.start == T0 and decision.finish == T0 + 3.2
    # An idle lane restarts the clock: capacity used while nobody else wanted it is not held against it.
    later = decide(FairClock(None, finish=T0 + 10_000), FairTicket("a", 1.0, T0 + 5, 3.2, 0.0), T0 + 8.2)
    assert later.score == T0 + 8.2 and later.start == T0 + 5


def test_fair_share_never_serves_a_request_earlier_than_its_policy_score():
    rng = random.Random(7)
    for _ in range(2000):
        head = rng.choice([None, T0 + rng.uniform(-100, 1000)])
        clock = FairClock(head, rng.choice([None, T0 + rng.uniform(-100, 1000)]),
                          rng.choice([None, T0 + rng.uniform(-100, 1000)]), rng.choice([None, T0 + rng.uniform(-50, 50)]))
        ticket = FairTicket("a", rng.uniform(0.1, 5), T0 + rng.uniform(0, 50), rng.uniform(0, 200), rng.choice([0, 51.2]))
        base = ticket.arrival + rng.uniform(0, 200)
        decision = decide(clock, ticket, base)
        assert decision.score >= base
        assert decision.finish >= decision.start >= (clock.lane_head if head is not None else ticket.arrival)


def test_a_flood_does_not_starve_a_later_tenant_and_the_bound_holds():
    """A enqueues 5,000 at once, B 20 a little later: B's n-th request follows at most
    max(b - S_A0, n c + c) / c + Q/c + 1 of A's (the bound for equal costs and weights); with fair share off
    B waits for all 5,000."""
    cost_tokens, round_s = 64.0, 512 / RATE
    c = cost_tokens / RATE
    for fair in (True, False):
        lane = Lane(round_s=round_s, fair=fair)
        for i in range(5000):
            lane.enqueue(f"a{i}", "A", T0 + i * 1e-4, cost_tokens)
        head = lane.queued[0].score
        t_b = T0 + 2.0
        for j in range(20):
            lane.enqueue(f"b{j}", "B", t_b + j * 1e-4, cost_tokens)
        order = [lane.pop() for _ in range(len(lane.queued))]
        a_before_last_b = max(index for index, item in enumerate(order) if item.tenant == "B") - 19
        if fair:
            # w_A (max(b_r, S_r + c) + Q - S_A0) / c + 1 with S_r = head + 19 c and S_A0 >= head - c:
            bound = (max(t_b + c, head + 20 * c) + round_s - (head - c)) / c + 1
            assert a_before_last_b <= bound
            assert bound <= 20 + 2 + round_s / c  # B arrived before A's head: fairness, not aging, binds
        else:
            assert a_before_last_b == 5000


def test_weights_share_a_backlogged_lane_in_proportion():
    lane = Lane(round_s=0)
    for i in range(300):
        lane.enqueue(f"h{i}", "heavy", T0, 64, weight=2.0)
        lane.enqueue(f"l{i}", "light", T0, 64, weight=1.0)
    served = [lane.pop().tenant for _ in range(150)]
    assert abs(served.count("heavy") - 100) <= 2


def test_within_a_round_a_tenant_keeps_ssjf_order_and_without_rounds_its_arrival_order():
    lengths = [400, 20, 300, 10, 200]
    for round_s, expected in ((4096 / RATE, sorted(lengths)), (0.0, lengths)):
        lane = Lane(round_s=round_s)
        lane.enqueue("other", "B", T0 - 1, 64)  # a lane that is not empty: A is placed by the clock
        for index, length in enumerate(lengths):
            lane.enqueue(f"{length}", "A", T0 + index * 0.01, length)
        served = [int(item.name) for item in (lane.pop() for _ in range(len(lane.queued))) if item.tenant == "A"]
        assert served == expected


def test_the_bound_holds_for_every_request_under_random_arrivals_and_service():
    """For each request r of any tenant: the work of another tenant X (backlogged when r arrived) served after
    r arrived and before r is at most w_X (max(b_r, S_r + b_r - a_r) + Q - S_X0) + the largest cost, where
    S_X0 is the start tag of X's oldest queued request when r arrived."""
    rng = random.Random(11)
    round_s = 256 / RATE
    weights = {"A": 1.0, "B": 2.0, "C": 0.5}
    lane = Lane(round_s=round_s)
    now, checks = T0, 0
    pending: dict[str, dict] = {}
    max_cost = 512 / RATE
    for step in range(6000):
        now += rng.expovariate(4.0)
        if rng.random() < 0.55 or not lane.queued:
            tenant = rng.choice(["A", "A", "A", "B", "C"])
            item = lane.enqueue(f"r{step}", tenant, now, rng.uniform(1, 512), weights[tenant])
            oldest = {}
            for queued in lane.queued:
                if queued.tenant != tenant and queued.tenant not in oldest:
                    oldest[queued.tenant] = min(x.start for x in lane.queued if x.tenant == queued.tenant)
            pending[item.name] = {"item": item, "arrival": now, "oldest": oldest, "work": {}}
        else:
            served = lane.pop()
            record = pending.pop(served.name)
            item, arrival = record["item"], record["arrival"]
            for tenant, work in record["work"].items():
                limit = weights[tenant] * (max(item.base, item.start + item.base - arrival) + round_s
                                           - record["oldest"][tenant]) + max_cost
                assert work <= limit + 1e-6
                checks += 1
            for other in pending.values():
                # Only tenants backlogged when r arrived: their later requests start after their clock.
                if served.tenant in other["oldest"]:
                    other["work"][served.tenant] = other["work"].get(served.tenant, 0.0) + served.cost_s
    assert checks > 500


def test_the_api_configuration_comes_from_settings_and_is_off_when_fair_share_is():
    config = FairShareConfig.from_settings(Settings(ssjf_aging_tokens_per_s=10, ssjf_max_predicted_tokens=500,
                                                    fair_share_round_tokens=100))
    assert config == FairShareConfig(tokens_per_s=10, max_cost_tokens=500, round_tokens=100)
    assert FairShareConfig.from_settings(Settings()).round_tokens == 2048
    assert FairShareConfig.from_settings(Settings(fair_share=False)) is None


def test_under_fcfs_a_flood_does_not_starve_a_later_tenant_and_each_keeps_arrival_order():
    lane = Lane(round_s=512 / RATE, policy=FCFSPolicy())
    for i in range(1000):
        lane.enqueue(f"a{i:04d}", "A", T0 + i * 1e-3, 64)
    for j in range(10):
        lane.enqueue(f"b{j:04d}", "B", T0 + 5 + j * 1e-3, 64)
    order = [lane.pop() for _ in range(len(lane.queued))]
    last_b = max(index for index, item in enumerate(order) if item.tenant == "B")
    assert last_b - 9 <= 10 + 2 + 512 / 64
    for tenant in ("A", "B"):
        names = [item.name for item in order if item.tenant == tenant]
        assert names == sorted(names)
