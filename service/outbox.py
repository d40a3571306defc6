"""The outbox: erasure tasks written in the submitting transaction (``enqueue_erasures``) and sent to the
broker afterwards (``dispatch_outbox``, run by ``service.dispatcher``). Delivery is at least once."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from service import lifecycle
from service.db import OUTBOX_CHANNEL
from service.models import ErasureRequest, OutboxMessage, RequestStatus, utcnow

logger = logging.getLogger("lethe.service")

ERASE_TASK_NAME = "lethe.erase"  # the worker's Celery task (workers.tasks.erase_request)

Sender = Callable[[str, dict[str, Any]], Any]

_OUTBOX = OutboxMessage.__table__
_REQUESTS = ErasureRequest.__table__
_INSERT_OUTBOX = insert(_OUTBOX)
_NOTIFY_OUTBOX = text(f"NOTIFY {OUTBOX_CHANNEL}")
_DISPATCHABLE = frozenset({RequestStatus.RECEIVED.value, RequestStatus.QUEUED.value})


def erase_task_payload(request_id: uuid.UUID) -> dict[str, Any]:
    return {"args": [str(request_id)], "kwargs": {}, "task_id": f"erase-{request_id}"}


def enqueue_erasures(session: Session, request_ids: list[uuid.UUID], task_name: str = ERASE_TASK_NAME,
                     now: datetime | None = None) -> None:
    """One outbox row per request, in the caller's transaction; on Postgres a ``NOTIFY`` (delivered at
    commit) wakes a dispatcher in any process."""
    if not request_ids:
        return
    now = now or utcnow()
    session.connection().execute(_INSERT_OUTBOX, [
        {"request_id": request_id, "task_name": task_name, "payload": erase_task_payload(request_id),
         "created_at": now, "attempts": 0}
        for request_id in request_ids
    ])
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(_NOTIFY_OUTBOX)


@dataclass
class DispatchResult:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    last_error: str | None = None


def count_unsent(session: Session) -> int:
    query = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
    return session.scalar(query)


_UNSENT_BATCH = (
    select(_OUTBOX.c.id, _OUTBOX.c.request_id, _OUTBOX.c.task_name, _OUTBOX.c.payload)
    .where(_OUTBOX.c.sent_at.is_(None))
    .order_by(_OUTBOX.c.id)
    .with_for_update(skip_locked=True)
)
_REQUEST_STATUSES_FOR_UPDATE = select(_REQUESTS.c.id, _REQUESTS.c.status).order_by(_REQUESTS.c.id).with_for_update()


def dispatch_outbox(
    session: Session, sender: Sender, limit: int = 100, request_id: uuid.UUID | None = None,
) -> DispatchResult:
    """Send the unsent outbox rows, oldest first: up to ``limit`` of them in one transaction.

    The rows and their requests are locked (``FOR UPDATE``; rows another dispatcher holds are
    skipped), then ``sender(task_name, payload)`` is called for each in order. Only then are the
    writes made and committed together: the sent rows are marked sent, their requests still
    ``received`` become ``queued`` with their audit events (appended last, so the chain head is not
    locked while the broker is called). A worker that gets a task before the commit waits on the
    request's row lock and then sees ``queued``. If the sender raises, the pass stops there: the rows
    before it are committed as sent, that row's attempt and error are recorded, the rest stay
    untouched for the next pass (the broker is probably down). Rows of cancelled (or finished)
    requests are marked sent without sending. Delivery is at least once (a failed commit after a
    send means a second send later): the worker must ignore a task whose request is not ``queued``.
    ``request_id`` limits the pass to that request's rows (used right after a POST when no
    dispatcher thread runs).
    """
    result = DispatchResult()
    session.rollback()
    query = _UNSENT_BATCH.limit(limit)
    if request_id is not None:
        query = query.where(_OUTBOX.c.request_id == request_id)
    messages = session.execute(query).all()
    if not messages:
        session.rollback()
        return result
    request_ids = sorted({message.request_id for message in messages if message.request_id is not None})
    statuses = dict(session.execute(_REQUEST_STATUSES_FOR_UPDATE.where(_REQUESTS.c.id.in_(request_ids))).all()) \
        if request_ids else {}
    now = utcnow()
    sent, to_queue = [], []
    for message in messages:
        status = statuses.get(message.request_id)
        if status is not None and status not in _DISPATCHABLE:
            _update_outbox(session, [message.id], sent_at=now, last_error=f"not sent: the request is {status}")
            result.skipped += 1
            continue
        try:
            sender(message.task_name, message.payload)
        except Exception as exc:  # the broker is down or refused: keep the row for the next pass
            error = f"{type(exc).__name__}: {exc}"[:2000]
            _update_outbox(session, [message.id], attempts=_OUTBOX.c.attempts + 1, last_error=error)
            result.failed += 1
            result.last_error = error
            logger.warning("outbox: sending message %s failed: %s", message.id, error)
            break
        sent.append(message.id)
        if status == RequestStatus.RECEIVED.value:
            to_queue.append((message.request_id, (message.payload or {}).get("task_id")))
    if sent:
        _update_outbox(session, sent, sent_at=now, last_error=None, attempts=_OUTBOX.c.attempts + 1)
    lifecycle.mark_queued_by_ids(session, to_queue)
    session.commit()
    result.sent = len(sent)
    return result


def _update_outbox(session: Session, message_ids: list[int], **values) -> None:
    session.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(message_ids)).values(**values))
