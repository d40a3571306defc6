"""The Celery layer: task ``lethe.erase(request_id)``, its retry policy and the last-resort failure.

The job itself is ``workers.pipeline.process_request``. A transient error (``workers.errors.is_transient``:
database, broker) is retried with back-off (5 s doubling to 5 min) up to ``LETHE_TASK_MAX_RETRIES`` times, then
the request is marked ``failed``; any other error that escapes the pipeline marks it ``failed`` at once.
Waiting for the model's lock is not an error: a job that waited ``LETHE_LOCK_WAIT_SECONDS`` (another erasure of
the model runs) is tried again ``LETHE_LOCK_RETRY_SECONDS`` later, as often as needed, without spending a retry
(the count of such waits travels in the task's ``lock_waits`` argument), so an erasure queued behind a long one
never ends ``failed`` for waiting.
"""

from __future__ import annotations

import logging
import uuid

from service import lifecycle
from service.models import RequestStatus
from service.outbox import ERASE_TASK_NAME
from workers import metrics
from workers.celery_app import app
from workers.context import WorkerContext, default_context
from workers.errors import failure_reason, is_transient
from workers.locks import LockTimeout
from workers.pipeline import process_request

logger = logging.getLogger("lethe.worker")


def fail_request(request_id: str | uuid.UUID, error: BaseException, context: WorkerContext | None = None,
                 reason: str | None = None) -> bool:
    """Mark a request ``failed`` if it is still queued or running (retries exhausted); best effort."""
    context = context or default_context()
    try:
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, uuid.UUID(str(request_id)))
            if request.status in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
                lifecycle.mark_failed(session, request, error, reason=reason)
                return True
    except Exception:
        logger.exception("could not mark erasure request %s failed", request_id)
    return False


def retries_spent(retries: int, lock_waits: int) -> int:
    """Celery counts every retry; the ones that only waited for the model lock are not spent."""
    return max(0, retries - lock_waits)


def retry_countdown(retries: int) -> float:
    return float(min(300, 5 * 2 ** retries))


@app.task(name=ERASE_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
          ignore_result=True)
def erase_request(self, request_id: str, lock_waits: int = 0) -> str:
    """``lethe.erase(request_id)``: ``workers.pipeline.process_request`` with the retry policy above."""
    context = default_context()
    try:
        return process_request(request_id, context)
    except LockTimeout as exc:  # another erasure of the model runs: wait again, no retry spent
        metrics.JOBS.labels("retried").inc()
        logger.info("erasure request %s: model busy, trying again in %.0f s (wait %d)", request_id,
                    context.settings.lock_retry_seconds, lock_waits + 1)
        raise self.retry(exc=exc, countdown=context.settings.lock_retry_seconds, max_retries=None,
                         args=(request_id,), kwargs={"lock_waits": lock_waits + 1}) from exc
    except Exception as exc:
        if not is_transient(exc):  # process_request already recorded permanent errors
            logger.exception("erasure task for %s raised", request_id)
            reason = failure_reason(exc)
            fail_request(request_id, exc, context, reason)
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure(reason)
            return "failed"
        spent = retries_spent(self.request.retries, lock_waits)
        if spent >= context.settings.task_max_retries:
            logger.error("erasure request %s: giving up after %d retries: %s", request_id, spent, exc)
            fail_request(request_id, exc, context, "retries_exhausted")
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure("retries_exhausted")
            return "failed"
        metrics.JOBS.labels("retried").inc()
        logger.warning("erasure request %s: transient error, retry %d: %s", request_id, spent + 1, exc)
        raise self.retry(exc=exc, countdown=retry_countdown(spent), max_retries=None, args=(request_id,),
                         kwargs={"lock_waits": lock_waits}) from exc
