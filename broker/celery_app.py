"""The Celery application every Sluice process shares (API publishes, workers consume, Flower watches).

There is no module-level app: each process builds its own with ``create_app(settings)``
(`sluice flower` starts Flower from one).
"""

from __future__ import annotations

from urllib.parse import quote

from celery import Celery
from kombu import Exchange, Queue

import broker.transport  # noqa: F401  (registers the sluice:// transport)
from core.names import SLO_CLASSES
from core.redis_urls import celery_tls, is_sentinel_url, parse_sentinel_url, redact
from core.settings import Settings


def broker_url(redis_url: str) -> str:
    """sluice:// is Redis with the sorted-set lanes; the rest of the URL is unchanged but for TLS options,
    which Celery gets as ``broker_use_ssl`` (``broker_tls``).  A Sentinel URL (core.redis_urls) becomes
    ``sluicesentinel://[user:password@]<first sentinel>/<db>``: the sentinels and the service name travel in
    the transport options (``broker_transport_options``)."""
    if is_sentinel_url(redis_url):
        parsed = parse_sentinel_url(redis_url)
        auth = ""
        if parsed.password is not None or parsed.username:
            auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
        host, port = parsed.sentinels[0]
        return f"sluicesentinel://{auth}{host}:{port}/{parsed.db}"
    scheme, sep, rest = celery_tls(redis_url)[0].partition("://")
    if scheme not in ("redis", "rediss", "sluice") or not sep:
        raise ValueError(f"unsupported Redis URL {redact(redis_url)!r}: use redis://host:port/db "
                         "(rediss:// for TLS, redis+sentinel://host:port,.../service/db for a Sentinel group)")
    return "sluice://" + rest


def broker_tls(redis_url: str) -> dict | None:
    """Celery's ``broker_use_ssl`` for this Redis URL: its TLS options for a rediss:// URL, else None."""
    return None if is_sentinel_url(redis_url) else celery_tls(redis_url)[1]


def sentinel_transport_options(redis_url: str) -> dict:
    """The transport options a Sentinel broker needs (none for a plain Redis URL)."""
    if not is_sentinel_url(redis_url):
        return {}
    parsed = parse_sentinel_url(redis_url)
    options = {"master_name": parsed.service_name, "sentinels": [list(address) for address in parsed.sentinels]}
    if parsed.sentinel_kwargs():
        options["sentinel_kwargs"] = parsed.sentinel_kwargs()
    return options


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
        # A Redis outage is an expected state (docs/operations.md): the worker's consumer reconnects with
        # Celery's own backoff, forever; a running task is not cancelled when the connection drops.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A publish retries briefly (kombu's retry policy), then fails: the API answers 503 + Retry-After.
        # A retried publish whose first try got through enqueues once (the ledger's enqueue is idempotent).
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "lane_priority": tuple(settings.lanes),
            # kombu's Redis connection options: ping a connection idle this long before using it.
            "health_check_interval": 10,
            "retry_on_timeout": True,
            "wait_replicas": settings.enqueue_wait_replicas,
            "wait_timeout_ms": settings.enqueue_wait_timeout_ms,
            **sentinel_transport_options(redis_url),
        },
    )
    return app

