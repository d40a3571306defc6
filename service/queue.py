"""The Celery *client* side: the service sends tasks by name and never imports the worker code.

The worker (``workers/``) registers a task named ``lethe.erase`` taking one argument, the
request id (a string). Broker: ``LETHE_BROKER_URL`` (``memory://`` in the embedded default,
``redis://127.0.0.1:6379/0`` in production).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings

SEND_TIMEOUT_SECONDS = 3.0


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def broker_transport_options(url: str, timeout: float) -> dict[str, float]:
    """Socket timeouts for Redis; other transports (the embedded default's SQLite broker hands its options
    to ``sqlalchemy.create_engine``) reject these keys, so they get none."""
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout} if is_redis(url) else {}


def make_celery_client(settings: Settings) -> Celery:
    client = Celery("lethe-service", broker=settings.broker_url, backend=settings.result_backend,
                    set_as_current=False)
    client.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=SEND_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=False,
        broker_transport_options=broker_transport_options(settings.broker_url, SEND_TIMEOUT_SECONDS),
        task_default_queue=settings.task_queue or "celery",
    )
    return client


def celery_sender(client: Celery, queue: str | None = None):
    """A ``dispatch_outbox`` sender: publish ``task_name`` with the outbox payload, no retries
    (a failure leaves the outbox row for the next dispatcher pass)."""

    def send(task_name: str, payload: dict[str, Any]) -> str:
        options: dict[str, Any] = {"retry": False}
        if queue:
            options["queue"] = queue
        result = client.send_task(
            task_name, args=payload.get("args", []), kwargs=payload.get("kwargs", {}),
            task_id=payload.get("task_id"), **options,
        )
        return result.id

    return send


def broker_reachable(settings: Settings, timeout: float = 1.0) -> tuple[bool, str | None]:
    """Whether a connection to the broker can be opened (``memory://`` always can)."""
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=timeout,
                        transport_options={"socket_connect_timeout": timeout} if is_redis(settings.broker_url)
                        else {}) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return True, None
    except Exception as exc:  # any failure means "not ready"
        return False, f"{type(exc).__name__}: {exc}"
