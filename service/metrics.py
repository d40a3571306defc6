"""Prometheus metrics of the API. Each app has its own registry (no global state between apps).

- ``lethe_http_request_duration_seconds{method,route,status}``: HTTP latency per route template
- ``lethe_erasure_requests{status}``: requests by status (counted in the database at scrape time)
- ``lethe_queue_depth``: unsent outbox rows + queued requests
- ``lethe_outbox_unsent``; ``lethe_outbox_dispatch_total{result}``: sent, skipped, failed
- ``lethe_erasure_requests_submitted_total``; ``lethe_audit_events``: chain length
- ``lethe_last_published_figure{model,figure}``: numeric figures of each model's last published erasure
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from service.models import AuditChainHead, ErasureRequest, OutboxMessage, RequestStatus

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _DatabaseCollector:
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(self, db):
        self.db = db

    def describe(self):
        return []

    def collect(self):
        by_status = GaugeMetricFamily("lethe_erasure_requests", "Erasure requests by status",
                                      labels=["status"])
        depth = GaugeMetricFamily("lethe_queue_depth", "Unsent outbox rows plus queued requests")
        unsent = GaugeMetricFamily("lethe_outbox_unsent", "Outbox rows not yet sent to the broker")
        events = GaugeMetricFamily("lethe_audit_events", "Events in the audit chain")
        figures = GaugeMetricFamily("lethe_last_published_figure",
                                    "Numeric figures of the last published erasure per model",
                                    labels=["model", "figure"])
        try:
            with self.db.session() as session:
                counts = dict(session.execute(
                    select(ErasureRequest.status, func.count()).group_by(ErasureRequest.status)).all())
                n_unsent = session.scalar(
                    select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))
                head = session.get(AuditChainHead, 1)
                latest = self._last_published(session)
        except Exception:  # the database is down: /readyz says so; export nothing from it
            return
        for status in RequestStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        unsent.add_metric([], n_unsent or 0)
        depth.add_metric([], (n_unsent or 0) + counts.get(RequestStatus.QUEUED.value, 0))
        events.add_metric([], head.seq if head else 0)
        for model, result in latest:
            for name, value in _numeric_items(result or {}):
                figures.add_metric([model, name], value)
        yield from (by_status, depth, unsent, events, figures)

    @staticmethod
    def _last_published(session):
        newest = (
            select(ErasureRequest.model_name, func.max(ErasureRequest.finished_at).label("finished"))
            .where(ErasureRequest.status == RequestStatus.PUBLISHED.value)
            .group_by(ErasureRequest.model_name)
            .subquery()
        )
        return session.execute(
            select(ErasureRequest.model_name, ErasureRequest.result).join(
                newest,
                (ErasureRequest.model_name == newest.c.model_name)
                & (ErasureRequest.finished_at == newest.c.finished),
            )
        ).all()


def _numeric_items(values: dict, prefix: str = ""):
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_items(value, name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


class DispatchMetrics:
    """The outbox dispatcher's counters (in the API's registry, or the dispatcher process's own)."""

    def __init__(self, registry: CollectorRegistry):
        self.dispatched = Counter("lethe_outbox_dispatch", "Outbox messages by dispatch result", ["result"],
                                  registry=registry)
        self.dispatch_healthy = Gauge("lethe_outbox_last_dispatch_ok", "1 if the last dispatcher pass could "
                                      "reach the broker", registry=registry)

    def record_dispatch(self, result) -> None:
        for name in ("sent", "skipped", "failed"):
            if getattr(result, name):
                self.dispatched.labels(name).inc(getattr(result, name))
        self.dispatch_healthy.set(0 if result.failed else 1)


class ServiceMetrics(DispatchMetrics):
    def __init__(self, db=None):
        self.registry = CollectorRegistry()
        super().__init__(self.registry)
        self.http_latency = Histogram(
            "lethe_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.submitted = Counter("lethe_erasure_requests_submitted", "Erasure requests accepted (new, not "
                                 "replays)", registry=self.registry)
        if db is not None:
            self.registry.register(_DatabaseCollector(db))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request by its route template (not the raw path)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_latency.labels(scope["method"], template, str(status_holder["status"])).observe(
                time.perf_counter() - started
            )


class BodySizeLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes`` (by Content-Length, or counted while streaming)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        if declared is not None or scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self.app(scope, receive, send)  # the server stops reading at Content-Length
            return
        # No Content-Length (chunked): read the body up to the limit, then replay it.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(send)
                return
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _reject(self, send):
        from service.errors import error_response

        response = error_response(
            413, "payload_too_large",
            f"The request body is larger than {self.max_bytes} bytes; split the pair ids over several "
            "requests.",
            {"max_bytes": self.max_bytes},
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}


def _replay(messages, then_receive):
    pending = list(messages)

    async def receive():
        return pending.pop(0) if pending else await then_receive()

    return receive
