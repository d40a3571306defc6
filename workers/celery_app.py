"""The Celery application of the workers: ``celery -A workers.celery_app worker --pool solo``.

Broker and result backend come from the service settings (``LETHE_BROKER_URL``,
``LETHE_RESULT_BACKEND``); the queue is ``LETHE_TASK_QUEUE`` (Celery's ``celery`` when unset), the
same one the service sends to. Long erasures on the Redis broker are configured against running
twice (FIELD-NOTES): acks late, a visibility timeout above the longest job, prefetch 1, and the
task itself is idempotent (a per-model lock and a status check).

``memory://`` (the service's default) only works inside one process (tests, an embedded worker
thread); ``lethe serve`` replaces it with a SQLite-backed local transport (``sqla+sqlite://``) that
the API process and the worker process share.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from service.settings import Settings, get_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        transport_options = {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,  # every sweep scans: the interval alone sets the pace
        }
    queue = settings.task_queue or "celery"
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": dict(transport_options),
        "task_default_queue": queue,
        "task_queues": None,  # a queue named task_default_queue is created on demand
        "task_ignore_result": settings.result_backend is None,
        "task_track_started": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


def make_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("lethe", broker=settings.broker_url, backend=settings.result_backend,
                 include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    return app


app = make_celery_app()


@signals.worker_init.connect
def _start_metrics_exporter(sender=None, **_kwargs) -> None:
    """The worker's Prometheus exporter (``LETHE_WORKER_METRICS_PORT``; see ``workers.metrics``)."""
    from workers.metrics import start_exporter

    settings = get_settings()
    start_exporter(settings.worker_metrics_port, settings.worker_metrics_addr, settings.broker_url,
                   settings.task_queue or "celery")
