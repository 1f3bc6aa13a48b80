"""Unfinished batch work per deadline, kept incrementally so the scaler never scans the batch lane.

The request ledger (:mod:`broker.ledger`) adds a batch request (and its predicted output tokens) to its
deadline's bucket when it is enqueued, and takes it out in the step that ends it (finish, fail, cancel,
expire).  Buckets are one minute wide: the scaler reasons about jobs, not seconds.
"""

from __future__ import annotations

import math

from core import keys
from broker.messages import GenerationRequest

BUCKET_S = 60


def deadline_bucket(deadline: float) -> str:
    return str(int(math.ceil(deadline / BUCKET_S) * BUCKET_S))


def expected_tokens(request: GenerationRequest) -> float:
    if request.predicted_output_tokens is not None:
        return min(float(request.predicted_output_tokens), float(request.sampling.max_tokens))
    return float(request.sampling.max_tokens)


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
