"""The Celery application every Sluice process shares (API publishes, workers consume, Flower watches).

There is no module-level app: each process builds its own with ``create_app(settings)``
(`sluice flower` starts Flower from one).
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

import broker.transport  # noqa: F401  (registers the sluice:// transport)
from core.names import SLO_CLASSES
from core.redis_urls import celery_tls, redact
from core.settings import Settings


def broker_url(redis_url: str) -> str:
    """sluice:// is Redis with the sorted-set lanes; the rest of the URL is unchanged but for TLS options,
    which Celery gets as ``broker_use_ssl`` (``broker_tls``)."""
    scheme, sep, rest = celery_tls(redis_url)[0].partition("://")
    if scheme not in ("redis", "rediss", "sluice") or not sep:
        raise ValueError(f"unsupported Redis URL {redact(redis_url)!r}: use redis://host:port/db "
                         "(or rediss:// for TLS)")
    return "sluice://" + rest


def broker_tls(redis_url: str) -> dict | None:
    """Celery's ``broker_use_ssl`` for this Redis URL: its TLS options for a rediss:// URL, else None."""
    return celery_tls(redis_url)[1]


def create_app(settings: Settings) -> Celery:
    redis_url = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("sluice", broker=broker_url(redis_url))
    app.conf.update(
        broker_use_ssl=broker_tls(redis_url),
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

