"""Publish a request to its lane as one Celery task, scored by the queue policy.

The publish carries the request's ledger entry in a header: the transport puts the message into its
lane and records the request (state, deadline tokens, arrivals) in one atomic step (broker.ledger), so
a publish that fails leaves nothing behind.
"""

from __future__ import annotations

import redis

from api.errors import APIError
from broker.ledger import LEDGER_HEADER, LedgerEntry
from broker.messages import GenerationRequest
from broker.transport import SCORE_HEADER
from core import keys
from core.names import TASK_NAME


class Enqueuer:
    def __init__(self, celery_app, client: redis.Redis, lane_queue_limits: dict[str, int], retry_after_s: int,
                 keep_prompt_text: bool = False):
        self.keep_prompt_text = keep_prompt_text
        self.celery_app = celery_app
        self.client = client
        self.lane_queue_limits = lane_queue_limits
        self.retry_after_s = retry_after_s

    def enqueue(self, request: GenerationRequest) -> None:
        lane = request.slo
        limit = self.lane_queue_limits.get(lane)
        if limit is not None and self.client.zcard(keys.lane_key(lane)) >= limit:
            raise APIError(429, f"the {lane} lane is full ({limit} queued requests); retry later",
                           type="rate_limit_error", code="lane_full", headers={"Retry-After": str(self.retry_after_s)})
        self.celery_app.send_task(
            # Prompt text stays in the API (for the predictor's log) unless keeping it is configured.
            TASK_NAME, args=[request.model_dump(mode="json", exclude=None if self.keep_prompt_text else {"prompt_text"})],
            task_id=request.request_id,
            queue=lane, routing_key=lane,
            headers={SCORE_HEADER: request.score, LEDGER_HEADER: LedgerEntry.for_request(request).to_header()},
        )
