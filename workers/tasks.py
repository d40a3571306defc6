"""The Celery layer: task ``lethe.erase(request_id)``, its retry policy and the last-resort failure.

The job itself is ``workers.pipeline.process_request``. A transient error (``workers.errors.is_transient``:
database, broker, lock time-out) is retried with back-off (5 s doubling to 5 min) up to
``LETHE_TASK_MAX_RETRIES`` times, then the request is marked ``failed``; any other error that escapes the
pipeline marks it ``failed`` at once.
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
from workers.pipeline import process_request

logger = logging.getLogger("lethe.worker")


def fail_request(request_id: str | uuid.UUID, error: BaseException, context: WorkerContext | None = None) -> bool:
    """Mark a request ``failed`` if it is still queued or running (retries exhausted); best effort."""
    context = context or default_context()
    try:
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, uuid.UUID(str(request_id)))
            if request.status in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
                lifecycle.mark_failed(session, request, error)
                return True
    except Exception:
        logger.exception("could not mark erasure request %s failed", request_id)
    return False


def retry_countdown(retries: int) -> float:
    return float(min(300, 5 * 2 ** retries))


@app.task(name=ERASE_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
          ignore_result=True)
def erase_request(self, request_id: str) -> str:
    """``lethe.erase(request_id)``: ``workers.pipeline.process_request`` with the retry policy above."""
    context = default_context()
    try:
        return process_request(request_id, context)
    except Exception as exc:
        if not is_transient(exc):  # process_request already recorded permanent errors
            logger.exception("erasure task for %s raised", request_id)
            fail_request(request_id, exc, context)
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure(failure_reason(exc))
            return "failed"
        if self.request.retries >= context.settings.task_max_retries:
            logger.error("erasure request %s: giving up after %d retries: %s", request_id, self.request.retries, exc)
            fail_request(request_id, exc, context)
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure("retries_exhausted")
            return "failed"
        metrics.JOBS.labels("retried").inc()
        logger.warning("erasure request %s: transient error, retry %d: %s", request_id, self.request.retries + 1, exc)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
