"""Fair share inside a lane: one tenant's backlog does not starve another's.

Start-time fair queueing (Goyal et al.) kept in the lane's own sorted set, composed on top of the queue
policy's score.  No second scheduler: the request ledger's enqueue script (:mod:`broker.ledger`) reads
the clock state, runs the decision below and writes its result, atomically, so API replicas agree.

Per lane and tenant the clock keeps the tenant's virtual *finish* tag ``F`` and its current round.  A
request of tenant ``t`` (weight ``w``; arrival ``a``; the queue policy's score ``b``; cost ``c`` = its
capped expected output tokens / ``tokens_per_s``, in the same seconds as the policy's score) gets::

    V      = the lowest score in the lane (the next request workers take), or none when the lane is empty
    start  S = max(V, F_t)             (an empty lane: S = a, nobody is backlogged, clocks restart)
    F_t'   = S + c / w
    round  R = floor(S / Q) * Q        (Q = round_s; Q = 0: every request is a round of its own)
    a0     = arrival of the tenant's first request in round R
    score  = b + max(0, min(R - a0, S - a))

So fair share only ever *delays* a request relative to its policy score (``score >= b``): it never
overtakes a request it would not overtake under the policy, and a request without a tenant keeps ``b``
exactly.  Within one round a tenant's requests share one delay, so the policy's own order (SSJF's
predicted shortest first, FCFS's arrival) holds among them; across rounds and tenants the start tags
decide.  A tenant not backlogged (``F_t <= V``) starts at the lane's virtual time, so it is not punished
for capacity it used while the lane was idle.

**Bound.**  Two facts, both from the formula: (1) ``score <= max(b, S + (b - a))``; (2) every request
``x`` has ``score_x >= R_x + (b_x - a_x) > S_x - Q + (b_x - a_x)`` (as ``a0 <= a_x`` and ``R <= S``).  So
a request ``x`` of another tenant ``A`` is served before request ``r`` only if
``S_x < score_r + Q - (b_x - a_x) <= max(b_r, S_r + (b_r - a_r)) + Q`` (every policy here has ``b >= a``).
While the lane is not empty ``A``'s start tags grow by at least ``c_x / w_A`` per request, so the work of
``A`` (cost-seconds) served after ``r`` arrives and before ``r`` is at most::

    w_A * (max(b_r, S_r + (b_r - a_r)) + Q - S_A0) + max_x c_x

with ``S_A0`` the start tag of A's oldest request queued when ``r`` arrived (A backlogged).  The first
term of the max is aging: ``r`` never waits longer than the policy alone makes it wait for requests
already due; the second is fair share.  Example: ``B`` arrives with ``n`` requests into a lane ``A``
floods, all costs ``c`` and weights 1: ``S_r = V + (n - 1) c`` for B's n-th and ``S_A0 >= V - c``, so at
most ``max(b_r - V + c, (n + 1) c) / c + Q / c + 1`` of A's requests (about ``n + 2 + Q / c``) go before
B's n-th, plus the requests already in service; FIFO or plain SSJF would put all of A's flood first.
``tests/integration/test_fair_share.py`` asserts exactly this on real Redis, Celery and vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from broker import deadlines
from broker.messages import GenerationRequest


@dataclass(frozen=True)
class FairShareConfig:
    """How the API turns a request with a tenant into a fair-share ticket (settings ``fair_share``,
    ``fair_share_round_tokens``, ``ssjf_aging_tokens_per_s``, ``ssjf_max_predicted_tokens``)."""

    tokens_per_s: float = 20.0  # the queue policy's aging rate: tokens -> seconds, the unit of scores
    max_cost_tokens: float = 4096.0  # a request's cost is its expected output tokens, capped here
    round_tokens: float = 2048.0  # Q in tokens of a weight-1 tenant's work; 0: no rounds

    @classmethod
    def from_settings(cls, settings) -> FairShareConfig | None:
        """The API's configuration (``core.settings.Settings``); None when fair share is off."""
        if not settings.fair_share:
            return None
        return cls(tokens_per_s=settings.ssjf_aging_tokens_per_s, max_cost_tokens=settings.ssjf_max_predicted_tokens,
                   round_tokens=settings.fair_share_round_tokens)

    def ticket(self, request: GenerationRequest) -> FairTicket | None:
        """The request's fair-share ticket; None for a request without a tenant (scored as before)."""
        if request.tenant is None:
            return None
        cost_tokens = min(deadlines.expected_tokens(request), self.max_cost_tokens)
        return FairTicket(tenant=request.tenant, weight=float(request.tenant_weight), arrival=request.enqueued_at,
                          cost_s=max(cost_tokens, 0.0) / self.tokens_per_s,
                          round_s=self.round_tokens / self.tokens_per_s)


@dataclass(frozen=True)
class FairTicket:
    """What the enqueue script needs of a request to place it fairly (its policy score is the message's)."""

    tenant: str
    weight: float
    arrival: float
    cost_s: float
    round_s: float

    def __post_init__(self):
        for name in ("weight", "arrival", "cost_s", "round_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"fair-share ticket of {self.tenant!r}: {name} is {getattr(self, name)}")
        if self.weight <= 0 or self.cost_s < 0 or self.round_s < 0:
            raise ValueError(f"fair-share ticket of {self.tenant!r}: weight must be > 0, cost and round >= 0")


@dataclass(frozen=True)
class FairClock:
    """What the enqueue script observes: the lane's lowest score and the tenant's clock (None: never set)."""

    lane_head: float | None = None
    finish: float | None = None
    round_start: float | None = None
    round_arrival: float | None = None


@dataclass(frozen=True)
class FairDecision:
    score: float
    start: float
    finish: float
    round_start: float
    round_arrival: float


def decide(clock: FairClock, ticket: FairTicket, base_score: float) -> FairDecision:
    """The request's lane score and the tenant's new clock (the module docstring's formula).
    ``broker.ledger``'s enqueue script mirrors this line by line."""
    if clock.lane_head is None:
        start = ticket.arrival
    elif clock.finish is None:
        start = clock.lane_head
    else:
        start = max(clock.lane_head, clock.finish)
    finish = start + ticket.cost_s / ticket.weight
    if ticket.round_s > 0:
        round_start = math.floor(start / ticket.round_s) * ticket.round_s
    else:
        round_start = start
    if ticket.round_s > 0 and clock.round_start == round_start and clock.round_arrival is not None:
        round_arrival = clock.round_arrival
    else:
        round_arrival = ticket.arrival
    delay = max(0.0, min(round_start - round_arrival, start - ticket.arrival))
    return FairDecision(score=base_score + delay, start=start, finish=finish, round_start=round_start,
                        round_arrival=round_arrival)
