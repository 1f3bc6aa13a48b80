"""The Celery application every Sluice process shares (API publishes, workers consume, Flower watches).

There is no module-level app: each process builds its own with ``create_app(settings)``
(`sluice flower` starts Flower from one).
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

import broker.transport  # noqa: F401  (registers the sluice:// transport)
from core.names import SLO_CLASSES
from core.settings import Settings


def broker_url(redis_url: str) -> str:
    """sluice:// is Redis with the sorted-set lanes; the rest of the URL is unchanged."""
    scheme, sep, rest = redis_url.partition("://")
    if scheme not in ("redis", "sluice") or not sep:
        raise ValueError(f"unsupported Redis URL {redis_url!r}: use redis://host:port/db")
    return "sluice://" + rest


def create_app(settings: Settings) -> Celery:
    app = Celery("sluice", broker=broker_url(settings.redis_url or "redis://127.0.0.1:6379/0"))
    app.conf.update(
        # Routing key == queue name: redelivery relies on it (broker.redelivery).
        task_queues=[Queue(lane, Exchange(lane, type="direct"), routing_key=lane) for lane in SLO_CLASSES],
        task_default_queue="interactive",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # Admission = prefetch: one message per admitted request, and no more.
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "lane_priority": tuple(settings.lanes),
        },
    )
    return app

