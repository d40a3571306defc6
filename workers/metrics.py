"""Prometheus metrics of the workers, served by a small HTTP exporter in the worker process.

- ``lethe_worker_stage_duration_seconds{stage}``: seconds spent in each stage of a job (histogram)
- ``lethe_worker_job_duration_seconds{outcome}``: whole jobs (histogram)
- ``lethe_worker_jobs_total{outcome}``: published, verification_failed, inconclusive, failed, rejected, skipped,
  retried
- ``lethe_worker_signing_failures_total``: versions that could not be signed (the request fails)
- ``lethe_worker_jobs_in_progress``: jobs running in this worker
- ``lethe_worker_broker_queue_depth{queue}``: messages waiting in the Redis queue (read at scrape time)
- ``lethe_worker_failures_total{reason}``: jobs that ended without a published version, by ``FAILURE_REASONS``
- ``lethe_worker_gate_failures_total{gate}``: failed verification gates (one job may fail several)
- ``lethe_worker_heartbeat_timestamp_seconds``: unix time, set every ``HEARTBEAT_SECONDS`` by a thread of the
  worker process while it lives (``workers.healthcheck`` and the alert rules read it)
- ``lethe_build_info{component="worker",...}`` (``service.buildinfo``, with the torch version)
- ``lethe_artifact_integrity_failures_total{check}``: versions that failed their signature, content hash or
  link check before being loaded for an erasure (``service.metrics.integrity_failures_counter``)

The exporter listens on ``LETHE_WORKER_METRICS_PORT`` (default 9808, 0 disables); it starts when
the worker starts (``celeryd_init``), so the default ``--pool solo`` (one process) needs nothing
else. With ``--pool prefork`` set ``PROMETHEUS_MULTIPROC_DIR`` (an empty, writable directory) before
the worker starts: the children write their samples there and the exporter aggregates them.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from service.metrics import build_info_gauge, integrity_failures_counter

logger = logging.getLogger("lethe.worker")

STAGE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600, 7200)
OUTCOMES = ("published", "verification_failed", "inconclusive", "failed", "rejected", "skipped", "retried")
# why a job ended without a published version (the closed set of ``lethe_worker_failures_total{reason}``):
FAILURE_REASONS = (
    "verification_failed",  # a gate failed (which: lethe_worker_gate_failures_total{gate})
    "inconclusive",  # every gate passed but nothing on this data tells an erased model from the parent
    "rejected",  # the request cannot run on the model's latest version (unknown client, erased already, ...)
    "engine_error",  # the engine refused the job (bad method parameters, gates or target: UnlearningError)
    "signing_error",  # the new version could not be signed
    "integrity_error",  # the base version failed its signature or hash check
    "retries_exhausted",  # transient errors (database, broker, lock) past LETHE_TASK_MAX_RETRIES
    "worker_lost",  # the worker running it stopped and the request was failed instead of resumed
    "internal_error",  # anything else (a bug, a full disk, ...)
)
HEARTBEAT_SECONDS = 15.0
HEARTBEAT_METRIC = "lethe_worker_heartbeat_timestamp_seconds"

STAGE_DURATION = Histogram("lethe_worker_stage_duration_seconds", "Seconds spent in each stage of an erasure job",
                           ["stage"], buckets=STAGE_BUCKETS)
JOB_DURATION = Histogram("lethe_worker_job_duration_seconds", "Seconds per erasure job by outcome", ["outcome"],
                         buckets=STAGE_BUCKETS)
JOBS = Counter("lethe_worker_jobs", "Erasure jobs by outcome", ["outcome"])
SIGNING_FAILURES = Counter("lethe_worker_signing_failures", "Model versions that could not be signed")
IN_PROGRESS = Gauge("lethe_worker_jobs_in_progress", "Erasure jobs running in this worker",
                    multiprocess_mode="livesum")
FAILURES = Counter("lethe_worker_failures", "Erasure jobs that ended without a published version, by reason",
                   ["reason"])
for _reason in FAILURE_REASONS:  # every series exists from the start, so increase() sees the first failure
    FAILURES.labels(_reason)
GATE_FAILURES = Counter("lethe_worker_gate_failures", "Failed verification gates by gate name", ["gate"])
HEARTBEAT = Gauge(HEARTBEAT_METRIC, "Unix time of the worker process's last heartbeat",
                  multiprocess_mode="max")
BUILD_INFO = build_info_gauge(REGISTRY, "worker", with_torch=True)
INTEGRITY_FAILURES = integrity_failures_counter(REGISTRY)


def record_failure(reason: str, failed_gates: tuple[str, ...] | list[str] = ()) -> None:
    """Count a job that ended without a version; ``reason`` is one of ``FAILURE_REASONS``."""
    if reason not in FAILURE_REASONS:
        raise ValueError(f"unknown failure reason {reason!r}; use one of {FAILURE_REASONS}")
    FAILURES.labels(reason).inc()
    for gate in failed_gates:
        GATE_FAILURES.labels(gate).inc()


class Heartbeat:
    """A daemon thread that sets ``lethe_worker_heartbeat_timestamp_seconds`` to the current time every
    ``interval`` seconds (and once at start) until ``stop``."""

    def __init__(self, interval: float = HEARTBEAT_SECONDS, gauge: Gauge = HEARTBEAT):
        if interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        self.interval, self.gauge = interval, gauge
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lethe-worker-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.gauge.set(time.time())
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.gauge.set(time.time())


class BrokerQueueCollector:
    """``lethe_worker_broker_queue_depth``: LLEN of the task queue on a Redis broker, at scrape time."""

    def __init__(self, broker_url: str, queue: str):
        self.broker_url, self.queue = broker_url, queue

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("lethe_worker_broker_queue_depth", "Messages waiting in the broker queue",
                                 labels=["queue"])

    def describe(self):
        return [self._family()]

    def collect(self):
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return
        try:
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                depth = client.llen(self.queue)
            finally:
                client.close()
        except Exception:  # broker down: export nothing rather than fail the scrape
            return
        family = self._family()
        family.add_metric([self.queue], depth)
        yield family


_started: dict[str, object] = {}


def start_exporter(port: int, addr: str = "127.0.0.1", broker_url: str | None = None,
                   queue: str | None = None, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> int | None:
    """Start the HTTP exporter and the heartbeat thread once per process; returns the port, or None when
    disabled or busy."""
    if port <= 0 or "port" in _started:
        return _started.get("port")  # type: ignore[return-value]
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    if broker_url and queue:
        registry.register(BrokerQueueCollector(broker_url, queue))
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        logger.warning("worker metrics exporter not started on %s:%s: %s", addr, port, exc)
        return None
    _started["port"] = server.server_port
    _started["server"] = server
    _started["heartbeat"] = Heartbeat(heartbeat_seconds).start()
    logger.info("worker metrics on http://%s:%s/metrics", addr, server.server_port)
    return server.server_port
