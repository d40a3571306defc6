"""A worker's claim on the request it runs, and the heartbeat that keeps the claim alive.

When a worker gets a task it acknowledges receipt by claiming the request (``claim``: the ``worker`` and
``heartbeat_at`` columns, under the request's row lock), unless another worker holds it with a fresh
heartbeat (a duplicate delivery: the task is ignored). While the task runs, ``RequestHeartbeat`` (a thread)
writes ``heartbeat_at`` every ``LETHE_HEARTBEAT_SECONDS``. The dispatcher's sweep (``service.sweep``) takes a
heartbeat older than ``LETHE_WORKER_STALE_SECONDS`` for a dead worker and queues the request again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update

from service.db import Database
from service.models import ErasureRequest, as_utc, utcnow

logger = logging.getLogger("lethe.worker")

_REQUESTS = ErasureRequest.__table__


def worker_identity() -> str:
    """``host:pid`` of this process (at most 200 characters, the column's width)."""
    return f"{socket.gethostname()}:{os.getpid()}"[-200:]


def holder_elsewhere(request: ErasureRequest, me: str, stale_seconds: float, now: datetime | None = None) -> str | None:
    """The other worker that holds ``request`` with a heartbeat younger than ``stale_seconds``, else None."""
    if request.worker in (None, me) or request.heartbeat_at is None:
        return None
    now = now or utcnow()
    fresh = as_utc(request.heartbeat_at) > now - timedelta(seconds=stale_seconds)
    return request.worker if fresh else None


def claim(request: ErasureRequest, me: str, now: datetime | None = None) -> None:
    """Acknowledge receipt: ``request`` (loaded under its row lock) is now held by ``me``; the caller commits."""
    request.worker, request.heartbeat_at = me, now or utcnow()


class RequestHeartbeat:
    """While the ``with`` block runs, a daemon thread sets the request's ``heartbeat_at`` every ``interval``
    seconds, as long as ``me`` still holds it (a sweep that gave the request away stops the updates). A
    database error is logged and tried again at the next beat."""

    def __init__(self, db: Database, request_id: uuid.UUID, me: str, interval: float):
        self.db, self.request_id, self.me, self.interval = db, request_id, me, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lethe-heartbeat-{request_id}", daemon=True)
        self.beats = 0

    def beat(self) -> bool:
        """One heartbeat now; False when the request is no longer held by ``me``."""
        with self.db.engine.begin() as connection:
            updated = connection.execute(
                update(_REQUESTS).where(_REQUESTS.c.id == self.request_id, _REQUESTS.c.worker == self.me)
                .values(heartbeat_at=utcnow())).rowcount
        self.beats += 1
        return bool(updated)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # the database is away: the next beat tries again
                logger.warning("heartbeat of erasure request %s failed: %s", self.request_id, exc)

    def __enter__(self) -> RequestHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
