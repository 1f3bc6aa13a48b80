"""Queue policies: the score a request gets in its lane (lowest is served first).

Scores are in seconds: ``arrival_time + predicted_output_tokens / aging_rate``.

* ``fcfs``   — the predicted length is ignored: score = arrival time.
* ``ssjf``   — the proxy model's predicted output tokens.
* ``oracle`` — the true output length (benchmarks only).

Aging is built into the score: request B, arriving ``d`` seconds after A,
overtakes A only if ``L_A - L_B > aging_rate * d``.  So a request with
predicted length ``L`` is never overtaken by a request that arrived more than
``L / aging_rate`` seconds after it: its extra wait over FCFS is bounded by
the work of requests arriving in that window, and with predictions capped at
``max_predicted_tokens`` no request starves.  ``aging_rate -> inf`` is FCFS;
``aging_rate -> 0`` is pure shortest-job-first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringPolicy:
    name: str = "fcfs"
    aging_tokens_per_s: float = 20.0
    max_predicted_tokens: float = 4096.0

    def score(self, arrival_time: float, predicted_output_tokens: float | None = None,
              true_output_tokens: float | None = None) -> float:
        if self.name == "fcfs":
            return arrival_time
        length = true_output_tokens if self.name == "oracle" else predicted_output_tokens
        if length is None:
            raise ValueError(f"policy {self.name!r} needs a {'true' if self.name == 'oracle' else 'predicted'} length")
        return arrival_time + min(max(float(length), 0.0), self.max_predicted_tokens) / self.aging_tokens_per_s

    def overtaking_window_s(self, predicted_output_tokens: float) -> float:
        """How long after a request's arrival later arrivals can still be served before it."""
        if self.name == "fcfs":
            return 0.0
        return min(predicted_output_tokens, self.max_predicted_tokens) / self.aging_tokens_per_s
