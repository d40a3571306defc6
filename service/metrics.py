"""Prometheus metrics of the API. Each app has its own registry (no global state between apps).

- ``lethe_http_request_duration_seconds{method,route,status}``: HTTP latency per route template
- ``lethe_erasure_requests_submitted_total``: requests accepted (new, not replays)
- ``lethe_build_info{component,version,commit,python,torch}``: 1 (``service.buildinfo``)
- ``lethe_artifact_integrity_failures_total{check}``: see ``INTEGRITY_CHECKS``

Read from the database at scrape time (``DatabaseCollector``; nothing when the database is down):

- ``lethe_erasure_requests{status}``: requests by status
- ``lethe_queue_depth``: unsent outbox rows + queued requests; ``lethe_outbox_unsent``
- ``lethe_outbox_oldest_unsent_age_seconds``: age of the oldest outbox row not yet sent to the broker
  (0 when none): outbox lag, whichever process dispatches
- ``lethe_erasure_request_oldest_age_seconds{status}``: ``queued``: seconds since the longest-waiting
  queued request was queued; ``running``: seconds since the longest-running request started (0 when none)
- ``lethe_audit_events``: chain length
- ``lethe_requests_due_soon``: open requests (not finished) due within ``LETHE_DUE_SOON_DAYS`` days, overdue ones
  included (the alert ``LetheRequestNearDeadline``)
- ``lethe_last_published_figure{model,figure}``: numeric figures of each model's last published erasure
  (nested keys joined by dots; a list of named items such as the gates by its items' names:
  ``gates.forget_i2t_r1.value``, ``gates.forget_i2t_r1.threshold``)

Only the process that dispatches the outbox exports ``lethe_outbox_dispatch_total{result}``,
``lethe_outbox_last_dispatch_ok`` and ``lethe_sweep_actions_total{action}`` (``service.sweep``: ``requeued``, a
dead worker's running request queued again; ``failed``, one whose workers died too often; ``resent``, a queued
request no worker acknowledged, sent again): the API when ``LETHE_DISPATCHER_IN_API=1``, else the dispatcher
process.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from service.buildinfo import build_labels
from service.models import AuditChainHead, ErasureRequest, OutboxMessage, RequestStatus, as_utc, utcnow

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# what ``lethe_artifact_integrity_failures_total{check}`` counts: a version's signature does not verify, its
# files' hashes do not match the registered content hash, or it holds a link that leads out of its directory
INTEGRITY_CHECKS = ("signature", "content_hash", "link")
DISPATCH_RESULTS = ("sent", "skipped", "failed")
SWEEP_ACTIONS = ("requeued", "failed", "resent")
AGED_STATUSES = (RequestStatus.QUEUED, RequestStatus.RUNNING)
OPEN_STATUSES = (RequestStatus.RECEIVED.value, RequestStatus.QUEUED.value, RequestStatus.RUNNING.value)


def build_info_gauge(registry: CollectorRegistry, component: str, *, with_torch: bool = False) -> Gauge:
    """``lethe_build_info``, set to 1 with the labels of ``service.buildinfo.build_labels``."""
    labels = build_labels(component, with_torch=with_torch)
    gauge = Gauge("lethe_build_info", "Build of the running process (always 1): version, git commit, python, "
                  "torch", list(labels), registry=registry, multiprocess_mode="max")
    gauge.labels(**labels).set(1)
    return gauge


def integrity_failures_counter(registry: CollectorRegistry) -> Counter:
    """``lethe_artifact_integrity_failures_total{check}``: incremented each time a model version fails its
    integrity check before it is loaded or served: ``signature`` (``model.sig`` does not verify with the
    public key), ``content_hash`` (its files do not hash to the registered content hash), ``link`` (it holds a
    symbolic link leading out of its directory). Every check starts at 0, so ``increase()`` sees the first."""
    counter = Counter("lethe_artifact_integrity_failures", "Model versions that failed a signature, content "
                      "hash or link check before being loaded or served", ["check"], registry=registry)
    for check in INTEGRITY_CHECKS:
        counter.labels(check)
    return counter


class DatabaseCollector:
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(self, db, due_soon_days: int = 7):
        self.db, self.due_soon_days = db, due_soon_days

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "by_status": GaugeMetricFamily("lethe_erasure_requests", "Erasure requests by status", labels=["status"]),
            "depth": GaugeMetricFamily("lethe_queue_depth", "Unsent outbox rows plus queued requests"),
            "unsent": GaugeMetricFamily("lethe_outbox_unsent", "Outbox rows not yet sent to the broker"),
            "outbox_age": GaugeMetricFamily("lethe_outbox_oldest_unsent_age_seconds",
                                            "Age of the oldest outbox row not yet sent to the broker (0: none)"),
            "request_age": GaugeMetricFamily(
                "lethe_erasure_request_oldest_age_seconds",
                "Seconds the oldest request of a status has been in it (queued: since queued; running: since "
                "started; 0: none)", labels=["status"]),
            "events": GaugeMetricFamily("lethe_audit_events", "Events in the audit chain"),
            "due_soon": GaugeMetricFamily("lethe_requests_due_soon", "Open erasure requests due within "
                                          "LETHE_DUE_SOON_DAYS days (overdue included)"),
            "figures": GaugeMetricFamily("lethe_last_published_figure",
                                         "Numeric figures of the last published erasure per model",
                                         labels=["model", "figure"]),
        }

    def describe(self):
        return list(self._families().values())

    def collect(self):
        families = self._families()
        try:
            with self.db.session() as session:
                counts = dict(session.execute(
                    select(ErasureRequest.status, func.count()).group_by(ErasureRequest.status)).all())
                n_unsent, oldest_unsent = session.execute(
                    select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.sent_at.is_(None))
                ).one()
                oldest = {
                    RequestStatus.QUEUED: session.scalar(select(func.min(ErasureRequest.updated_at)).where(
                        ErasureRequest.status == RequestStatus.QUEUED.value)),
                    RequestStatus.RUNNING: session.scalar(select(func.min(ErasureRequest.started_at)).where(
                        ErasureRequest.status == RequestStatus.RUNNING.value)),
                }
                head = session.get(AuditChainHead, 1)
                latest = self._last_published(session)
                due_soon = session.scalar(select(func.count()).select_from(ErasureRequest).where(
                    ErasureRequest.status.in_(OPEN_STATUSES),
                    ErasureRequest.due_at < utcnow() + timedelta(days=self.due_soon_days)))
        except Exception:  # the database is down: /readyz says so; export nothing from it
            return
        now = utcnow()
        for status in RequestStatus:
            families["by_status"].add_metric([status.value], counts.get(status.value, 0))
        families["unsent"].add_metric([], n_unsent or 0)
        families["depth"].add_metric([], (n_unsent or 0) + counts.get(RequestStatus.QUEUED.value, 0))
        families["outbox_age"].add_metric([], _age_seconds(now, oldest_unsent))
        for status in AGED_STATUSES:
            families["request_age"].add_metric([status.value], _age_seconds(now, oldest[status]))
        families["events"].add_metric([], head.seq if head else 0)
        families["due_soon"].add_metric([], due_soon or 0)
        for model, result in latest:
            for name, value in _numeric_items(result or {}):
                families["figures"].add_metric([model, name], value)
        yield from families.values()

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


def _age_seconds(now, since) -> float:
    return max(0.0, (now - as_utc(since)).total_seconds()) if since is not None else 0.0


def _numeric_items(values: dict, prefix: str = ""):
    """(dotted name, value) of every finite number in ``values``, nested dicts and lists of named dicts
    (``[{"name": "forget_i2t_r1", "value": ...}]``) included; other lists are skipped."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_items(value, name + ".")
        elif isinstance(value, list):
            named = {item["name"]: item for item in value
                     if isinstance(item, dict) and isinstance(item.get("name"), str)}
            if len(named) == len(value):
                yield from _numeric_items(named, name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


class DispatchMetrics:
    """The outbox dispatcher's counters (in the API's registry, or the dispatcher process's own)."""

    def __init__(self, registry: CollectorRegistry):
        self.dispatched = Counter("lethe_outbox_dispatch", "Outbox messages by dispatch result", ["result"],
                                  registry=registry)
        for name in DISPATCH_RESULTS:
            self.dispatched.labels(name)
        self.dispatch_healthy = Gauge("lethe_outbox_last_dispatch_ok", "1 if the last dispatcher pass could "
                                      "reach the broker", registry=registry)
        self.swept = Counter("lethe_sweep_actions", "Requests the sweep queued again (requeued: the worker died), "
                             "failed (workers died too often) or sent again (resent: unacknowledged)", ["action"],
                             registry=registry)
        for name in SWEEP_ACTIONS:
            self.swept.labels(name)

    def record_sweep(self, result) -> None:
        for name in SWEEP_ACTIONS:
            if getattr(result, name):
                self.swept.labels(name).inc(getattr(result, name))

    def record_dispatch(self, result) -> None:
        for name in DISPATCH_RESULTS:
            if getattr(result, name):
                self.dispatched.labels(name).inc(getattr(result, name))
        self.dispatch_healthy.set(0 if result.failed else 1)


class ServiceMetrics:
    """The API's registry. ``dispatches``: this process sends the outbox (``LETHE_DISPATCHER_IN_API=1``), so it
    exports the dispatch metrics; otherwise the dispatcher process does and the API has none."""

    def __init__(self, db=None, *, dispatches: bool = True, due_soon_days: int = 7):
        self.registry = CollectorRegistry()
        self.dispatch = DispatchMetrics(self.registry) if dispatches else None
        self.integrity_failures = integrity_failures_counter(self.registry)
        build_info_gauge(self.registry, "api")
        self.http_latency = Histogram(
            "lethe_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.submitted = Counter("lethe_erasure_requests_submitted", "Erasure requests accepted (new, not "
                                 "replays)", registry=self.registry)
        if db is not None:
            self.registry.register(DatabaseCollector(db, due_soon_days))

    def record_dispatch(self, result) -> None:
        if self.dispatch is None:
            raise RuntimeError("this API does not dispatch the outbox (LETHE_DISPATCHER_IN_API=0)")
        self.dispatch.record_dispatch(result)

    def record_sweep(self, result) -> None:
        if self.dispatch is not None:
            self.dispatch.record_sweep(result)

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
