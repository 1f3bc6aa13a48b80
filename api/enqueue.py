"""Publish a request to its lane as one Celery task, scored by the queue policy.

The publish carries the request's ledger entry in a header: the transport puts the message into its
lane and records the request (state, deadline tokens, arrivals) in one atomic step (broker.ledger), so
a publish that fails leaves nothing behind.
"""

from __future__ import annotations

import redis
from kombu import serialization

from api.errors import APIError
from broker.fair_share import FairShareConfig
from broker.ledger import LEDGER_HEADER, SCORE_HEADER, LedgerEntry
from broker.messages import GenerationRequest
from core import keys
from core.names import TASK_NAME


def describe(request: GenerationRequest) -> str:
    """A request as Flower lists its task: what an operator looks for, not the payload (a batch request's
    batch is in its task id, ``<batch id>-<line>``)."""
    return f"{request.slo} {request.kind} prompt_tokens={request.prompt_tokens} max_tokens={request.sampling.max_tokens}"


# What send_task gives a message to a durable queue (kombu's delivery_mode for persistent messages).
DELIVERY_MODE_PERSISTENT = 2


class Enqueuer:
    def __init__(self, celery_app, client: redis.Redis, lane_queue_limits: dict[str, int], retry_after_s: int,
                 keep_prompt_text: bool = False, fair_share: FairShareConfig | None = None):
        self.keep_prompt_text = keep_prompt_text
        # Set: a request with a tenant is placed by its tenant's fair share of its lane (broker.fair_share).
        self.fair_share = fair_share
        self.celery_app = celery_app
        self.client = client
        self.lane_queue_limits = lane_queue_limits
        self.retry_after_s = retry_after_s

    def _send(self, request: GenerationRequest, producer=None) -> None:
        self.celery_app.send_task(
            TASK_NAME, args=[self._payload(request)],
            task_id=request.request_id,
            # What Flower shows as the task's arguments: Celery's default is a repr of the whole payload
            # (token ids), which costs a third of a bulk publish's time and doubles each message's size.
            argsrepr=describe(request), kwargsrepr="{}",
            queue=request.slo, routing_key=request.slo, producer=producer,
            headers={SCORE_HEADER: request.score, LEDGER_HEADER: self._entry(request).to_header()},
        )

    def enqueue_many(self, requests: list[GenerationRequest]) -> int:
        """Publish a batch's requests in few round trips: each is one Celery task message (protocol 2,
        built by Celery's ``create_task_message``), published on the kombu channel the way ``send_task``
        publishes it, and collected into pipelines by the transport (``collect_requests``).  What it
        leaves out: the queue declaration and retry wrapper of ``Producer.publish`` (one Redis round trip
        per message) and Celery's ``task-sent`` events (Flower lists a batch's tasks once workers receive
        them).  No lane limit: a batch was accepted whole.  Returns how many entered their lane (a request
        already recorded, or of a batch closed meanwhile, does not)."""
        amqp = self.celery_app.amqp
        with self.celery_app.producer_or_acquire() as producer:
            channel = producer.channel
            with channel.collect_requests() as entered:
                for request in requests:
                    task = amqp.create_task_message(
                        request.request_id, TASK_NAME, [self._payload(request)], {}, argsrepr=describe(request),
                        kwargsrepr="{}", create_sent_event=False, root_id=request.request_id,
                        ignore_result=True)
                    content_type, content_encoding, body = serialization.dumps(task.body, serializer="json")
                    headers = {**task.headers, SCORE_HEADER: request.score,
                               LEDGER_HEADER: self._entry(request).to_header()}
                    properties = {**task.properties, "delivery_mode": DELIVERY_MODE_PERSISTENT}
                    message = channel.prepare_message(body, None, content_type, content_encoding, headers, properties)
                    channel.basic_publish(message, exchange="", routing_key=request.slo)
        return sum(entered)

    def _entry(self, request: GenerationRequest) -> LedgerEntry:
        return LedgerEntry.for_request(request, self.fair_share.ticket(request) if self.fair_share else None)

    def _payload(self, request: GenerationRequest) -> dict:
        # Prompt text stays in the API (for the predictor's log) unless keeping it is configured.
        # Defaults left out (the worker's model fills them in): a queued request's message is its memory cost.
        return request.model_dump(mode="json", exclude_defaults=True,
                                  exclude=None if self.keep_prompt_text else {"prompt_text"})

    def enqueue(self, request: GenerationRequest) -> None:
        lane = request.slo
        limit = self.lane_queue_limits.get(lane)
        if limit is not None and self.client.zcard(keys.lane_key(lane)) >= limit:
            raise APIError(429, f"the {lane} lane is full ({limit} queued requests); retry later",
                           type="rate_limit_error", code="lane_full", headers={"Retry-After": str(self.retry_after_s)})
        self._send(request)
