"""Queue policies: the score a request gets in its lane (lowest is served first).

A policy is an object with a ``score(request)``, the way vLLM's ``request_queue.py`` has one class per
scheduling policy; ``make_queue_policy`` is the one place a policy's name is read.  Scores are in
seconds: ``arrival_time + length / aging_rate``.

* ``FCFSPolicy``   (``fcfs``)   — the length is ignored: score = arrival time.
* ``SSJFPolicy``   (``ssjf``)   — the proxy model's predicted output tokens, capped at the request's
  ``max_tokens`` (``ScoreInput.max_output_tokens``): no answer is longer.
* ``OraclePolicy`` (``oracle``) — the true output length the client states (benchmarks only).

Aging is built into the score: request B, arriving ``d`` seconds after A,
overtakes A only if ``L_A - L_B > aging_rate * d``.  So a request with
predicted length ``L`` is never overtaken by a request that arrived more than
``L / aging_rate`` seconds after it: its extra wait over FCFS is bounded by
the work of requests arriving in that window, and with predictions capped at
``max_predicted_tokens`` no request starves.  ``aging_rate -> inf`` is FCFS;
``aging_rate -> 0`` is pure shortest-job-first.

Whether the API predicts lengths is not only the policy's business: ``predict_lengths=true`` makes it
predict under every policy (the scaler's token-demand and deadline estimates read the prediction, and
the SSJF benchmark makes every policy pay the predictor's CPU), see ``predicts_lengths``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ScoreInput:
    """What a queue policy sees of a request."""

    arrival_time: float
    predicted_output_tokens: float | None = None
    # Benchmarks only: the output length the request will really have (the client states it).
    true_output_tokens: float | None = None
    # The client's max_tokens: no answer is longer, whatever the prediction says.
    max_output_tokens: float | None = None


class QueuePolicy(ABC):
    name: ClassVar[str]
    # score() needs ScoreInput.predicted_output_tokens: the API must run the length predictor.
    needs_prediction: ClassVar[bool] = False
    # score() needs ScoreInput.true_output_tokens: a request that does not state it is refused.
    needs_true_length: ClassVar[bool] = False

    @abstractmethod
    def score(self, request: ScoreInput) -> float:
        """The request's position in its lane, in seconds (lowest is served first)."""

    @abstractmethod
    def overtaking_window_s(self, request: ScoreInput) -> float:
        """How long after the request's arrival later arrivals can still be served before it."""


@dataclass(frozen=True)
class FCFSPolicy(QueuePolicy):
    name: ClassVar[str] = "fcfs"

    def score(self, request: ScoreInput) -> float:
        return request.arrival_time

    def overtaking_window_s(self, request: ScoreInput) -> float:
        return 0.0


@dataclass(frozen=True)
class _AgedLengthPolicy(QueuePolicy):
    """Shortest-first by some length, aged by arrival time (the module docstring's bound)."""

    aging_tokens_per_s: float = 20.0
    max_predicted_tokens: float = 4096.0

    @abstractmethod
    def length(self, request: ScoreInput) -> float:
        """The output length this policy orders by; ValueError when the request lacks it."""

    def overtaking_window_s(self, request: ScoreInput) -> float:
        return min(max(float(self.length(request)), 0.0), self.max_predicted_tokens) / self.aging_tokens_per_s

    def score(self, request: ScoreInput) -> float:
        return request.arrival_time + self.overtaking_window_s(request)


@dataclass(frozen=True)
class SSJFPolicy(_AgedLengthPolicy):
    name: ClassVar[str] = "ssjf"
    needs_prediction: ClassVar[bool] = True

    def length(self, request: ScoreInput) -> float:
        if request.predicted_output_tokens is None:
            raise ValueError("the ssjf policy scores by predicted length, and the request has no prediction")
        if request.max_output_tokens is not None:
            return min(request.predicted_output_tokens, request.max_output_tokens)
        return request.predicted_output_tokens


@dataclass(frozen=True)
class OraclePolicy(_AgedLengthPolicy):
    name: ClassVar[str] = "oracle"
    needs_true_length: ClassVar[bool] = True

    def length(self, request: ScoreInput) -> float:
        if request.true_output_tokens is None:
            raise ValueError("the oracle policy scores by true length, and the request states none")
        return request.true_output_tokens


QUEUE_POLICIES: dict[str, type[QueuePolicy]] = {cls.name: cls for cls in (FCFSPolicy, SSJFPolicy, OraclePolicy)}


def make_queue_policy(name: str, *, aging_tokens_per_s: float = 20.0,
                      max_predicted_tokens: float = 4096.0) -> QueuePolicy:
    """The policy called ``name`` (settings: ``queue_policy``, ``ssjf_aging_tokens_per_s``,
    ``ssjf_max_predicted_tokens``).  The aging parameters mean nothing to FCFS and are dropped there."""
    try:
        cls = QUEUE_POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown queue policy {name!r}; known: {sorted(QUEUE_POLICIES)}") from None
    if issubclass(cls, _AgedLengthPolicy):
        return cls(aging_tokens_per_s=aging_tokens_per_s, max_predicted_tokens=max_predicted_tokens)
    return cls()


def predicts_lengths(policy: QueuePolicy, predict_lengths: bool | None) -> bool:
    """Whether the API predicts every request's output length: as configured, or (unset) when the policy
    needs it.  A policy that needs predictions cannot run without them."""
    if predict_lengths is None:
        return policy.needs_prediction
    if policy.needs_prediction and not predict_lengths:
        raise ValueError(f"queue policy {policy.name!r} scores by predicted length: predict_lengths cannot be false")
    return predict_lengths
