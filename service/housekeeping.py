"""What the outbox dispatcher does besides sending tasks, on each pass: the webhook deliveries that are due
(``service.webhooks``) and, every ``LETHE_RETENTION_SWEEP_SECONDS``, the retention sweep of withdrawn versions
(``service.withdrawal.sweep_withdrawn``). It runs wherever the dispatcher runs: a thread of the API, or
``lethe dispatcher``; the sweep needs the artifact directory mounted there (``lethe-admin versions sweep``
runs it by hand elsewhere)."""

from __future__ import annotations

import logging
import time

from service.db import Database
from service.settings import Settings
from service.webhooks import Post, deliver_due, httpx_post
from service.withdrawal import sweep_withdrawn

logger = logging.getLogger("lethe.service")


class Housekeeping:
    def __init__(self, db: Database, settings: Settings, post: Post | None = None):
        self.db, self.settings = db, settings
        self.post = post or httpx_post(settings.webhook_timeout_seconds)
        self._last_sweep: float | None = None

    def __call__(self) -> None:
        try:
            with self.db.session() as session:
                deliver_due(session, self.post, self.settings.webhook_max_attempts)
        except Exception:
            logger.exception("webhook deliveries failed; retried on the next pass")
        every = self.settings.retention_sweep_seconds
        if every > 0 and (self._last_sweep is None or time.monotonic() - self._last_sweep >= every):
            self._last_sweep = time.monotonic()
            try:
                with self.db.session() as session:
                    sweep_withdrawn(session, self.settings.artifact_dir, self.settings.withdrawn_retention_days)
            except Exception:
                logger.exception("retention sweep of withdrawn versions failed; retried at the next sweep")
