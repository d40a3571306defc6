"""The FastAPI application: ``create_app()``. Run with ``uvicorn service.app:create_app --factory``.

This process never imports torch, ``ease_engine`` or ``workers``: tasks go to the broker by name.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import requests
from service.api.openapi import install_openapi
from service.api.routes import audit, erasure_requests, health, keys, models, reports, tokens, ui
from service.batching import BatchRunner
from service.db import Database, upgrade_database
from service.dispatcher import OutboxDispatcher
from service.errors import install_error_handlers
from service.housekeeping import Housekeeping
from service.metrics import BodySizeLimitMiddleware, MetricsMiddleware, ServiceMetrics
from service.outbox import Sender
from service.settings import Settings, get_settings
from service.sweep import SweepPolicy

DESCRIPTION = """GDPR erasure requests (Art. 17) for federated CLIP models.

Authenticate with `Authorization: Bearer <token>` (`lethe-admin token create --role ROLE --name NAME`; the
Authorize button below takes it); a requester token submits only for the clients an admin granted it
(`lethe-admin token grant ID --model M --client C`). Errors are RFC 9457 problem details
(`application/problem+json`) with a stable `code`. Compliance officers have a web page at [/ui](/ui).
"""


def create_app(settings: Settings | None = None, *, database: Database | None = None,
               sender: Sender | None = None) -> FastAPI:
    """Build the app. ``database`` and ``sender`` may be injected (tests); by default they come from
    the settings (``LETHE_DATABASE_URL``; a Celery client for ``LETHE_BROKER_URL``)."""
    settings = settings or get_settings()
    database = database or Database(settings.database_url)
    if sender is None:
        from service.queue import celery_sender, make_celery_client

        sender = celery_sender(make_celery_client(settings), settings.task_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auto_migrate:
            upgrade_database(settings.database_url)
        dispatcher = None
        if settings.dispatcher_in_api and settings.outbox_poll_seconds > 0:
            dispatcher = OutboxDispatcher(database, sender, settings.outbox_poll_seconds,
                                          on_result=app.state.metrics.record_dispatch,
                                          sweep_policy=SweepPolicy.from_settings(settings),
                                          sweep_seconds=settings.sweep_seconds,
                                          on_sweep=app.state.metrics.record_sweep,
                                          housekeeping=Housekeeping(database, settings))
            dispatcher.start()
        app.state.dispatcher = dispatcher
        try:
            yield
        finally:
            app.state.submissions.stop()  # serves what is queued first
            app.state.reads.stop()
            if dispatcher is not None:
                dispatcher.stop()

    app = FastAPI(title="Lethe", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = database
    app.state.sender = sender
    app.state.metrics = ServiceMetrics(database, dispatches=settings.dispatcher_in_api,
                                       due_soon_days=settings.due_soon_days)
    app.state.dispatcher = None

    def submit_batch(submissions):
        with database.session() as session:
            return requests.submit_erasure_requests(session, submissions, response_days=settings.response_days)

    def read_batch(lookups):
        with database.session() as session:
            return requests.read_request_views(session, lookups)

    def wake_dispatcher(answers) -> None:
        created = any(isinstance(answer, tuple) and answer[1] for answer in answers)
        if created and settings.send_on_submit and app.state.dispatcher is not None:
            app.state.dispatcher.wake()

    # POST and GET-by-id are served in batches by one thread each (group commit; see service.batching)
    app.state.submissions = BatchRunner("submissions", submit_batch, after_batch=wake_dispatcher)
    app.state.reads = BatchRunner("reads", read_batch)
    install_error_handlers(app)
    for module in (erasure_requests, reports, models, audit, keys, tokens, health, ui):
        app.include_router(module.router)
    install_openapi(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: times everything
    return app
