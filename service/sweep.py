"""The sweep: requests that no live worker holds are sent again (run by the outbox dispatcher).

A worker acknowledges receipt of a task by claiming its request (``worker``, ``heartbeat_at``) and keeps
writing the heartbeat while the task runs (``workers.claims``). Every ``LETHE_SWEEP_SECONDS`` the dispatcher
(``service.dispatcher``) calls ``sweep``, which looks at the requests still active:

- ``running`` with a heartbeat older than ``LETHE_WORKER_STALE_SECONDS``: its worker is gone (killed, its
  machine lost). The request goes back to ``queued`` (``request.requeued``, ``worker_losses`` + 1) with a new
  outbox row, so the dispatcher sends it at once and the next worker starts it over; after
  ``LETHE_MAX_WORKER_LOSSES`` losses it ends ``failed`` with reason ``worker_lost`` instead (a request that
  kills every worker that runs it must not take the fleet down forever).
- ``queued`` and held by no live worker, whose last send is older than ``LETHE_QUEUED_RESEND_SECONDS``
  (doubling with each re-send, at most ``LETHE_QUEUED_RESEND_MAX_SECONDS``): the broker may have lost the
  message (a Redis restart without persistence, a flushed queue). A new outbox row sends it again
  (``request.resent``). A request that simply waits in a long queue gets a few duplicate messages; the worker
  ignores a task whose request is finished or held by another live worker, and the model lock serialises.

So the outbox stays the source of truth until a worker has acknowledged the request, and a dead worker's
request moves again within about ``LETHE_WORKER_STALE_SECONDS + LETHE_SWEEP_SECONDS`` without waiting for the
broker's visibility timeout. Rows are locked ``FOR UPDATE SKIP LOCKED``, so several dispatchers may sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service import lifecycle, outbox
from service.audit import append_event
from service.models import ErasureRequest, OutboxMessage, RequestStatus, as_utc, utcnow

logger = logging.getLogger("lethe.service")

WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class SweepPolicy:
    stale_seconds: float = 45.0
    max_worker_losses: int = 3
    resend_seconds: float = 120.0
    resend_max_seconds: float = 900.0

    @classmethod
    def from_settings(cls, settings) -> SweepPolicy:
        return cls(settings.worker_stale_seconds, settings.max_worker_losses, settings.queued_resend_seconds,
                   settings.queued_resend_max_seconds)

    def resend_delay(self, sends: int) -> float:
        """Seconds to wait after the last of ``sends`` sends before sending again."""
        return min(self.resend_seconds * 2 ** max(sends - 1, 0), self.resend_max_seconds)


@dataclass
class SweepResult:
    requeued: int = 0
    failed: int = 0
    resent: int = 0

    @property
    def enqueued(self) -> int:
        return self.requeued + self.resent


def _last_sign_of_life():
    return func.coalesce(ErasureRequest.heartbeat_at, ErasureRequest.updated_at)


def sweep(session: Session, policy: SweepPolicy, now: datetime | None = None) -> SweepResult:
    """One pass (the caller commits): requeue or fail the running requests of dead workers, re-send the queued
    requests no worker has acknowledged. Outbox rows are added with ``outbox.enqueue_erasures``."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=policy.stale_seconds)
    result = SweepResult()
    orphaned = session.scalars(
        select(ErasureRequest)
        .where(ErasureRequest.status == RequestStatus.RUNNING.value, _last_sign_of_life() < stale_before)
        .order_by(ErasureRequest.updated_at)
        .with_for_update(skip_locked=True)
    ).all()
    requeue = []
    for request in orphaned:
        last = request.heartbeat_at
        details = {"worker": request.worker, "last_heartbeat_at": as_utc(last).isoformat() if last else None,
                   "stale_after_seconds": policy.stale_seconds}
        if (request.worker_losses or 0) + 1 >= policy.max_worker_losses:
            lifecycle.mark_failed(session, request, {
                "error_type": "WorkerLost",
                "message": f"the worker running this request stopped {request.worker_losses + 1} times; it is not "
                           "tried again (an operator should look at the worker logs)", **details,
            }, reason=WORKER_LOST)
            result.failed += 1
            logger.error("erasure request %s: worker lost %d times; failed", request.id, request.worker_losses + 1)
        else:
            lifecycle.mark_requeued(session, request, WORKER_LOST, details)
            requeue.append(request.id)
            logger.warning("erasure request %s: worker %s gave no heartbeat since %s; queued again", request.id,
                           details["worker"], details["last_heartbeat_at"])
    result.requeued = len(requeue)

    resend = _unacknowledged_queued(session, policy, now, stale_before)
    for request_id, sends, last_sent in resend:
        append_event(session, "request.resent", {
            "reason": "no worker acknowledged it", "sends": sends + 1,
            "last_sent_at": as_utc(last_sent).isoformat(),
        }, request_id=request_id)
        logger.warning("erasure request %s: queued, unacknowledged since %s; sent again", request_id, last_sent)
    result.resent = len(resend)
    outbox.enqueue_erasures(session, [*requeue, *(request_id for request_id, _, _ in resend)], now=now)
    return result


def _unacknowledged_queued(session: Session, policy: SweepPolicy, now: datetime,
                           stale_before: datetime) -> list[tuple]:
    """``(request id, sends so far, last send)`` of the queued requests to send again."""
    candidates = session.scalars(
        select(ErasureRequest.id)
        .where(ErasureRequest.status == RequestStatus.QUEUED.value,
               or_(ErasureRequest.heartbeat_at.is_(None), ErasureRequest.heartbeat_at < stale_before),
               ErasureRequest.updated_at < now - timedelta(seconds=policy.resend_seconds))
        .order_by(ErasureRequest.updated_at)
        .limit(500)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return []
    sends = session.execute(
        select(OutboxMessage.request_id, func.count(OutboxMessage.id), func.max(OutboxMessage.sent_at),
               func.count(OutboxMessage.id) - func.count(OutboxMessage.sent_at))
        .where(OutboxMessage.request_id.in_(candidates))
        .group_by(OutboxMessage.request_id)
    ).all()
    due = []
    for request_id, count, last_sent, unsent in sends:
        if unsent or last_sent is None:
            continue  # a row waits for the dispatcher anyway
        if (now - as_utc(last_sent)).total_seconds() >= policy.resend_delay(count):
            due.append((request_id, count, last_sent))
    return due
