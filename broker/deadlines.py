"""Unfinished batch work per deadline, kept incrementally so the scaler never scans the batch lane.

The API adds a request (and its predicted output tokens) to its deadline's bucket when it enqueues it;
the worker takes it out when it finishes or fails.  Buckets are one minute wide: the scaler reasons
about jobs, not seconds.
"""

from __future__ import annotations

import math

from broker import keys
from broker.messages import GenerationRequest

BUCKET_S = 60


def deadline_bucket(deadline: float) -> str:
    return str(int(math.ceil(deadline / BUCKET_S) * BUCKET_S))


def expected_tokens(request: GenerationRequest) -> float:
    if request.predicted_output_tokens is not None:
        return min(float(request.predicted_output_tokens), float(request.sampling.max_tokens))
    return float(request.sampling.max_tokens)


def track(pipe, request: GenerationRequest, sign: int) -> None:
    """Add (sign=+1) or remove (sign=-1) a batch request's work from its deadline bucket."""
    if request.slo != "batch" or request.deadline is None:
        return
    bucket = deadline_bucket(request.deadline)
    pipe.hincrby(keys.DEADLINE_REQUESTS, bucket, sign)
    pipe.hincrbyfloat(keys.DEADLINE_TOKENS, bucket, sign * expected_tokens(request))


def read_deadline_buckets(client) -> list[tuple[float, int, float]]:
    """(deadline, unfinished requests, predicted tokens) per bucket with work left, earliest first."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.DEADLINE_REQUESTS)
        pipe.hgetall(keys.DEADLINE_TOKENS)
        requests, tokens = pipe.execute()
    buckets = []
    for bucket, count in requests.items():
        count = int(count)
        if count > 0:
            buckets.append((float(bucket), count, max(0.0, float(tokens.get(bucket, 0)))))
    return sorted(buckets)
