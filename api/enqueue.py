"""Publish a request to its lane as one Celery task, scored by the queue policy."""

from __future__ import annotations

import redis

from api.errors import APIError
from broker import deadlines, keys
from broker.messages import GenerationRequest
from broker.transport import SCORE_HEADER
from workers.tasks import TASK_NAME

REQUEST_STATE_TTL_S = 24 * 3600


class Enqueuer:
    def __init__(self, celery_app, client: redis.Redis, admission_limits: dict[str, int], retry_after_s: int,
                 keep_prompt_text: bool = False):
        self.keep_prompt_text = keep_prompt_text
        self.celery_app = celery_app
        self.client = client
        self.admission_limits = admission_limits
        self.retry_after_s = retry_after_s

    def lane_depths(self, lanes) -> dict[str, int]:
        with self.client.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.zcard(keys.lane_key(lane))
            return dict(zip(lanes, pipe.execute()))

    def enqueue(self, request: GenerationRequest) -> None:
        lane = request.slo
        limit = self.admission_limits.get(lane)
        if limit is not None and self.client.zcard(keys.lane_key(lane)) >= limit:
            raise APIError(429, f"the {lane} lane is full ({limit} queued requests); retry later",
                           type="rate_limit_error", code="lane_full", headers={"Retry-After": str(self.retry_after_s)})
        with self.client.pipeline() as pipe:
            pipe.hset(keys.request_key(request.request_id), mapping={
                "status": "queued", "lane": lane, "enqueued_at": request.enqueued_at, "score": request.score,
            })
            pipe.expire(keys.request_key(request.request_id), REQUEST_STATE_TTL_S)
            deadlines.track(pipe, request, +1)
            pipe.hincrby(keys.ARRIVALS, f"requests:{lane}", 1)
            pipe.hincrbyfloat(keys.ARRIVALS, f"tokens:{lane}", request.prompt_tokens + deadlines.expected_tokens(request))
            pipe.execute()
        self.celery_app.send_task(
            # Prompt text stays in the API (for the predictor's log) unless keeping it is configured.
            TASK_NAME, args=[request.model_dump(mode="json", exclude=None if self.keep_prompt_text else {"prompt_text"})],
            task_id=request.request_id,
            queue=lane, routing_key=lane, headers={SCORE_HEADER: request.score},
        )
