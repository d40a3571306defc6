"""Prometheus metrics of the workers, served by a small HTTP exporter in the worker process.

- ``lethe_worker_stage_duration_seconds{stage}``: seconds spent in each stage of a job (histogram)
- ``lethe_worker_job_duration_seconds{outcome}``: whole jobs (histogram)
- ``lethe_worker_jobs_total{outcome}``: published, verification_failed, failed, rejected, skipped, retried
- ``lethe_worker_signing_failures_total``: versions that could not be signed (the request fails)
- ``lethe_worker_jobs_in_progress``: jobs running in this worker
- ``lethe_worker_broker_queue_depth{queue}``: messages waiting in the Redis queue (read at scrape time)

The exporter listens on ``LETHE_WORKER_METRICS_PORT`` (default 9808, 0 disables); it starts when
the worker starts (``celeryd_init``), so the default ``--pool solo`` (one process) needs nothing
else. With ``--pool prefork`` set ``PROMETHEUS_MULTIPROC_DIR`` (an empty, writable directory) before
the worker starts: the children write their samples there and the exporter aggregates them.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger("lethe.worker")

STAGE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600, 7200)
OUTCOMES = ("published", "verification_failed", "failed", "rejected", "skipped", "retried")

STAGE_DURATION = Histogram("lethe_worker_stage_duration_seconds", "Seconds spent in each stage of an erasure job",
                           ["stage"], buckets=STAGE_BUCKETS)
JOB_DURATION = Histogram("lethe_worker_job_duration_seconds", "Seconds per erasure job by outcome", ["outcome"],
                         buckets=STAGE_BUCKETS)
JOBS = Counter("lethe_worker_jobs", "Erasure jobs by outcome", ["outcome"])
SIGNING_FAILURES = Counter("lethe_worker_signing_failures", "Model versions that could not be signed")
IN_PROGRESS = Gauge("lethe_worker_jobs_in_progress", "Erasure jobs running in this worker",
                    multiprocess_mode="livesum")


class BrokerQueueCollector:
    """``lethe_worker_broker_queue_depth``: LLEN of the task queue on a Redis broker, at scrape time."""

    def __init__(self, broker_url: str, queue: str):
        self.broker_url, self.queue = broker_url, queue

    def describe(self):
        return []

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
        family = GaugeMetricFamily("lethe_worker_broker_queue_depth", "Messages waiting in the broker queue",
                                   labels=["queue"])
        family.add_metric([self.queue], depth)
        yield family


_started: dict[str, object] = {}


def start_exporter(port: int, addr: str = "0.0.0.0", broker_url: str | None = None,
                   queue: str | None = None) -> int | None:
    """Start the HTTP exporter once per process; returns the port, or None when disabled or busy."""
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
    logger.info("worker metrics on http://%s:%s/metrics", addr, server.server_port)
    return server.server_port
